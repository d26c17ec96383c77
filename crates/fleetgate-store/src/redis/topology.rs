//! What a store URL names, and how to reach it: one server (`redis://`, `rediss://`), a
//! Sentinel-managed primary (`redis-sentinel://h1:26379,h2:26379[/db]?master=NAME`) or a
//! Cluster (`redis-cluster://h1:7000,h2:7001`). Credentials and TLS files from the options
//! override or complete the URL. Errors never include a password.

use super::url::redact;
use super::RedisOptions;
use crate::error::StoreError;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

/// The parsed topology.
pub(super) enum Topology {
    Standalone(redis::Client),
    Sentinel(SentinelSpec),
    Cluster(ClusterSpec),
}

pub(super) struct SentinelSpec {
    pub sentinels: Vec<ConnectionAddr>,
    pub master: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsCertificates>,
}

pub(super) struct ClusterSpec {
    pub nodes: Vec<ConnectionInfo>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsCertificates>,
}

fn config_error(url: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Config(format!("{}: {why}", redact(url)))
}

/// Reads the TLS files named in the options (PEM), if any.
pub(super) fn tls_certificates(options: &RedisOptions) -> Result<Option<TlsCertificates>, StoreError> {
    let Some(files) = &options.tls else { return Ok(None) };
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| StoreError::Config(format!("store TLS {what} {}: {e}", path.display())))
    };
    let root_cert = files.ca_file.as_deref().map(|p| read("CA file", p)).transpose()?;
    let client_tls = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("certificate file", cert)?,
            client_key: read("key file", key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(StoreError::Config(
                "store TLS: cert_file and key_file must be given together".into(),
            ))
        }
    };
    Ok(Some(TlsCertificates { client_tls, root_cert }))
}

/// A direct client to one cluster node (`host:port`), with the cluster's credentials and TLS.
pub(super) fn node_client(spec: &ClusterSpec, addr: &str) -> Result<redis::Client, StoreError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| StoreError::Protocol(format!("bad node address {addr}")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| StoreError::Protocol(format!("bad node address {addr}")))?;
    let info = self::addr(host.to_string(), port, spec.tls.is_some())
        .into_connection_info()
        .map_err(|e| StoreError::Config(e.to_string()))?;
    let mut redis_info = info.redis_settings().clone();
    if let Some(u) = &spec.username {
        redis_info = redis_info.set_username(u);
    }
    if let Some(p) = &spec.password {
        redis_info = redis_info.set_password(p);
    }
    let info = info.set_redis_settings(redis_info);
    match &spec.tls {
        Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
        None => redis::Client::open(info),
    }
    .map_err(|e| StoreError::Config(super::describe(&e)))
}

fn with_credentials(info: ConnectionInfo, options: &RedisOptions) -> ConnectionInfo {
    let mut redis = info.redis_settings().clone();
    if let Some(u) = &options.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &options.password {
        redis = redis.set_password(p);
    }
    info.set_redis_settings(redis)
}

/// Splits `user:pass@h1:p1,h2:p2/db?query` into its parts.
struct MultiHost<'a> {
    userinfo: Option<&'a str>,
    hosts: Vec<(String, u16)>,
    db: i64,
    query: Vec<(&'a str, &'a str)>,
}

fn parse_multi_host<'a>(url: &'a str, rest: &'a str, default_port: u16) -> Result<MultiHost<'a>, StoreError> {
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let (userinfo, hosts_text) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut hosts = Vec::new();
    for part in hosts_text.split(',').filter(|p| !p.is_empty()) {
        let (host, port) = if let Some(v6) = part.strip_prefix('[') {
            let (h, tail) = v6
                .split_once(']')
                .ok_or_else(|| config_error(url, format!("bad IPv6 host {part:?}")))?;
            (h.to_string(), tail.strip_prefix(':'))
        } else {
            match part.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (part.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| config_error(url, format!("bad port in {part:?}")))?,
            None => default_port,
        };
        if host.is_empty() {
            return Err(config_error(url, format!("empty host in {part:?}")));
        }
        hosts.push((host, port));
    }
    if hosts.is_empty() {
        return Err(config_error(url, "no host given; accepted: host:port[,host:port...]"));
    }
    let db = if path.is_empty() {
        0
    } else {
        path.parse()
            .map_err(|_| config_error(url, format!("database {path:?} is not a number")))?
    };
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    Ok(MultiHost {
        userinfo,
        hosts,
        db,
        query,
    })
}

