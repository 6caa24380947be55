//! The harness of the end-to-end tests: a local cluster of real systemd machines
//! (`cluster/fleet-cluster`: systemd-nspawn nodes, a real etcd) running the freshly built
//! fleetd, driven with the freshly built fleetctl.
//!
//! Needs root. Nothing here skips: a missing prerequisite fails the test with the reason.

pub mod chaos;
pub mod sampler;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nodes the cluster is brought up with.
pub const NODES: u32 = 3;

/// Metadata of the test cluster's nodes (beside `hostname=nodeN`), for the placement tests.
pub const METADATA: [&str; 3] = ["role=web,az=a", "role=web,az=b", "role=db,az=b"];

/// Members of the test cluster's etcd, as a production etcd has them.
pub const ETCD_MEMBERS: u32 = 3;

/// `agent_ttl` of the test cluster (the tool's default).
pub const AGENT_TTL: Duration = Duration::from_secs(10);

/// A command's result, with its output as text.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with the whole output unless the command succeeded.
    #[track_caller]
    pub fn expect_ok(self, what: &str) -> Run {
        assert!(self.ok(), "{what} failed: {self:#?}");
        self
    }
}

pub struct Cluster {
    root: PathBuf,
    bin: PathBuf,
    scratch: PathBuf,
}

/// The shared cluster, brought up (idempotently) on first use in this test binary, running the
/// debug build.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::new(&target_dir().join("debug"));
        cluster.up();
        cluster
    })
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate sits in the workspace")
        .to_path_buf()
}

