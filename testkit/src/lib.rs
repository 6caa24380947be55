//! A real etcd for tests and benchmarks.
//!
//! Each [`Etcd`] is a fresh single-member etcd (Debian's `/usr/bin/etcd`, package
//! `etcd-server`; `ETCD_BIN` overrides the path) on free loopback ports with its own temporary
//! data directory. It is killed and its directory removed when the value is dropped, also when
//! the test panics. A missing etcd is a failure, never a skipped test.
//!
//! [`Etcd::key_space`] reads everything under the etcd's prefix with etcd's own client, not
//! through the registry, so that a test can check what a request did (or did not) write
//! without knowing the registry's key layout.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long etcd may take to answer after being started.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// How many times a start is retried when etcd exits at once (e.g. a port taken meanwhile).
const START_ATTEMPTS: usize = 3;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running etcd, killed on drop.
pub struct Etcd {
    child: Child,
    /// Holds the data directory and the log.
    root: PathBuf,
    /// The client URL, `http://127.0.0.1:PORT` (`https://` with [`Etcd::start_tls`]).
    pub endpoint: String,
    /// A key prefix unique to this etcd's user.
    pub prefix: String,
    /// Its keys, when it serves TLS.
    pub keys: Option<EtcdKeys>,
    /// Where it serves `/health` and `/metrics`, in plain HTTP.
    metrics_port: u16,
}

/// The keys of an etcd started with [`Etcd::start_tls`], in its directory: its own CA (which
/// signs its certificate and the clients' it accepts, `--client-cert-auth`), and a client
/// certificate.
#[derive(Debug, Clone)]
pub struct EtcdKeys {
    dir: PathBuf,
    ca_pem: fleet_trust::Pem,
    /// The CA's certificate, for clients to trust.
    pub ca: PathBuf,
    /// A client certificate of the CA, and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdKeys {
    fn make(dir: &Path) -> Result<EtcdKeys, String> {
        use fleet_trust::{issue_for, new_ca, write_pem, Kind, San, Validity};
        let validity = || Validity::starting_now(Duration::from_secs(24 * 3600));
        let ca = new_ca("test etcd CA", validity()).map_err(|e| e.to_string())?;
        let server = issue_for(
            &ca,
            Kind::EtcdServer,
            "etcd",
            &[San::Ip(std::net::IpAddr::from([127, 0, 0, 1]))],
            validity(),
        )
        .map_err(|e| e.to_string())?;
        let client = issue_for(&ca, Kind::EtcdClient, "fleet", &[], validity())
            .map_err(|e| e.to_string())?;
        let ca_files = write_pem(dir, "ca", &ca).map_err(|e| e.to_string())?;
        write_pem(dir, "server", &server).map_err(|e| e.to_string())?;
        let client_files = write_pem(dir, "client", &client).map_err(|e| e.to_string())?;
        Ok(EtcdKeys {
            dir: dir.to_path_buf(),
            ca_pem: ca,
            ca: ca_files.cert,
            cert: client_files.cert,
            key: client_files.key,
        })
    }

    /// Another client certificate of this etcd's CA: `(certificate, key)` files.
    pub fn issue_client(&self, name: &str) -> (PathBuf, PathBuf) {
        let validity = fleet_trust::Validity::starting_now(Duration::from_secs(24 * 3600));
        let pem = fleet_trust::issue_for(
            &self.ca_pem,
            fleet_trust::Kind::EtcdClient,
            name,
            &[],
            validity,
        )
        .expect("issue a client certificate");
        let files = fleet_trust::write_pem(&self.dir, &format!("client-{name}"), &pem)
            .expect("write a client certificate");
        (files.cert, files.key)
    }

    /// A client certificate of another CA, which this etcd refuses: `(certificate, key)`.
    pub fn foreign_client(&self, name: &str) -> (PathBuf, PathBuf) {
        let validity = || fleet_trust::Validity::starting_now(Duration::from_secs(24 * 3600));
        let other = fleet_trust::new_ca("another CA", validity()).expect("another CA");
        let pem =
            fleet_trust::issue_for(&other, fleet_trust::Kind::EtcdClient, name, &[], validity())
                .expect("issue a foreign client certificate");
        let files = fleet_trust::write_pem(&self.dir, &format!("foreign-{name}"), &pem)
            .expect("write a foreign client certificate");
        (files.cert, files.key)
    }
}

fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind a loopback port")
        .port()
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    free_port()
}

/// A fresh directory under the system's temporary directory.
pub fn temp_dir(what: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("fleet-test-{}-{}-{what}", std::process::id(), n));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create a temporary directory");
    dir
}

/// A temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        TempDir(temp_dir(what))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The sum of metric `name`'s samples in `text` (Prometheus' text format) over the series
/// whose labels include `label` (`""`: all of them); 0 when there is none.
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Whether etcd's `/health` endpoint on `port` says it is healthy.
fn healthy(port: u16) -> bool {
    get(port, "/health").is_some_and(|answer| answer.contains("\"health\":\"true\""))
}

