//! fleetctl on many units at once, against the real API over a real etcd with the real engine
//! placing the units: how many requests fleetd receives, the order of what fleetctl prints,
//! and the first error ending the command.
//!
//! The one machine is a simulation: a registered presence whose "agent" reports each unit
//! placed on it in the state asked for, with no systemd behind it, so that blocking commands
//! have states to wait for. What is tested is fleetctl and the API, never the agent.

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
const UNITS: usize = 50;
/// fleetctl's shortest wait between two checks of the states it waits for.
const POLL: Duration = Duration::from_millis(20);

/// A fleetd's API on loopback over a private etcd, the engine, one simulated machine, and
/// every request the API received.
struct Fleet {
    _etcd: Etcd,
    _presence: Presence,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: String,
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
struct Run {
    code: Option<i32>,
    out: String,
    err: String,
    took: Duration,
}

impl Fleet {
    async fn start() -> Fleet {
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
    fn unit_file(&self, name: &str, contents: &str) -> String {
        let path: PathBuf = self.files.path().join(name);
        std::fs::write(&path, contents).expect("write a unit file");
        path.to_string_lossy().into_owned()
    }

    fn client(&self) -> Client {
        Client::new(&self.endpoint, Duration::from_secs(5)).expect("client")
    }

    /// Runs fleetctl, counting from zero the requests the API receives meanwhile.
    async fn fleetctl(&self, args: &[String]) -> Run {
        if let Ok(mut log) = self.requests.lock() {
            log.clear();
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
        command
            .env_remove("FLEETCTL_ENDPOINT")
            .args(["--endpoint", &self.endpoint])
            .args(args);
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
    fn requests(&self) -> BTreeMap<String, usize> {
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
    async fn desired_states(&self) -> BTreeMap<String, String> {
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
/// would once systemd had done it, and drops the states of units no longer placed there.
async fn simulated_agent(registry: Registry, id: MachineId, lease: i64) {
    let mut published: BTreeMap<UnitName, (JobState, UnitHash)> = BTreeMap::new();
    loop {
        if let Ok(placements) = registry.placements().await {
            let here: BTreeMap<UnitName, (JobState, UnitHash)> = placements
                .into_iter()
                .filter(|(machine, _)| *machine == id)
                .map(|(_, p)| (p.name.clone(), (p.desired_state, p.hash())))
                .collect();
            for (name, &(job_state, hash)) in &here {
                if published.get(name) == Some(&(job_state, hash)) {
                    continue;
                }
                let running = job_state == JobState::Launched;
                let state = UnitState {
                    name: name.clone(),
                    hash,
                    machine_id: id.clone(),
                    job_state,
                    systemd_load_state: "loaded".into(),
                    systemd_active_state: if running { "active" } else { "inactive" }.into(),
                    systemd_sub_state: if running { "running" } else { "dead" }.into(),
                    start_failure: None,
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

fn service(description: &str) -> String {
    format!("[Unit]\nDescription={description}\n\n[Service]\nExecStart=/bin/sleep infinity\n")
}

/// `UNITS` names in an order that is not theirs sorted, so that printing in argument order
/// cannot pass for printing sorted.
fn shuffled(stem: &str) -> Vec<String> {
    (0..UNITS)
        .map(|i| format!("{stem}-{:02}.service", (i * 7 + 3) % UNITS))
        .collect()
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn many_units_are_started_and_destroyed_with_at_most_two_requests_each() {
    let fleet = Fleet::start().await;
    let names = shuffled("batch");
    let paths: Vec<String> = names
        .iter()
        .map(|n| fleet.unit_file(n, &service(n)))
        .collect();

    // A blocking start: submitted with its desired state in one request per unit, then
    // waited for by one listing per check.
    let mut args = vec!["start".to_string()];
    args.extend(paths.iter().cloned());
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    assert_eq!(run.err, "");
    let mut printed = lines(&run.out);
    printed.sort();
    let mut expected: Vec<String> = names
        .iter()
        .map(|n| format!("Unit {n} launched on 00000000.../10.0.0.1"))
        .collect();
    expected.sort();
    assert_eq!(printed, expected);
    let requests = fleet.requests();
    let total: usize = requests.values().sum();
    eprintln!(
        "start of {UNITS} units (blocking, {:?}): {total} requests: {requests:?}",
        run.took
    );
    assert_eq!(requests.get("PUT /fleet/v1/units/{name}"), Some(&UNITS));
    assert!(requests.get("GET /fleet/v1/machines") <= Some(&1));
    // One listing to learn what exists, then one request per check (checks being at least
    // POLL apart): a listing, or a GET when one unit is left to wait for.
    let checks = (run.took.as_millis() / POLL.as_millis()) as usize + 1;
    let listings = requests.get("GET /fleet/v1/units").copied().unwrap_or(0);
    let asked = requests
        .get("GET /fleet/v1/units/{name}")
        .copied()
        .unwrap_or(0);
    assert!(listings >= 1 && asked <= checks, "{requests:?}");
    assert!(
        listings + asked <= 1 + checks,
        "{requests:?} in {:?}",
        run.took
    );
    assert!(total <= 2 * UNITS + checks, "{requests:?}");
    let desired = fleet.desired_states().await;
    assert_eq!(desired.len(), UNITS);
    assert!(desired.values().all(|d| d == "launched"), "{desired:?}");

    // destroy: one listing, one request per unit, lines in argument order.
    let mut args = vec!["destroy".to_string()];
    args.extend(names.iter().cloned());
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let expected: Vec<String> = names.iter().map(|n| format!("Destroyed {n}")).collect();
    assert_eq!(lines(&run.out), expected);
    let requests = fleet.requests();
    eprintln!("destroy of {UNITS} units: {requests:?}");
    assert_eq!(requests.get("DELETE /fleet/v1/units/{name}"), Some(&UNITS));
    assert_eq!(requests.get("GET /fleet/v1/units"), Some(&1));
    assert_eq!(requests.values().sum::<usize>(), UNITS + 1);
    assert!(fleet.desired_states().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn output_follows_the_arguments_whatever_order_the_answers_come_in() {
    let fleet = Fleet::start().await;
    // Every tenth a global unit; one already in the cluster with other content.
    let names = shuffled("order");
    let changed = &names[17];
    fleet
        .client()
        .create_unit(&fleet_client::schema::Unit {
            name: changed.clone(),
            options: fleet_units::UnitFile::parse(&service("as submitted before"))
                .expect("unit")
                .into_options(),
            ..Default::default()
        })
        .await
        .expect("submit a unit first");
    let global = |i: usize| i % 10 == 4;
    let paths: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let contents = if global(i) {
                format!("{}\n[X-Fleet]\nGlobal=true\n", service(n))
            } else {
                service(n)
            };
            fleet.unit_file(n, &contents)
        })
        .collect();
    let mut args = vec!["start".to_string(), "--no-block".to_string()];
    args.extend(paths.iter().cloned());
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    // Global units as their requests are done, then the others, each in argument order.
    let mut expected: Vec<String> = (0..UNITS)
        .filter(|&i| global(i))
        .map(|i| format!("Triggered global unit {} start", names[i]))
        .collect();
    expected.extend(
        (0..UNITS)
            .filter(|&i| !global(i))
            .map(|i| format!("Triggered unit {} start", names[i])),
    );
    assert_eq!(lines(&run.out), expected);
    assert_eq!(
        run.err,
        format!(
            "WARNING: Unit {changed} in registry differs from local unit file {}\n",
            paths[17]
        )
    );
    let requests = fleet.requests();
    eprintln!("start --no-block of {UNITS} units: {requests:?}");
    assert_eq!(requests.get("GET /fleet/v1/units"), Some(&1));
    assert_eq!(requests.get("PUT /fleet/v1/units/{name}"), Some(&UNITS));
    assert_eq!(requests.values().sum::<usize>(), UNITS + 1);
    let desired = fleet.desired_states().await;
    assert!(desired.values().all(|d| d == "launched"), "{desired:?}");

    // A few units are asked for by name: instances of a template in the cluster, the template
    // read once.
    let template = fleet.unit_file("web@.service", &service("web %i"));
    let run = fleet
        .fleetctl(&["submit".to_string(), template.clone()])
        .await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    std::fs::remove_file(&template).expect("remove the template's file");
    let instances: Vec<String> = [3, 1, 2].iter().map(|i| format!("web@{i}")).collect();
    let mut args = vec!["load".to_string(), "--no-block".to_string()];
    args.extend(instances.iter().cloned());
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let expected: Vec<String> = instances
        .iter()
        .map(|i| format!("Triggered unit {i}.service load"))
        .collect();
    assert_eq!(lines(&run.out), expected);
    let requests = fleet.requests();
    eprintln!("load --no-block of 3 instances: {requests:?}");
    // Each instance asked for (not there), the template once, and each created loaded.
    assert_eq!(requests.get("GET /fleet/v1/units/{name}"), Some(&4));
    assert_eq!(requests.get("PUT /fleet/v1/units/{name}"), Some(&3));
    assert_eq!(requests.values().sum::<usize>(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_error_ends_the_command_with_fleets_message() {
    let fleet = Fleet::start().await;

    // Refused before any request is sent: nothing after it is submitted, and the units before
    // it are created without their desired state.
    let names = shuffled("early");
    let mut args = vec!["start".to_string(), "--no-block".to_string()];
    for (i, name) in names.iter().enumerate() {
        if i == 25 {
            args.push("missing.service".into());
        }
        args.push(fleet.unit_file(name, &service(name)));
    }
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.out, "");
    assert_eq!(
        run.err,
        "Error creating units: unable to find Unit(missing.service) in Registry or on filesystem\n"
    );
    let desired = fleet.desired_states().await;
    let before: Vec<&String> = desired.keys().collect();
    let mut expected: Vec<&String> = names[..25].iter().collect();
    expected.sort();
    assert_eq!(before, expected, "only the units before it are submitted");
    // As fleet, which creates every unit before it sets any desired state: created, not started.
    assert!(
        desired.values().all(|d| d == "inactive"),
        "units before the error were started: {desired:?}"
    );

    // Refused by fleetd in the middle (a template may not be started): its message alone,
    // whatever the requests in flight beside it did.
    let names = shuffled("late");
    let mut args = vec!["start".to_string()];
    for (i, name) in names.iter().enumerate() {
        if i == 30 {
            args.push(fleet.unit_file("tmpl@.service", &service("a template")));
        }
        args.push(fleet.unit_file(name, &service(name)));
    }
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.out, "");
    assert_eq!(
        run.err,
        "Error starting units: unit tmpl@.service is a template: only its instances can be loaded or launched (HTTP 400)\n"
    );
    let desired = fleet.desired_states().await;
    for name in &names[..30] {
        assert_eq!(desired.get(name).map(String::as_str), Some("launched"));
    }
    assert_eq!(
        desired.get("tmpl@.service").map(String::as_str),
        Some("inactive")
    );

    // stop: a unit placed nowhere ends it with fleet's message, before anything after it is
    // asked for.
    let until = Instant::now() + Duration::from_secs(20);
    while fleet
        .client()
        .unit(&names[0])
        .await
        .expect("read a unit")
        .is_none_or(|u| u.current_state != "launched")
    {
        assert!(Instant::now() < until, "{} never launched", names[0]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = fleet
        .fleetctl(&[
            "stop".into(),
            "--no-block".into(),
            names[0].clone(),
            "tmpl@.service".into(),
            names[1].clone(),
        ])
        .await;
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.err,
        "Unable to stop unit tmpl@.service in state inactive\n"
    );
    let desired = fleet.desired_states().await;
    assert_eq!(desired.get(&names[1]).map(String::as_str), Some("launched"));
}
