//! TLS end to end with the real binary over real sockets: termination on the `tls` listener
//! (curl with `--cacert` as the client, HTTP/1.1 and HTTP/2 by ALPN, SNI choosing between two
//! certificates with `--resolve`), limits over https, certificates reloaded when their files
//! change, a mismatched pair refused by `check` and at start, failed handshakes counted while
//! other connections serve, and `https://` upstream targets (a tokio-rustls server in this
//! file: CA file, ALPN h2, `protocol: http1`, `server_name`, a client certificate). Every
//! certificate is made here with rcgen. Every wait is bounded; no assertion is about time.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BASE: &str =
    "listen: 127.0.0.1:{PORT}\nadmin:\n  listen: 127.0.0.1:{ADMIN}\nlog:\n  level: warn\n  access_log: false\n";

/// A test CA and the files it signs, in a directory of their own.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("fleetgate-tls-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("fleetgate test CA {tag}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki { dir, ca };
        std::fs::write(pki.ca_file(), pki.ca.pem()).unwrap();
        pki
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names` signed by the CA, written as `stem.pem` and `stem.key`.
    fn leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        self.write_leaf(&cert, &key, names);
        (cert, key)
    }

    fn write_leaf(&self, cert: &Path, key: &Path, names: &[&str]) {
        let pair = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let signed = params.signed_by(&pair, &self.ca).unwrap();
        // Key first: a reload that looks in between sees a mismatch, refuses it, and takes the
        // pair at the next change.
        std::fs::write(key, pair.serialize_pem()).unwrap();
        std::fs::write(cert, signed.pem()).unwrap();
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a client tool; a missing one fails the test with the install command.
fn tool(bin: &str, package: &str, args: &[&str]) -> std::process::Output {
    match Command::new(bin).args(args).output() {
        Ok(out) => out,
        Err(e) => panic!("{bin} is needed ({e}): apt-get install -y {package}"),
    }
}

/// curl over https to `name:port` resolved to 127.0.0.1 (so SNI is `name`), trusting `ca`:
/// (exit code, `HTTP-VERSION STATUS`, body).
fn curl_https(ca: &Path, name: &str, port: u16, path: &str, extra: &[&str]) -> (i32, String, String) {
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}{path}");
    let ca = ca.display().to_string();
    let mut args = vec![
        "-s",
        "--max-time",
        "10",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_version} %{http_code}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = tool("curl", "curl", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    (out.status.code().unwrap_or(-1), tail.to_string(), body.to_string())
}

fn metrics(gw: &Gateway) -> String {
    http_get(gw.admin_addr(), "/metrics", &[]).expect("admin answers").body
}

fn tls_section(port: u16, pairs: &[(&Path, &Path)], extra: &str) -> String {
    let mut s = format!("tls:\n  listen: 127.0.0.1:{port}\n{extra}  certificates:\n");
    for (c, k) in pairs {
        s.push_str(&format!(
            "    - {{ cert_file: {}, key_file: {} }}\n",
            c.display(),
            k.display()
        ));
    }
    s
}

#[test]
fn https_serves_http1_and_h2_by_alpn_and_sni_chooses_the_certificate() {
    let pki = Pki::new("sni");
    let (a_cert, a_key) = pki.leaf("a", &["a.test"]);
    let (b_cert, b_key) = pki.leaf("b", &["*.b.test"]);
    let up = Upstream::start("u");
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        "{BASE}{}upstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n",
        tls_section(tls_port, &[(&a_cert, &a_key), (&b_cert, &b_key)], ""),
        up.url()
    ));
    let ca = pki.ca_file();
    let (code, tail, body) = curl_https(&ca, "a.test", tls_port, "/headers", &["--http1.1"]);
    assert_eq!((code, tail.as_str()), (0, "1.1 200"), "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("the upstream's JSON");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["host"], format!("a.test:{tls_port}").as_str());
    let (code, tail, body) = curl_https(&ca, "a.test", tls_port, "/headers", &["--http2"]);
    assert_eq!((code, tail.as_str()), (0, "2 200"), "HTTP/2 by ALPN: {body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("the upstream's JSON");
    assert_eq!(seen["x-forwarded-proto"], "https");
    // The wildcard certificate is chosen for a name under b.test: curl verifies it.
    let (code, tail, _) = curl_https(&ca, "x.b.test", tls_port, "/", &["--http2"]);
    assert_eq!((code, tail.as_str()), (0, "2 200"));
    // A name no certificate covers gets the default (a.test): curl refuses it (60: the peer's
    // certificate does not match the name), which proves the default was served.
    let (code, _, _) = curl_https(&ca, "other.test", tls_port, "/", &[]);
    assert_eq!(code, 60, "the default certificate is not valid for other.test");
    // The plain listener is unchanged.
    let plain = gw.get("/headers", &[]);
    assert_eq!(plain.status, 200);
    assert_eq!(plain.json()["x-forwarded-proto"], "http");
}

#[test]
fn a_rate_limit_holds_over_https_as_over_http() {
    let pki = Pki::new("limit");
    let (cert, key) = pki.leaf("site", &["site.test"]);
    let up = Upstream::start("u");
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        "{BASE}{}upstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n    rate_limits:\n      - name: per-ip\n        key: ip\n        rate: 3/1m\n",
        tls_section(tls_port, &[(&cert, &key)], ""),
        up.url()
    ));
    let mut statuses = Vec::new();
    for proto in ["--http1.1", "--http2", "--http1.1", "--http2", "--http1.1"] {
        let (code, tail, _) = curl_https(&pki.ca_file(), "site.test", tls_port, "/", &[proto]);
        assert_eq!(code, 0);
        statuses.push(tail.rsplit(' ').next().unwrap().to_string());
    }
    assert_eq!(statuses, ["200", "200", "200", "429", "429"]);
    // The same budget, whichever listener: the plain one is refused too.
    assert_eq!(gw.get("/", &[]).status, 429);
}

#[test]
fn a_certificate_and_key_that_do_not_match_are_refused_by_check_and_at_start() {
    let pki = Pki::new("mismatch");
    let (cert, _) = pki.leaf("one", &["one.test"]);
    let (_, other_key) = pki.leaf("two", &["two.test"]);
    let config = pki.dir.join("fleetgate.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n{}",
            tls_section(0, &[(&cert, &other_key)], "")
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_fleetgate");
    let out = Command::new(bin)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tls.certificates[0]"), "{err}");
    assert!(err.contains("do not match"), "{err}");
    assert!(
        err.contains(&cert.display().to_string()),
        "names the certificate: {err}"
    );
    assert!(err.contains(&other_key.display().to_string()), "names the key: {err}");
    let start = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!start.status.success(), "the gateway does not start");
    assert!(String::from_utf8_lossy(&start.stderr).contains("do not match"));
    // A key file that is no key is refused when the file is read, with its line.
    std::fs::write(&other_key, "not a key\n").unwrap();
    let out = Command::new(bin)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("key_file") && err.contains("is not PEM"), "{err}");
}

/// An HTTP/1.1 keep-alive connection over TLS to the gateway, trusting `ca`, for `name`.
async fn tls_client(
    addr: std::net::SocketAddr,
    ca: &Path,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

async fn get_on(send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, host: &str) -> u16 {
    let req = Request::get("/")
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.expect("the request is answered");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

#[test]
fn certificates_are_reloaded_when_their_files_change_and_a_bad_pair_keeps_the_old_one() {
    let old_ca = Pki::new("reload-old");
    let new_ca = Pki::new("reload-new");
    let (cert, key) = old_ca.leaf("site", &["site.test"]);
    let up = Upstream::start("u");
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        "{BASE}{}upstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n",
        tls_section(tls_port, &[(&cert, &key)], "  reload_interval: 100ms\n"),
        up.url()
    ));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tls_port));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A connection opened before the reload.
    let mut kept = rt.block_on(async {
        let tls = tls_client(addr, &old_ca.ca_file(), "site.test", &[b"http/1.1"])
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        assert_eq!(get_on(&mut send, "site.test").await, 200);
        send
    });
    assert_eq!(curl_https(&old_ca.ca_file(), "site.test", tls_port, "/", &[]).0, 0);
    // New files in place: a certificate from another CA.
    new_ca.write_leaf(&cert, &key, &["site.test"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while curl_https(&new_ca.ca_file(), "site.test", tls_port, "/", &[]).0 != 0 {
        assert!(Instant::now() < deadline, "the new certificate was never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(
        curl_https(&old_ca.ca_file(), "site.test", tls_port, "/", &[]).0,
        0,
        "the old certificate is no longer served to new connections"
    );
    assert!(metric_sum(&metrics(&gw), "fleetgate_tls_certificate_reloads_total{result=\"ok\"}") >= 1.0);
    // The connection opened before goes on.
    assert_eq!(rt.block_on(get_on(&mut kept, "site.test")), 200);

    // A key that is not the certificate's: refused, counted, and the previous pair serves on.
    let (_, stray_key) = new_ca.leaf("stray", &["stray.test"]);
    std::fs::copy(&stray_key, &key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric_sum(
        &metrics(&gw),
        "fleetgate_tls_certificate_reloads_total{result=\"error\"}",
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "the bad pair was never looked at");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(curl_https(&new_ca.ca_file(), "site.test", tls_port, "/", &[]).0, 0);
    assert_eq!(rt.block_on(get_on(&mut kept, "site.test")), 200);
}

#[test]
fn failed_handshakes_are_counted_by_reason_and_other_connections_serve_on() {
    let pki = Pki::new("garbage");
    let (cert, key) = pki.leaf("site", &["site.test"]);
    let up = Upstream::start("u");
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        "{BASE}{}upstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n",
        tls_section(tls_port, &[(&cert, &key)], ""),
        up.url()
    ));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tls_port));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut open = rt.block_on(async {
        let tls = tls_client(addr, &pki.ca_file(), "site.test", &[b"http/1.1"])
            .await
            .unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        send
    });
    // Plain HTTP on the TLS port, five times: not TLS.
    for _ in 0..5 {
        let reply = raw_request(addr, b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n");
        assert!(reply.is_err(), "no HTTP answer on the TLS port: {reply:?}");
    }
    // A client offering only a protocol the gateway does not speak.
    let refused = rt.block_on(tls_client(addr, &pki.ca_file(), "site.test", &[b"h3"]));
    assert!(refused.is_err(), "ALPN h3 only is refused");
    // A client that does not trust the certificate ends the handshake with an alert.
    let (code, _, _) = curl_https(&Pki::new("stranger").ca_file(), "site.test", tls_port, "/", &[]);
    assert_eq!(code, 60);
    let m = metrics(&gw);
    let count = |reason: &str| {
        metric_sum(
            &m,
            &format!("fleetgate_tls_handshake_errors_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(count("protocol"), 5.0, "{m}");
    assert_eq!(count("no_alpn"), 1.0, "{m}");
    assert_eq!(count("alert"), 1.0, "{m}");
    // The connection opened before, and new ones, serve on.
    assert_eq!(rt.block_on(get_on(&mut open, "site.test")), 200);
    assert_eq!(
        curl_https(&pki.ca_file(), "site.test", tls_port, "/", &["--http2"]).1,
        "2 200"
    );
}

/// A TLS upstream: HTTP/1.1 or HTTP/2 by ALPN (as `alpn` offers), optionally asking for a
/// client certificate signed by `client_ca`. It answers JSON: the HTTP version, the Host or
/// :authority, and whether the client presented a certificate.
struct TlsUpstream {
    port: u16,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TlsUpstream {
    fn start(cert: &Path, key: &Path, alpn: &[&[u8]], client_ca: Option<&Path>) -> TlsUpstream {
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else { continue };
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            let client_cert = tls.get_ref().1.peer_certificates().is_some();
                            let svc = service_fn(move |req: Request<Incoming>| async move {
                                let host = req
                                    .headers()
                                    .get("host")
                                    .and_then(|h| h.to_str().ok())
                                    .map(str::to_string)
                                    .or_else(|| req.uri().authority().map(|a| a.to_string()));
                                let body = serde_json::json!({
                                    "version": format!("{:?}", req.version()),
                                    "host": host,
                                    "client_cert": client_cert,
                                    "x-forwarded-proto": req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()),
                                });
                                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        });
                    }
                };
                tokio::select! { _ = serve => {}, _ = rx => {} }
            });
        });
        TlsUpstream { port, _stop: tx }
    }
}

#[test]
fn https_upstreams_are_verified_and_spoken_to_over_h2_or_http1() {
    let pki = Pki::new("upstream");
    let (cert, key) = pki.leaf("backend", &["localhost", "backend.internal"]);
    let (client_cert, client_key) = pki.leaf("gateway-client", &["gateway.client"]);
    let both = TlsUpstream::start(&cert, &key, &[b"h2", b"http/1.1"], None);
    let mtls = TlsUpstream::start(&cert, &key, &[b"http/1.1"], Some(&pki.ca_file()));
    let ca = pki.ca_file().display().to_string();
    let (cc, ck) = (client_cert.display().to_string(), client_key.display().to_string());
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:
  auto:
    targets: [https://localhost:{p}]
    tls: {{ ca_file: {ca} }}
  h1:
    targets: [https://localhost:{p}]
    protocol: http1
    tls: {{ ca_file: {ca} }}
  named:
    targets: [https://127.0.0.1:{p}]
    tls: {{ ca_file: {ca}, server_name: backend.internal }}
  wrongname:
    targets: [https://127.0.0.1:{p}]
    tls: {{ ca_file: {ca}, server_name: elsewhere.internal }}
  untrusted:
    targets: [https://localhost:{p}]
  skipverify:
    targets: [https://localhost:{p}]
    tls: {{ insecure_skip_verify: true }}
  mtls:
    targets: [https://localhost:{m}]
    tls: {{ ca_file: {ca}, cert_file: {cc}, key_file: {ck} }}
  nocert:
    targets: [https://localhost:{m}]
    tls: {{ ca_file: {ca} }}
routes:
  - {{ name: auto, match: {{ path_prefix: /auto }}, upstream: auto }}
  - {{ name: h1, match: {{ path_prefix: /h1 }}, upstream: h1 }}
  - {{ name: named, match: {{ path_prefix: /named }}, upstream: named }}
  - {{ name: wrongname, match: {{ path_prefix: /wrongname }}, upstream: wrongname }}
  - {{ name: untrusted, match: {{ path_prefix: /untrusted }}, upstream: untrusted }}
  - {{ name: skipverify, match: {{ path_prefix: /skipverify }}, upstream: skipverify }}
  - {{ name: mtls, match: {{ path_prefix: /mtls }}, upstream: mtls }}
  - {{ name: nocert, match: {{ path_prefix: /nocert }}, upstream: nocert }}
",
        p = both.port,
        m = mtls.port,
    ));
    for _ in 0..3 {
        let r = gw.get("/auto", &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["version"], "HTTP/2.0", "ALPN chose h2");
        assert_eq!(r.json()["host"], "127.0.0.1", "the client's Host as :authority");
        assert_eq!(r.json()["x-forwarded-proto"], "http");
    }
    let r = gw.get("/h1", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], "HTTP/1.1", "protocol: http1 offers http/1.1 only");
    let r = gw.get("/named", &[]);
    assert_eq!(r.status, 200, "server_name is what is verified: {}", r.body);
    assert_eq!(
        gw.get("/wrongname", &[]).status,
        502,
        "a name the certificate does not have"
    );
    assert_eq!(
        gw.get("/untrusted", &[]).status,
        502,
        "the system roots do not know the test CA"
    );
    assert_eq!(
        gw.get("/skipverify", &[]).status,
        200,
        "insecure_skip_verify takes any certificate"
    );
    let r = gw.get("/mtls", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["client_cert"], true);
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(
        gw.get("/nocert", &[]).status,
        502,
        "the upstream asks for a client certificate"
    );
}

#[test]
fn upstream_tls_files_are_checked_by_check() {
    let pki = Pki::new("upcheck");
    let (cert, _) = pki.leaf("one", &["one.test"]);
    let (_, other_key) = pki.leaf("two", &["two.test"]);
    let config = pki.dir.join("fleetgate.yaml");
    let bin = env!("CARGO_BIN_EXE_fleetgate");
    let check = |yaml: String| {
        std::fs::write(&config, yaml).unwrap();
        let out = Command::new(bin)
            .arg("check")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = check(format!(
        "upstreams:\n  u:\n    targets: [https://localhost:1]\n    tls: {{ cert_file: {}, key_file: {} }}\n",
        cert.display(),
        other_key.display()
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("upstreams.u.tls") && err.contains("do not match"), "{err}");
    let (code, err) = check(format!(
        "upstreams:\n  u:\n    targets: [http://localhost:1]\n    tls: {{ ca_file: {} }}\n",
        pki.ca_file().display()
    ));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("none of its targets is https://"), "{err}");
    let (code, err) = check("upstreams:\n  u:\n    targets: [https://localhost:1]\n    protocol: h3\n".into());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown protocol"), "{err}");
}

#[test]
fn gateway_session_cookies_are_secure_over_https_only() {
    let pki = Pki::new("session");
    let (cert, key) = pki.leaf("site", &["site.test"]);
    // The upstream stand-in answers 200 on any path: as the auth service it allows everything.
    let up = Upstream::start("u");
    let tls_port = free_port();
    let gw = Gateway::start(&format!(
        "{BASE}{}upstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n    forward_auth:\n      url: {}/check\n      session: {{ cookie: fg_session }}\n",
        tls_section(tls_port, &[(&cert, &key)], ""),
        up.url(),
        up.url()
    ));
    let (code, tail, out) = curl_https(&pki.ca_file(), "site.test", tls_port, "/", &["--http1.1", "-D", "-"]);
    assert_eq!((code, tail.as_str()), (0, "1.1 200"), "{out}");
    let set_cookie = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: fg_session="))
        .unwrap_or_else(|| panic!("a session cookie: {out}"));
    assert!(set_cookie.trim_end().ends_with("; Secure"), "{set_cookie}");
    let plain = gw.get("/", &[]);
    let set_cookie = plain
        .header("set-cookie")
        .expect("a session cookie over plain HTTP too");
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
}
