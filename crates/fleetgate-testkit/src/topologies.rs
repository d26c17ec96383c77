//! Multi-process Redis deployments for tests: a Cluster of primaries, a primary with a replica
//! and three sentinels, and a TLS server with a CA and certificates made by the test.

use crate::{free_port, require_binary, RedisServer};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The value after `name` in a flat RESP array of bulk strings (a Sentinel field list).
fn field(reply: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = reply.split("\r\n").collect();
    let i = lines.iter().position(|l| *l == name)?;
    lines.get(i + 2).map(|v| v.to_string())
}

/// Polls `ok` every 50 ms until it holds (true) or `limit` passes (false).
fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn wait_until(what: &str, limit: Duration, ok: impl FnMut() -> bool) {
    assert!(wait_for(limit, ok), "{what} within {limit:?}");
}

/// A Redis Cluster of `n` primaries (no replicas), slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let cli = require_binary("redis-cli");
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                let port = free_port();
                let conf = format!("nodes-{port}.conf");
                RedisServer::start_on(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let mut cmd = Command::new(cli);
        cmd.arg("--cluster").arg("create");
        for node in &nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port()));
        }
        let out = cmd
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for node in &nodes {
            wait_until("cluster state ok", Duration::from_secs(20), || {
                node.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
        }
        RedisCluster { nodes }
    }

    /// `redis-cluster://127.0.0.1:p1,127.0.0.1:p2,...`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        format!("redis-cluster://{}", hosts.join(","))
    }
}

/// A sentinel process.
struct SentinelProcess {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl SentinelProcess {
    /// Starts a sentinel monitoring the primary on a free port, and waits until it answers.
    /// A port found free can be taken before the sentinel binds it (by another test's server
    /// or a client's ephemeral port): the sentinel then exits, and another port is tried.
    fn spawn(binary: &std::path::Path, dir: &std::path::Path, primary_port: u16) -> SentinelProcess {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel-{port}.log\nsentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\nsentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 3000\nsentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.display(),
                ),
            )
            .unwrap();
            let child = Command::new(binary)
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-sentinel");
            let mut sentinel = SentinelProcess {
                port,
                child,
                dir: dir.to_path_buf(),
            };
            let mut exited = None;
            let up = wait_for(Duration::from_secs(10), || {
                if let Ok(Some(status)) = sentinel.child.try_wait() {
                    exited = Some(status);
                    return true;
                }
                // Asked as a sentinel: a server that took the port would answer with an error.
                crate::raw_command_pub(port, &["SENTINEL", "MASTER", MASTER_NAME]).starts_with('*')
            });
            match exited {
                None if up && matches!(sentinel.child.try_wait(), Ok(None)) => return sentinel,
                _ => {
                    let _ = sentinel.child.kill();
                    let _ = sentinel.child.wait();
                    failures.push(format!(
                        "port {port}: {}; log:\n{}",
                        exited.map_or("no answer within 10 s".to_string(), |s| format!("exited with {s}")),
                        std::fs::read_to_string(sentinel.log()).unwrap_or_default()
                    ));
                }
            }
        }
        panic!("redis-sentinel did not start after 5 tries:\n{}", failures.join("\n"));
    }

    fn log(&self) -> PathBuf {
        self.dir.join(format!("sentinel-{}.log", self.port))
    }
}

/// A primary, one replica and three sentinels watching them as `mymaster`
/// (down-after 1 s, failover-timeout 3 s).
pub struct SentinelGroup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<SentinelProcess>,
    dir: PathBuf,
}

pub const MASTER_NAME: &str = "mymaster";

impl SentinelGroup {
    pub fn start() -> SentinelGroup {
        let binary = require_binary("redis-sentinel");
        let primary = RedisServer::start();
        let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
        wait_until("replica in sync", Duration::from_secs(20), || {
            replica
                .command(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        let dir = std::env::temp_dir().join(format!("fleetgate-sentinels-{}-{}", std::process::id(), primary.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let sentinels = (0..3)
            .map(|_| SentinelProcess::spawn(&binary, &dir, primary.port()))
            .collect::<Vec<_>>();
        let group = SentinelGroup {
            primary,
            replica,
            sentinels,
            dir,
        };
        for s in &group.sentinels {
            let mut last = String::new();
            let known = wait_for(Duration::from_secs(30), || {
                last = crate::raw_command_pub(s.port, &["SENTINEL", "MASTER", MASTER_NAME]);
                field(&last, "num-other-sentinels").as_deref() == Some("2")
                    && field(&last, "num-slaves").as_deref() == Some("1")
            });
            assert!(
                known,
                "sentinel on port {} does not know the primary, its replica and 2 peers within 30 s; \
                 last SENTINEL MASTER reply: {last:?}; its log:\n{}",
                s.port,
                std::fs::read_to_string(s.log()).unwrap_or_default()
            );
        }
        group
    }

    /// `redis-sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3?master=mymaster`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis-sentinel://{}?master={MASTER_NAME}", hosts.join(","))
    }

    /// The port the sentinels currently name as primary.
    pub fn primary_port(&self) -> Option<u16> {
        let reply = crate::raw_command_pub(
            self.sentinels[0].port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        );
        reply
            .lines()
            .filter(|l| !l.starts_with(['*', '$']))
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with
/// `openssl` in a temporary directory.
pub struct TestCerts {
    pub dir: PathBuf,
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        let openssl = require_binary("openssl");
        let dir = std::env::temp_dir().join(format!("fleetgate-certs-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=fleetgate-test-ca",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for name in ["server", "client"] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ]);
            let mut args = vec![
                "x509",
                "-req",
                "-in",
                &*format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &*format!("{name}.crt"),
                "-days",
                "2",
            ]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
            args.extend(["-extfile".into(), format!("{name}.ext")]);
            let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            run(&refs);
        }
        TestCerts { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Starts a redis-server with a plain port (for the harness) and a TLS port that requires
    /// client certificates when `require_client_cert`. Returns the server and its TLS port.
    pub fn start_tls_server(&self, require_client_cert: bool) -> (RedisServer, u16) {
        let tls_port = free_port();
        let p = |f: &str| self.path(f).display().to_string();
        let auth = if require_client_cert { "yes" } else { "no" };
        let server = RedisServer::start_with_args(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &p("server.crt"),
            "--tls-key-file",
            &p("server.key"),
            "--tls-ca-cert-file",
            &p("ca.crt"),
            "--tls-auth-clients",
            auth,
        ]);
        (server, tls_port)
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
