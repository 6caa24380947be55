//! The fleet fleetctl's tests run against: the real API over a private etcd, the real engine
//! placing units, and one simulated machine whose "agent" reports each unit placed on it in the
//! state (and with the hash) asked for, with no systemd behind it, so that blocking commands
//! have states to wait for. What is tested is fleetctl and the API, never the agent.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::Next;
use fleet_client::Client;
use fleet_registry::{
    EtcdConfig, JobState, Machine, MachineId, Presence, PresenceStatus, Registry, UnitState,
};
use fleet_testkit::Etcd;
use fleet_units::{UnitHash, UnitName};

/// Units per batch: beyond the few for which fleetctl asks for each unit by name.
pub const UNITS: usize = 50;
/// fleetctl's shortest wait between two checks of the states it waits for.
pub const POLL: Duration = Duration::from_millis(20);

/// A fleetd's API on loopback over a private etcd, the engine, one simulated machine, and
/// every request the API received.
pub struct Fleet {
    _etcd: Etcd,
    _presence: Presence,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
    files: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What fleetctl did: exit code, stdout, stderr, and how long it took.
pub struct Run {
    pub code: Option<i32>,
    pub out: String,
    pub err: String,
    pub took: Duration,
}

impl Fleet {
    pub async fn start() -> Fleet {
        let etcd = Etcd::start();
        let registry = Registry::connect(&EtcdConfig {
            endpoints: vec![etcd.endpoint.clone()],
            prefix: etcd.prefix.clone(),
            request_timeout: Duration::from_secs(5),
            ..EtcdConfig::default()
        })
        .await
        .expect("registry");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let router = fleet_api::server::router(registry.clone(), "9.9.9", 100).layer(
            axum::middleware::from_fn(move |request: Request, next: Next| {
                let log = log.clone();
                async move {
                    if let Ok(mut log) = log.lock() {
                        log.push(format!("{} {}", request.method(), request.uri().path()));
                    }
                    next.run(request).await
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let mut tasks = vec![tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        })];

        let id = MachineId::parse(&format!("{:032x}", 1)).expect("machine id");
        let machine = Machine {
            id: id.clone(),
            public_ip: "10.0.0.1".into(),
            metadata: Default::default(),
            version: "test".into(),
            peer_address: None,
        };
        let presence = Presence::start(registry.clone(), machine, Duration::from_secs(30), None)
            .await
            .expect("register the machine");
        let PresenceStatus::Alive { lease } = presence.status() else {
            panic!("the machine fenced at once");
        };
        tasks.push(tokio::spawn(fleet_engine::run(
            registry.clone(),
            id.clone(),
            presence.subscribe(),
            fleet_engine::EngineConfig::default(),
        )));
        tasks.push(tokio::spawn(simulated_agent(registry, id, lease)));
        Fleet {
            _etcd: etcd,
            _presence: presence,
            tasks,
            endpoint,
            requests,
            files: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// Writes a unit file; returns its path as an argument of fleetctl.
    pub fn unit_file(&self, name: &str, contents: &str) -> String {
        let path: PathBuf = self.files.path().join(name);
        std::fs::write(&path, contents).expect("write a unit file");
        path.to_string_lossy().into_owned()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.endpoint, Duration::from_secs(5)).expect("client")
    }

    /// Runs fleetctl, counting from zero the requests the API receives meanwhile.
    pub async fn fleetctl(&self, args: &[String]) -> Run {
        if let Ok(mut log) = self.requests.lock() {
            log.clear();
        }
        let mut command = fleetctl_command();
        command.args(["--endpoint", &self.endpoint]).args(args);
        let began = Instant::now();
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("run fleetctl");
        Run {
            code: out.status.code(),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: began.elapsed(),
        }
    }

    /// The requests received since the last fleetctl started, counted by method and route
    /// (`GET /fleet/v1/units/{name}` for any name).
    pub fn requests(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for request in self.requests.lock().expect("request log").iter() {
            let route = match request.split_once("/fleet/v1/units/") {
                Some((method, _)) => format!("{method}/fleet/v1/units/{{name}}"),
                None => request.clone(),
            };
            *counts.entry(route).or_insert(0) += 1;
        }
        counts
    }

    /// Each unit's desired state, as the API shows it.
    pub async fn desired_states(&self) -> BTreeMap<String, String> {
        self.client()
            .units()
            .await
            .expect("list units")
            .into_iter()
            .map(|u| (u.name, u.desired_state))
            .collect()
    }
}

/// Reports each unit placed on machine `id` in the state its placement asks for, as an agent
/// would once systemd had done it (a unit whose command is `/bin/false` as failed), drops the
/// states of units no longer placed there, and says at once that it stopped what the engine
/// took off it.
pub async fn simulated_agent(registry: Registry, id: MachineId, lease: i64) {
    let mut published: BTreeMap<UnitName, (JobState, UnitHash)> = BTreeMap::new();
    loop {
        if let Ok(snapshot) = registry.agent_snapshot(&id).await {
            let failing: std::collections::BTreeSet<UnitName> = snapshot
                .placements
                .iter()
                .filter(|p| {
                    p.options
                        .iter()
                        .any(|o| o.name == "ExecStart" && o.value == "/bin/false")
                })
                .map(|p| p.name.clone())
                .collect();
            let here: BTreeMap<UnitName, (JobState, UnitHash)> = snapshot
                .placements
                .into_iter()
                .map(|p| (p.name.clone(), (p.desired_state, p.hash())))
                .collect();
            // What the engine took off this machine stops at once.
            let stopped: Vec<(UnitName, i64)> = snapshot
                .stopping
                .into_iter()
                .filter(|(name, _)| !here.contains_key(name))
                .collect();
            if !stopped.is_empty() {
                let _ = registry.release_stopping(&id, &stopped).await;
            }
            for (name, &(job_state, hash)) in &here {
                if published.get(name) == Some(&(job_state, hash)) {
                    continue;
                }
                let running = job_state == JobState::Launched;
                // A unit whose command is /bin/false fails, as systemd would say.
                let fails = running && failing.contains(name);
                let (active, sub) = match (running, fails) {
                    (true, true) => ("failed", "failed"),
                    (true, false) => ("active", "running"),
                    _ => ("inactive", "dead"),
                };
                let state = UnitState {
                    name: name.clone(),
                    hash,
                    machine_id: id.clone(),
                    job_state,
                    systemd_load_state: "loaded".into(),
                    systemd_active_state: active.into(),
                    systemd_sub_state: sub.into(),
                    start_failure: None,
                    health: None,
                };
                if registry.publish_state(lease, &state).await.is_ok() {
                    published.insert(name.clone(), (job_state, hash));
                }
            }
            let gone: Vec<UnitName> = published
                .keys()
                .filter(|name| !here.contains_key(*name))
                .cloned()
                .collect();
            for name in gone {
                if registry.remove_state(&id, &name).await.is_ok() {
                    published.remove(&name);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn service(description: &str) -> String {
    format!("[Unit]\nDescription={description}\n\n[Service]\nExecStart=/bin/sleep infinity\n")
}

/// `UNITS` names in an order that is not theirs sorted, so that printing in argument order
/// cannot pass for printing sorted.
pub fn shuffled(stem: &str) -> Vec<String> {
    (0..UNITS)
        .map(|i| format!("{stem}-{:02}.service", (i * 7 + 3) % UNITS))
        .collect()
}

pub fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// fleetctl, without the `FLEETCTL_*` variables of the environment the tests run in: a
/// developer's shell may hold the local cluster's (`fleet-cluster env`), which would point the
/// tests' fleetctl at it, or give a certificate to a plain-HTTP test API.
pub fn fleetctl_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FLEETCTL_") {
            command.env_remove(name);
        }
    }
    command
}