/// The answer (headers and body) to a plain HTTP GET of `path` on loopback's `port`.
fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    Some(answer)
}

impl Etcd {
    /// Starts etcd and waits (bounded) until it is healthy. Panics with the reason otherwise.
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    /// [`Etcd::start`] serving TLS only to clients with a certificate of its own CA
    /// ([`EtcdKeys`], in [`Etcd::keys`]).
    pub fn start_tls() -> Etcd {
        Etcd::start_inner(&[], true)
    }

    /// [`Etcd::start`] with extra command-line flags, e.g. `["--quota-backend-bytes=262144"]`.
    pub fn start_with(flags: &[&str]) -> Etcd {
        Etcd::start_inner(flags, false)
    }

    fn start_inner(flags: &[&str], tls: bool) -> Etcd {
        let bin = etcd_bin();
        if !bin.exists() {
            panic!(
                "etcd not found at {}: the tests need a real etcd v3.4; install Debian's \
                 `etcd-server` package (apt-get install etcd-server) or set ETCD_BIN",
                bin.display()
            );
        }
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            match Etcd::try_start(&bin, flags, tls) {
                Ok(etcd) => return etcd,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("etcd did not start: {last_failure}");
    }

    fn try_start(bin: &Path, flags: &[&str], tls: bool) -> Result<Etcd, String> {
        let root = temp_dir("etcd");
        let keys = if tls {
            Some(EtcdKeys::make(&root)?)
        } else {
            None
        };
        let data_dir = root.join("data");
        let log_path = root.join("etcd.log");
        let log = File::create(&log_path).map_err(|e| format!("cannot create the log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let client_port = free_port();
        let peer_port = free_port();
        let name = format!("test{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        let scheme = if tls { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        // /health in plain HTTP, whatever the clients speak.
        let health_port = free_port();
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(bin);
        // Settings from the environment (ETCD_*) would override the flags below.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        command
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("{name}={peer_url}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&name)
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{health_port}"
            ))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some(keys) = &keys {
            command
                .arg(format!(
                    "--cert-file={}",
                    keys.dir.join("server.pem").display()
                ))
                .arg(format!(
                    "--key-file={}",
                    keys.dir.join("server-key.pem").display()
                ))
                .arg("--client-cert-auth")
                .arg(format!("--trusted-ca-file={}", keys.ca.display()));
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut etcd = Etcd {
            child,
            root,
            endpoint: client_url,
            prefix: format!("/fleet-test-{n}/"),
            keys,
            metrics_port: health_port,
        };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(format!(
                    "etcd exited with {status}; its log ends with:\n{}",
                    log_tail(&log_path)
                ));
            }
            if healthy(health_port) {
                return Ok(etcd);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd did not answer at {} within {STARTUP_DEADLINE:?}; its log ends with:\n{}",
                    etcd.endpoint,
                    log_tail(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Etcd {
    /// [`metric_sum`] of etcd's metric `name` over the series whose labels include `label`
    /// (e.g. `grpc_method="LeaseKeepAlive"`), from its `/metrics`. Panics when etcd does not
    /// answer.
    pub fn metric(&self, name: &str, label: &str) -> f64 {
        let text = get(self.metrics_port, "/metrics").unwrap_or_else(|| {
            panic!(
                "etcd's /metrics on port {} does not answer",
                self.metrics_port
            )
        });
        metric_sum(&text, name, label)
    }

    /// Stops etcd in its tracks (SIGSTOP): connections stay open and nothing answers, as when
    /// etcd is cut off or overloaded, until [`Etcd::resume`]. Panics when it cannot.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused etcd go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill -{signal}: {e}"));
        assert!(status.success(), "kill -{signal} of etcd failed: {status}");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "etcd log ({}):\n{}",
                self.endpoint,
                log_tail(&self.root.join("etcd.log"))
            );
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// One key as etcd stores it, with everything a write to it changes.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// How many times the key was written since it was created.
    pub version: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

/// Key and value as text (fleet stores JSON), so that a failed comparison reads.
impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value", &String::from_utf8_lossy(&self.value))
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("version", &self.version)
            .field("lease", &self.lease)
            .finish()
    }
}

/// The keys under a prefix, read in one request, and the store's revision at that read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    /// etcd's revision when the keys were read: any write to this etcd raises it.
    pub revision: i64,
    /// In key order.
    pub keys: Vec<StoredKey>,
}

impl Etcd {
    /// etcd's own client of this etcd. Panics when it cannot be made.
    async fn client(&self) -> etcd_client::Client {
        let options = self.keys.as_ref().map(|keys| {
            let read = |p: &Path| std::fs::read(p).expect("read a key file");
            etcd_client::ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read(&keys.ca)))
                    .identity(etcd_client::Identity::from_pem(
                        read(&keys.cert),
                        read(&keys.key),
                    )),
            )
        });
        etcd_client::Client::connect([&self.endpoint], options)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to etcd at {}: {e}", self.endpoint))
    }

    /// Everything under [`Etcd::prefix`] as etcd stores it, read with etcd's own client.
    /// Panics when etcd does not answer.
    pub async fn key_space(&self) -> KeySpace {
        let mut client = self.client().await;
        let answer = client
            .get(
                self.prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot read {} from etcd: {e}", self.prefix));
        KeySpace {
            revision: answer
                .header()
                .map(|h| h.revision())
                .expect("etcd answered without a header"),
            keys: answer
                .kvs()
                .iter()
                .map(|kv| StoredKey {
                    key: kv.key().to_vec(),
                    value: kv.value().to_vec(),
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                    version: kv.version(),
                    lease: kv.lease(),
                })
                .collect(),
        }
    }

    /// Writes `value` at `key` under [`Etcd::prefix`] with etcd's own client, as another
    /// version of fleet might have. Panics when etcd refuses.
    pub async fn put_raw(&self, key: &str, value: &[u8]) {
        let mut client = self.client().await;
        let key = format!("{}{key}", self.prefix);
        client
            .put(key.as_str(), value, None)
            .await
            .unwrap_or_else(|e| panic!("cannot write {key} to etcd: {e}"));
    }

    /// Deletes `key` under [`Etcd::prefix`] as a stray client would, through etcd's own client.
    pub async fn delete_raw(&self, key: &str) {
        let mut client = self.client().await;
        let key = format!("{}{key}", self.prefix);
        client
            .delete(key.as_str(), None)
            .await
            .unwrap_or_else(|e| panic!("cannot delete {key} from etcd: {e}"));
    }

    /// Turns on etcd's authentication as an operator would (`etcdctl user add`, `role add`,
    /// `role grant-permission --prefix`, `auth enable`): a `root` user with `root_password`,
    /// and `user` with `password`, allowed to read and write [`Etcd::prefix`] only. Afterwards
    /// [`Etcd::key_space`] and the other raw helpers no longer work. Panics when etcd refuses.
    pub async fn enable_auth(&self, root_password: &str, user: &str, password: &str) {
        let mut client = self.client().await;
        let role = format!("{user}-role");
        client
            .user_add("root", root_password, None)
            .await
            .expect("add the root user");
        client
            .user_grant_role("root", "root")
            .await
            .expect("make root root");
        client
            .user_add(user, password, None)
            .await
            .expect("add the user");
        client.role_add(role.as_str()).await.expect("add the role");
        client
            .role_grant_permission(
                role.as_str(),
                etcd_client::Permission::read_write(self.prefix.as_str()).with_prefix(),
            )
            .await
            .expect("grant the role the prefix");
        client
            .user_grant_role(user, role.as_str())
            .await
            .expect("give the user the role");
        client.auth_enable().await.expect("enable authentication");
    }

    /// Frees etcd's space after its quota alarm, as an operator does: deletes everything under
    /// [`Etcd::prefix`], compacts, defragments and disarms the alarms. Panics when etcd refuses.
    pub async fn free_space(&self) {
        let mut client = self.client().await;
        let deleted = client
            .delete(
                self.prefix.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .expect("delete under the prefix");
        let revision = deleted
            .header()
            .map(|h| h.revision())
            .expect("etcd answered without a header");
        client
            .compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .expect("compact");
        client.defragment().await.expect("defragment");
        // As `etcdctl alarm disarm`: each raised alarm, by the member that raised it.
        let raised = client
            .alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            )
            .await
            .expect("list the alarms");
        for alarm in raised.alarms() {
            let mut member = etcd_client::AlarmOptions::new();
            member.with_member(alarm.member_id());
            client
                .alarm(
                    etcd_client::AlarmAction::Deactivate,
                    alarm.alarm(),
                    Some(member),
                )
                .await
                .expect("disarm an alarm");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metrics_are_summed_over_their_labels_only() {
        let text = "# TYPE grpc_server_msg_received_total counter\n\
            grpc_server_msg_received_total{grpc_method=\"Range\"} 10\n\
            grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\"} 32\n\
            grpc_server_msg_received_total_other 1000\n\
            etcd_mvcc_db_total_size_in_bytes 2.097152e+06\n";
        assert_eq!(metric_sum(text, "grpc_server_msg_received_total", ""), 42.0);
        assert_eq!(
            metric_sum(
                text,
                "grpc_server_msg_received_total",
                "grpc_method=\"LeaseKeepAlive\""
            ),
            32.0
        );
        assert_eq!(
            metric_sum(text, "etcd_mvcc_db_total_size_in_bytes", ""),
            2_097_152.0
        );
        assert_eq!(metric_sum(text, "missing", ""), 0.0);
    }
}