impl Cluster {
    /// A handle on the local cluster running the fleetd and fleetctl found in `bin`. Panics,
    /// saying why, when not root or when the binaries are missing.
    pub fn new(bin: &Path) -> Cluster {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the end-to-end tests boot systemd-nspawn nodes and must run as root \
             (run the unit tests alone with `cargo test --workspace --exclude fleet-e2e`)"
        );
        for b in ["fleetd", "fleetctl"] {
            assert!(
                bin.join(b).exists(),
                "{} is missing: build the workspace first (cargo build --workspace)",
                bin.join(b).display()
            );
        }
        let scratch = std::env::temp_dir().join(format!("fleet-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).expect("create scratch dir");
        Cluster {
            root: workspace_root(),
            bin: bin.to_path_buf(),
            scratch,
        }
    }

    pub(crate) fn tool_path(&self) -> PathBuf {
        self.root.join("cluster/fleet-cluster")
    }

    /// Brings the cluster up, or repairs it (restarts dead nodes, a stopped etcd).
    pub fn up(&self) {
        let bin = self.bin.to_string_lossy().into_owned();
        self.tool(&[
            "up",
            "-n",
            &NODES.to_string(),
            "--etcd",
            &ETCD_MEMBERS.to_string(),
            "--bin",
            &bin,
        ])
        .expect_ok("fleet-cluster up");
        // Booted is not enough: every node's fleetd must be registered before a test runs, with
        // the configuration `up` just wrote (`up` restarts a fleetd whose configuration changed
        // without waiting, and the record of the one it replaces can still be there, with the
        // old metadata, until the new one takes its lease back).
        let registered = eventually(AGENT_TTL + Duration::from_secs(10), || {
            let out = self.fleetctl(&["list-machines", "--no-legend", "--full"]);
            let current = (1..=NODES).all(|n| {
                out.stdout.lines().any(|line| {
                    let mut fields = line.split('\t').filter(|f| !f.is_empty());
                    let (Some(id), Some(_), Some(metadata)) =
                        (fields.next(), fields.next(), fields.next())
                    else {
                        return false;
                    };
                    let have: Vec<&str> = metadata.split(',').collect();
                    id == self.machine_id(n)
                        && have.contains(&format!("hostname=node{n}").as_str())
                        && METADATA[n as usize - 1]
                            .split(',')
                            .all(|pair| have.contains(&pair))
                })
            });
            (out.ok() && out.stdout.lines().count() == NODES as usize && current).then_some(())
        });
        assert!(
            registered.is_some(),
            "not every node registered: {:#?}",
            self.fleetctl(&["list-machines"])
        );
        // Nor is registered: each machine counts its majorities over the members it last
        // recorded reading, at most one reading per 2 s. A machine that registered first on a
        // cold cluster and is cut off before it recorded the others counts itself alone, keeps
        // its units (safely: the engine counts over the same reading), and a test that cuts it
        // waits for ever for them to move.
        let settled = eventually(Duration::from_secs(10), || {
            let readings = self.member_readings()?;
            (readings.len() == NODES as usize && readings.iter().all(|r| *r == NODES as u64))
                .then_some(())
        });
        assert!(
            settled.is_some(),
            "not every member recorded a reading of all {NODES}: {:?}",
            self.member_readings()
        );
    }

    /// How many members each member's reading says its machine last read (`seenMembers` of
    /// `readings/<id>`), read from etcd with `etcdctl` and the cluster's etcd client
    /// certificate; `None` if etcd cannot be read.
    pub fn member_readings(&self) -> Option<Vec<u64>> {
        let out = etcdctl()
            .args([
                "get",
                "--prefix",
                "/_coreos.com/fleet/readings/",
                "--print-value-only",
                "--command-timeout=3s",
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let record: serde_json::Value = serde_json::from_str(l).ok()?;
                record["seenMembers"].as_u64()
            })
            .collect()
    }

    /// Compacts etcd's history up to its latest revision, freeing the space of every older
    /// version (`etcdctl compaction --physical`, as etcd's own auto-compaction does with
    /// older revisions): a watch that resumes from before it finds its revision compacted.
    /// Returns the revision. Panics when etcd refuses.
    pub fn compact_etcd(&self) -> i64 {
        let out = etcdctl()
            .args([
                "get",
                "/",
                "--prefix",
                "--keys-only",
                "--limit=1",
                "-w",
                "json",
            ])
            .output()
            .expect("run etcdctl");
        assert!(out.status.success(), "etcdctl get: {out:?}");
        let header: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("etcdctl's JSON");
        let revision = header["header"]["revision"]
            .as_i64()
            .expect("a revision in etcdctl's answer");
        let out = etcdctl()
            .args(["compaction", "--physical", &revision.to_string()])
            .output()
            .expect("run etcdctl");
        assert!(out.status.success(), "etcdctl compaction: {out:?}");
        revision
    }

    /// Runs the cluster tool.
    pub fn tool(&self, args: &[&str]) -> Run {
        let mut command = Command::new(self.tool_path());
        for (i, metadata) in METADATA.iter().enumerate() {
            command.env(format!("FLEET_CLUSTER_METADATA_{}", i + 1), metadata);
        }
        let output = command
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.tool_path().display()));
        Run::from(output)
    }

    /// Runs fleetctl on the host against node `n`'s API over HTTPS, as the cluster's operator.
    pub fn fleetctl_via(&self, n: u32, args: &[&str]) -> Run {
        self.fleetctl_as("operator", n, args)
    }

    /// Runs fleetctl on the host against node `n`'s API over HTTPS with the certificate
    /// `holder` (`operator`, `viewer`: files of the cluster's keys, [`pki`]).
    pub fn fleetctl_as(&self, holder: &str, n: u32, args: &[&str]) -> Run {
        let output = fleetctl_command(&self.bin, holder, n)
            .args(args)
            .output()
            .expect("run fleetctl");
        Run::from(output)
    }

    /// Runs fleetctl against node 1.
    pub fn fleetctl(&self, args: &[&str]) -> Run {
        self.fleetctl_via(1, args)
    }

    /// Runs a command inside node `n`.
    pub fn exec(&self, n: u32, cmd: &[&str]) -> Run {
        let name = node_name(n);
        let mut args = vec!["exec", name.as_str()];
        args.extend_from_slice(cmd);
        self.tool(&args)
    }

    /// `systemctl is-active UNIT` inside node `n`.
    pub fn is_active(&self, n: u32, unit: &str) -> String {
        self.exec(n, &["systemctl", "is-active", unit])
            .stdout
            .trim()
            .to_string()
    }

    /// How many lines of fleetd's journal on node `n` contain `text` (a fixed string).
    pub fn fleetd_log_count(&self, n: u32, text: &str) -> usize {
        self.exec(
            n,
            &[
                "/bin/bash",
                "-c",
                "journalctl -u fleet -o cat --no-pager | grep -c -F -e \"$1\" || true",
                "count",
                text,
            ],
        )
        .stdout
        .trim()
        .parse()
        .unwrap_or(0)
    }

    /// systemd's `InvocationID` of `unit` on node `n`: new each time the unit is started, so
    /// an unchanged id means the unit was not restarted.
    pub fn invocation_id(&self, n: u32, unit: &str) -> String {
        self.exec(n, &["systemctl", "show", "-P", "InvocationID", unit])
            .stdout
            .trim()
            .to_string()
    }

    /// Puts a new fleetd binary where the nodes run it from (the same code with a marker
    /// appended past its ELF image, so a different file), as an upgrade would. Takes effect
    /// when fleetd restarts on a node; the next `fleet-cluster up` installs the build again.
    pub fn replace_fleetd_binary(&self) {
        let state = state_dir();
        let installed = state.join("bin/fleetd");
        let mut bytes = std::fs::read(&installed)
            .unwrap_or_else(|e| panic!("read {}: {e}", installed.display()));
        bytes.extend_from_slice(format!("fleet-e2e upgrade {}\n", std::process::id()).as_bytes());
        let next = state.join("bin/fleetd.e2e-upgrade");
        std::fs::write(&next, &bytes).expect("write the new binary");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755))
                .expect("make the new binary executable");
        }
        std::fs::rename(&next, &installed).expect("install the new binary");
    }

    /// Writes a unit file into a scratch directory and returns its path.
    pub fn unit_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.scratch.join(name);
        std::fs::write(&path, contents).expect("write unit file");
        path
    }

    pub fn scratch(&self) -> &Path {
        &self.scratch
    }
}