fn split_userinfo(userinfo: Option<&str>) -> (Option<String>, Option<String>) {
    match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => ((!user.is_empty()).then(|| user.to_string()), Some(pass.to_string())),
            None => ((!u.is_empty()).then(|| u.to_string()), None),
        },
    }
}

fn addr(host: String, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    }
}

/// Parses `url` into a topology, applying the options' credentials and TLS files.
pub(super) fn parse(url: &str, options: &RedisOptions) -> Result<Topology, StoreError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| config_error(url, "not a URL"))?;
    if scheme == "rediss" || options.tls.is_some() {
        // rustls needs one process-wide crypto provider; a second install is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let tls = tls_certificates(options)?;
    match scheme {
        "redis" | "rediss" => {
            let info = url
                .into_connection_info()
                .map_err(|e| config_error(url, e.to_string().replace(url, "<url>")))?;
            let info = with_credentials(info, options);
            let client = match (&tls, scheme) {
                (Some(certs), "rediss") => redis::Client::build_with_tls(info, certs.clone()),
                (Some(_), _) => {
                    return Err(config_error(
                        url,
                        "store.tls is set but the URL is redis://; use rediss:// for TLS",
                    ))
                }
                (None, _) => redis::Client::open(info),
            }
            .map_err(|e| config_error(url, e))?;
            Ok(Topology::Standalone(client))
        }
        "redis-sentinel" => {
            let m = parse_multi_host(url, rest, 26379)?;
            let master = m
                .query
                .iter()
                .find(|(k, _)| *k == "master")
                .map(|(_, v)| v.to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| config_error(url, "missing ?master=NAME (the name the sentinels monitor)"))?;
            let (user, pass) = split_userinfo(m.userinfo);
            let use_tls = tls.is_some();
            Ok(Topology::Sentinel(SentinelSpec {
                sentinels: m.hosts.into_iter().map(|(h, p)| addr(h, p, use_tls)).collect(),
                master,
                db: m.db,
                username: options.username.clone().or(user),
                password: options.password.clone().or(pass),
                tls,
            }))
        }
        "redis-cluster" => {
            let m = parse_multi_host(url, rest, 6379)?;
            if m.db != 0 {
                return Err(config_error(url, "Redis Cluster has only database 0"));
            }
            let (user, pass) = split_userinfo(m.userinfo);
            let use_tls = tls.is_some();
            let nodes = m
                .hosts
                .into_iter()
                .map(|(h, p)| addr(h, p, use_tls).into_connection_info())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| config_error(url, e))?;
            Ok(Topology::Cluster(ClusterSpec {
                nodes,
                username: options.username.clone().or(user),
                password: options.password.clone().or(pass),
                tls,
            }))
        }
        other => Err(config_error(
            url,
            format!("unknown scheme {other}://; accepted: redis://, rediss://, redis-sentinel://, redis-cluster://"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentinel_and_cluster_urls() {
        let o = RedisOptions::default();
        match parse("redis-sentinel://app:pw@h1:26379,[::1]:26380,h3/2?master=mymaster", &o).unwrap() {
            Topology::Sentinel(s) => {
                assert_eq!(s.sentinels.len(), 3);
                assert_eq!(s.master, "mymaster");
                assert_eq!(s.db, 2);
                assert_eq!(s.username.as_deref(), Some("app"));
                assert_eq!(s.password.as_deref(), Some("pw"));
            }
            _ => panic!("not sentinel"),
        }
        match parse("redis-cluster://h1:7000,h2:7001", &o).unwrap() {
            Topology::Cluster(c) => assert_eq!(c.nodes.len(), 2),
            _ => panic!("not cluster"),
        }
    }

    #[test]
    fn refuses_bad_urls_without_leaking_passwords() {
        let o = RedisOptions::default();
        for (url, needle) in [
            ("redis-sentinel://u:secret-pw@h1:26379", "master=NAME"),
            ("redis-cluster://u:secret-pw@h1:x", "bad port"),
            ("redis-cluster://h1:7000/3", "database 0"),
            ("redis-sentinel://u:secret-pw@/?master=m", "no host"),
            ("redis-foo://u:secret-pw@h", "unknown scheme"),
        ] {
            let err = parse(url, &o).err().expect(url).to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("secret-pw"), "{url}: {err}");
        }
    }
}