/// The plain-HTTP metrics URL of etcd member `m` (1-based) of the test cluster, on the
/// bridge's address `10.233.0.m` (member 1 is the host's own); its clients need TLS.
pub fn etcd_metrics_url(m: u32) -> String {
    format!("http://10.233.0.{m}:2381")
}

/// The cluster tool's state directory.
pub fn state_dir() -> PathBuf {
    std::env::var_os("FLEET_CLUSTER_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/fleet-cluster"))
}

/// The cluster's keys, as `fleet-cluster up` makes them: `ca/` (the cluster's CA),
/// `operator.pem`, `viewer.pem`, `etcd-ca/`, `nodes/nodeN/` (what node N holds).
pub fn pki() -> PathBuf {
    state_dir().join("pki")
}

/// `etcdctl` (API 3) for the cluster's etcd members, with its etcd client certificate.
fn etcdctl() -> Command {
    let pki = pki();
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .env(
            "ETCDCTL_ENDPOINTS",
            (1..=ETCD_MEMBERS)
                .map(|m| format!("https://10.233.0.{m}:2379"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .env("ETCDCTL_CACERT", pki.join("etcd-ca/ca.pem"))
        .env("ETCDCTL_CERT", pki.join("etcd-client.pem"))
        .env("ETCDCTL_KEY", pki.join("etcd-client-key.pem"));
    command
}

/// Node `n`'s API.
pub fn api_url(n: u32) -> String {
    format!("https://{}:49153", node_ip(n))
}

/// fleetctl of `bin` without the `FLEETCTL_*` variables of the test's environment: a test run
/// from a shell that holds the local cluster's (`fleet-cluster env`) must not send its
/// certificate or endpoint.
pub fn bare_fleetctl(bin: &Path) -> Command {
    let mut command = Command::new(bin.join("fleetctl"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FLEETCTL_") {
            command.env_remove(name);
        }
    }
    command
}

/// fleetctl of `bin` set to talk to node `n`'s API over HTTPS with the certificate `holder`,
/// and no other `FLEETCTL_*` variable ([`bare_fleetctl`]).
pub fn fleetctl_command(bin: &Path, holder: &str, n: u32) -> Command {
    let mut command = bare_fleetctl(bin);
    command
        .env("FLEETCTL_ENDPOINT", api_url(n))
        .env("FLEETCTL_CA_FILE", pki().join("ca/ca.pem"))
        .env("FLEETCTL_CERT_FILE", pki().join(format!("{holder}.pem")))
        .env("FLEETCTL_KEY_FILE", pki().join(format!("{holder}-key.pem")));
    command
}

/// The operator's TLS settings for fleet_client.
pub fn operator_tls() -> fleet_client::Tls {
    fleet_client::Tls {
        ca_file: Some(pki().join("ca/ca.pem")),
        identity: Some((pki().join("operator.pem"), pki().join("operator-key.pem"))),
    }
}

pub fn node_name(n: u32) -> String {
    format!("node{n}")
}

pub fn node_ip(n: u32) -> String {
    format!("10.233.0.{}", 10 + n)
}

/// The columns of a row fleetctl printed: tab-aligned like Go's tabwriter, so a column may be
/// followed by more than one tab.
pub fn columns(row: &str) -> Vec<&str> {
    row.split('\t').filter(|c| !c.is_empty()).collect()
}

/// The node a `.../10.233.0.1N` legend (as fleetctl prints machines) points at.
pub fn node_in(text: &str) -> Option<u32> {
    (1..=NODES).find(|n| text.contains(&format!("/{}", node_ip(*n))))
}

impl Cluster {
    /// The nodes where `unit` is listed by `list-units` (as seen through node 1).
    pub fn nodes_of(&self, unit: &str) -> Vec<u32> {
        let out = self.fleetctl(&["list-units", "--no-legend", "--full"]);
        let mut nodes: Vec<u32> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{unit}\t")))
            .filter_map(node_in)
            .collect();
        nodes.sort();
        nodes
    }

    /// Waits until `unit` is active in systemd on exactly one node, and returns it.
    pub fn active_on(&self, unit: &str) -> Option<u32> {
        eventually(Duration::from_secs(15), || {
            let nodes = self.nodes_of(unit);
            match nodes.as_slice() {
                [n] if self.is_active(*n, unit) == "active" => Some(*n),
                _ => None,
            }
        })
    }

    /// An API client talking to node `n` over HTTPS, as the cluster's operator.
    pub fn api_client(&self, n: u32) -> fleet_client::Client {
        fleet_client::Client::with_tls(&api_url(n), Duration::from_secs(5), operator_tls())
            .expect("the operator's keys and a valid endpoint")
    }

    /// Where each of `units` is active in systemd, asking every node once (one sample): the
    /// nodes of each unit, in the order of `units`. A node that does not answer counts as
    /// running none.
    pub fn running(&self, units: &[String]) -> Vec<Vec<u32>> {
        let mut on = vec![Vec::new(); units.len()];
        for n in 1..=NODES {
            let mut cmd = vec!["systemctl", "is-active"];
            cmd.extend(units.iter().map(String::as_str));
            let out = self.exec(n, &cmd);
            for (i, state) in out.stdout.lines().enumerate().take(units.len()) {
                if state.trim() == "active" {
                    on[i].push(n);
                }
            }
        }
        on
    }

    /// Starts `count` ticker units that may go anywhere; returns them with where they run and
    /// their `InvocationID`s.
    pub fn start_free(&self, stem: &str, count: usize) -> Vec<PinnedUnit> {
        (0..count)
            .map(|_| {
                let name = unique(stem);
                let path = self.unit_file(&name, &ticker_unit(stem));
                let out = self
                    .fleetctl(&["start", &path.to_string_lossy()])
                    .expect_ok("start");
                let node = node_in(&out.stdout).expect("machine in output");
                let invocation = self.invocation_id(node, &name);
                PinnedUnit {
                    name,
                    node,
                    invocation,
                }
            })
            .collect()
    }

    /// The machine id of node `n`.
    pub fn machine_id(&self, n: u32) -> String {
        format!("f1ee70{n:02}{}", "0".repeat(24))
    }
}

/// A unit running on one node (pinned there with `MachineID=`, or placed there), and the
/// invocation systemd started it under.
#[derive(Debug, Clone)]
pub struct PinnedUnit {
    pub name: String,
    pub node: u32,
    pub invocation: String,
}

impl Cluster {
    /// Starts a ticker unit pinned to each node; returns them with their `InvocationID`s.
    pub fn start_one_per_node(&self, stem: &str) -> Vec<PinnedUnit> {
        (1..=NODES)
            .map(|n| {
                let name = unique(stem);
                let text = format!(
                    "{}\n[X-Fleet]\nMachineID={}\n",
                    ticker_unit(stem),
                    self.machine_id(n)
                );
                let path = self.unit_file(&name, &text);
                let out = self
                    .fleetctl(&["start", &path.to_string_lossy()])
                    .expect_ok("start");
                assert_eq!(node_in(&out.stdout), Some(n), "{}", out.stdout);
                let invocation = self.invocation_id(n, &name);
                assert!(
                    !invocation.is_empty(),
                    "{name} has no invocation id on node{n}"
                );
                PinnedUnit {
                    name,
                    node: n,
                    invocation,
                }
            })
            .collect()
    }

    /// Panics unless each unit still runs on its node under the same invocation (it was not
    /// restarted) and fleet lists it there alone (it did not move); `what` names the moment.
    pub fn assert_unchanged(&self, units: &[PinnedUnit], what: &str) {
        for u in units {
            let (name, n) = (&u.name, u.node);
            assert_eq!(
                self.is_active(n, name),
                "active",
                "{what}: {name} on node{n}"
            );
            assert_eq!(
                self.invocation_id(n, name),
                u.invocation,
                "{what}: {name} was restarted on node{n}"
            );
            assert_eq!(self.nodes_of(name), vec![n], "{what}: {name} moved");
        }
    }

    /// Destroys the units, whatever state they are in.
    pub fn destroy_all(&self, units: &[PinnedUnit]) {
        for u in units {
            self.fleetctl(&["destroy", &u.name]).expect_ok("destroy");
        }
    }
}

/// Retries `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A service name no other test on this cluster uses: `<stem>-<tag>.service` (see [`tag`]).
/// Reusing a name races with what its last user left behind: systemd may keep a stopped
/// unit's cgroup a while, and a unit started again under the same name then fails
/// (219/CGROUP); a failed test may leave its unit in the cluster.
pub fn unique(stem: &str) -> String {
    format!("{stem}-{}.service", tag())
}

/// A tag no other test on this cluster used: `<pid>-<n>`, `n` counting up in this process.
pub fn tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A long-running service that prints a line every second.
pub fn ticker_unit(description: &str) -> String {
    format!(
        "[Unit]\nDescription={description}\n\n[Service]\nExecStart=/bin/bash -c 'while true; do echo tick; sleep 1; done'\n"
    )
}

/// What an HTTPS request for a test got: the status and body, or why there was no answer (one
/// line from [`fleet_trust::explain`] when TLS refused).
pub type Answer = Result<(u16, String), String>;

/// One HTTPS request, for what fleetctl never asks: `method` `url` with the certificate
/// `holder` of the cluster's keys (`operator`, `viewer`, `nodes/node1/machine`, ...; none
/// without), trusting the CA `ca` (a file under [`pki`]); `name` is the server name asked for,
/// resolved to `url`'s address (`None`: `url`'s own host).
pub fn https(
    method: &str,
    url: &str,
    holder: Option<&str>,
    ca: &str,
    name: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let key = holder.map(|h| {
        (
            pki().join(format!("{h}.pem")),
            pki().join(format!("{h}-key.pem")),
        )
    });
    let config = fleet_trust::client_config(
        &pki().join(ca),
        key.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .map_err(|e| e.to_string())?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .no_proxy()
        .timeout(Duration::from_secs(10));
    let mut url = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    // For asking the server's verdict on the certificate when a request fails unexplained.
    let probe_config = config_for_probe(ca, key.as_ref())?;
    let probe_host = name.or(url.host_str()).unwrap_or_default().to_string();
    let probe_address = url
        .socket_addrs(|| None)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("no address")?
        .to_string();
    if let Some(name) = name {
        let address = url
            .socket_addrs(|| None)
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or("no address")?;
        builder = builder.resolve(name, address);
        url.set_host(Some(name)).map_err(|e| e.to_string())?;
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut request = client.request(method, url);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(line) = fleet_trust::explain(&e) {
                    return Err(line);
                }
                // TLS 1.3 refuses a certificate after the handshake: the refusal can reach the
                // request as a closed connection. Ask the server, as fleet's client does.
                let verdict = fleet_trust::probe(
                    &probe_address,
                    &probe_host,
                    probe_config,
                    Duration::from_secs(5),
                    Duration::from_secs(1),
                )
                .await;
                return Err(match verdict {
                    fleet_trust::Probe::Refused(why) => why,
                    _ => format!("{e:?}"),
                });
            }
        };
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, text))
    })
}

/// The client configuration [`https`] probes with (the CA `ca` under [`pki`], the holder's
/// files).
fn config_for_probe(
    ca: &str,
    key: Option<&(PathBuf, PathBuf)>,
) -> Result<std::sync::Arc<fleet_trust::rustls::ClientConfig>, String> {
    fleet_trust::client_config(
        &pki().join(ca),
        key.map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .map(std::sync::Arc::new)
    .map_err(|e| e.to_string())
}
