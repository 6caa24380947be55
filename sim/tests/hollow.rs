//! Hollow machines with the real engine, in-process, against a real etcd: units written
//! through the registry (as the API writes them) are placed once, started by the real agents
//! on their simulated systemds and reported active; a machine powered off has its units moved
//! without any of them ever running on two machines; a start that fails is reported failed.
//! What the engine and the agents decided is recorded as events.
//!
//! A simulation: nothing here says anything about systemd, only about the registry, the
//! engine and the agent loop.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_registry::{
    EtcdConfig, Event, EventFilter, EventKind, JobState, MachineId, Registry, Unit, UnitState,
};
use fleet_sim::{SimConfig, Simulation};
use fleet_testkit::{Etcd, TempDir};
use fleet_units::{UnitName, UnitOption};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

struct Cluster {
    registry: Registry,
    simulation: Simulation,
    /// The machine whose lease the engine campaigns on.
    engine_machine: MachineId,
    engine: tokio::task::JoinHandle<()>,
    _dir: TempDir,
    etcd: Etcd,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.engine.abort();
    }
}

/// `machines` hollow machines and the real engine on the first one's lease.
async fn cluster(machines: u32) -> Cluster {
    cluster_configured(machines, |_| {}).await
}

/// The same, with simulated jobs that take `state_delay`.
async fn cluster_with(machines: u32, state_delay: Duration) -> Cluster {
    cluster_configured(machines, |config| config.state_delay = state_delay).await
}

/// The same, with the simulation's configuration changed by `configure`.
async fn cluster_configured(machines: u32, configure: impl FnOnce(&mut SimConfig)) -> Cluster {
    let etcd = Etcd::start();
    let registry = Registry::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: etcd.prefix.clone(),
        request_timeout: REQUEST_TIMEOUT,
        ..EtcdConfig::default()
    })
    .await
    .expect("registry");
    let dir = TempDir::new("fleet-sim");
    let mut config = SimConfig::new(machines, dir.path().to_path_buf());
    config.ttl = TTL;
    config.state_delay = Duration::from_millis(20);
    configure(&mut config);
    let simulation = Simulation::start(std::slice::from_ref(&registry), &config)
        .await
        .expect("simulated machines start");
    assert_eq!(simulation.len(), machines as usize);
    let first = simulation.machines().next().expect("a machine");
    let engine_machine = first.id().clone();
    let engine = tokio::spawn(fleet_engine::run(
        registry.clone(),
        engine_machine.clone(),
        first.presence(),
        fleet_engine::EngineConfig {
            reconcile_interval: Duration::from_secs(1),
            timing: fleet_quorum::Timing::for_ttl(TTL, REQUEST_TIMEOUT),
            witness: None,
        },
    ));
    Cluster {
        registry,
        simulation,
        engine_machine,
        engine,
        _dir: dir,
        etcd,
    }
}

fn unit(name: &str, extra: &[(&str, &str, &str)]) -> Unit {
    let mut options = vec![UnitOption::new("Service", "ExecStart", "/bin/true")];
    options.extend(extra.iter().map(|(s, k, v)| UnitOption::new(*s, *k, *v)));
    Unit {
        name: UnitName::parse(name).expect("unit name"),
        options,
        desired_state: JobState::Launched,
    }
}

/// Writes a plain unit for each of `names`, to be launched, as `fleetctl start` would.
async fn put_units(c: &Cluster, names: &[String]) {
    for name in names {
        c.registry
            .put_unit(&unit(name, &[]))
            .await
            .expect("put unit");
    }
}

/// Waits until `check` says nothing is wrong, and returns what it found; fails with its last
/// complaint after `within`.
async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let until = Instant::now() + within;
    loop {
        match check().await {
            Ok(found) => return found,
            Err(why) if Instant::now() >= until => panic!("not so in {within:?}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Every unit of `names` placed on exactly one live machine, running there and nowhere else
/// in the simulation, and reported `active` and `launched` by that machine. Returns where.
async fn all_running_once(
    c: &Cluster,
    names: &[String],
) -> Result<BTreeMap<String, MachineId>, String> {
    let placements = c.registry.placements().await.map_err(|e| e.to_string())?;
    let states = c.registry.unit_states().await.map_err(|e| e.to_string())?;
    let running = c.simulation.running().units();
    let mut placed: BTreeMap<String, Vec<MachineId>> = BTreeMap::new();
    for (machine, p) in placements {
        placed.entry(p.name.to_string()).or_default().push(machine);
    }
    let mut at = BTreeMap::new();
    for name in names {
        let machine = match placed.get(name).map(Vec::as_slice) {
            Some([m]) => m.clone(),
            other => return Err(format!("{name} placed on {other:?}")),
        };
        if c.simulation.machine(&machine).is_none() {
            return Err(format!("{name} placed on the powered-off {machine}"));
        }
        if running.get(name) != Some(&vec![machine.clone()]) {
            return Err(format!(
                "{name} runs on {:?}, placed on {machine}",
                running.get(name)
            ));
        }
        let reported = states.iter().any(|s: &UnitState| {
            s.name.as_str() == name && s.machine_id == machine && fleet_registry::reports_active(s)
        });
        if !reported {
            return Err(format!("{name} not reported active by {machine}"));
        }
        at.insert(name.clone(), machine);
    }
    Ok(at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_run_once_on_hollow_machines_and_move_when_one_is_powered_off() {
    let mut c = cluster(50).await;
    let names: Vec<String> = (0..100).map(|n| format!("hollow-{n}.service")).collect();
    put_units(&c, &names).await;
    let placed = eventually(Duration::from_secs(30), || all_running_once(&c, &names)).await;

    let victim = placed
        .values()
        .find(|m| **m != c.engine_machine)
        .cloned()
        .expect("a unit on a machine other than the engine's");
    let moving: Vec<String> = placed
        .iter()
        .filter(|(_, m)| **m == victim)
        .map(|(n, _)| n.clone())
        .collect();
    assert!(c.simulation.kill(&victim));
    let placed = eventually(TTL + Duration::from_secs(25), || {
        all_running_once(&c, &names)
    })
    .await;
    for name in &moving {
        assert_ne!(placed.get(name), Some(&victim), "{name} moved");
    }
    // Every simulated systemd told the tally each time a unit started or stopped running, all
    // along (the units moved, and each started once before).
    let running = c.simulation.running();
    assert!(running.transitions() >= (names.len() + moving.len()) as u64);
    let seen = running.double_runs();
    assert!(
        seen.is_empty(),
        "units ran on two machines at once: {seen:?}"
    );

    // The engine recorded the lost machine's declaration, with the units it released, and
    // placing each of them again elsewhere.
    let about_victim = events(
        &c.registry,
        EventFilter {
            machine: Some(victim.clone()),
            ..EventFilter::default()
        },
    )
    .await;
    let declared: Vec<&Event> = about_victim
        .iter()
        .filter(|e| e.kind == EventKind::DeclaredDead)
        .collect();
    assert_eq!(declared.len(), 1, "{about_victim:?}");
    assert!(
        declared[0]
            .message
            .contains(&format!("{} units released", moving.len())),
        "{}",
        declared[0].message
    );
    assert_eq!(declared[0].source.as_ref(), Some(&c.engine_machine));
    for name in &moving {
        let of_unit = events(&c.registry, unit_filter(name)).await;
        let placed_on: Vec<Option<&MachineId>> = of_unit
            .iter()
            .filter(|e| e.kind == EventKind::Placed)
            .map(|e| e.machine.as_ref())
            .collect();
        assert_eq!(placed_on.len(), 2, "{name}: {of_unit:?}");
        assert_eq!(placed_on[0], Some(&victim), "{name}");
        assert_eq!(placed_on[1], placed.get(name), "{name}");
    }
}

fn unit_filter(name: &str) -> EventFilter {
    EventFilter {
        unit: Some(UnitName::parse(name).expect("unit name")),
        ..EventFilter::default()
    }
}

/// Every event `filter` matches, oldest first.
async fn events(registry: &Registry, filter: EventFilter) -> Vec<Event> {
    registry
        .events(&filter, None, 10_000)
        .await
        .expect("events")
        .events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_in_the_simulation_is_reported_failed() {
    let c = cluster(3).await;
    c.registry
        .put_unit(&unit(
            "fails.service",
            &[("X-Simulation", "StartFails", "true")],
        ))
        .await
        .expect("put unit");
    c.registry
        .put_unit(&unit("works.service", &[]))
        .await
        .expect("put unit");
    let registry = &c.registry;
    eventually(Duration::from_secs(30), || async move {
        let states = registry.unit_states().await.map_err(|e| e.to_string())?;
        let state = |name: &str| states.iter().find(|s| s.name.as_str() == name).cloned();
        let failed = state("fails.service").ok_or("no state of fails.service")?;
        let works = state("works.service").ok_or("no state of works.service")?;
        if failed.job_state != JobState::Launched || failed.start_failure.is_none() {
            return Err(format!("fails.service: {failed:?}"));
        }
        if works.job_state != JobState::Launched || works.systemd_active_state != "active" {
            return Err(format!("works.service: {works:?}"));
        }
        assert_eq!(failed.systemd_active_state, "failed");
        assert!(works.start_failure.is_none());
        Ok(())
    })
    .await;
    // Placed by the engine, failed on its machine as recorded by that machine's agent.
    let recorded = eventually(Duration::from_secs(10), || async {
        let recorded = events(registry, unit_filter("fails.service")).await;
        match recorded.len() {
            2 => Ok(recorded),
            _ => Err(format!("{recorded:?}")),
        }
    })
    .await;
    assert_eq!(
        recorded.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Placed, EventKind::StartFailed]
    );
    let machine = recorded[0].machine.clone().expect("placed on a machine");
    assert_eq!(recorded[1].machine.as_ref(), Some(&machine));
    assert_eq!(recorded[1].source.as_ref(), Some(&machine));
    assert!(!recorded[1].message.is_empty());
    let works = events(registry, unit_filter("works.service")).await;
    assert_eq!(
        works.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Placed]
    );
}

/// A unit file systemd refuses to link, among others loaded at the same time: the agent links
/// them all in one call, and when that call fails, one by one, so that only the refused unit
/// stays unloaded.
#[tokio::test(flavor = "multi_thread")]
async fn a_unit_file_that_cannot_be_linked_does_not_hold_up_the_others() {
    let c = cluster(1).await;
    c.registry
        .put_unit(&unit(
            "refused.service",
            &[("X-Simulation", "LinkFails", "true")],
        ))
        .await
        .expect("put unit");
    for n in 0..20 {
        c.registry
            .put_unit(&unit(&format!("fine-{n:02}.service"), &[]))
            .await
            .expect("put unit");
    }
    let registry = &c.registry;
    eventually(Duration::from_secs(30), || async move {
        let states = registry.unit_states().await.map_err(|e| e.to_string())?;
        let active = states
            .iter()
            .filter(|s| s.name.as_str().starts_with("fine-") && s.systemd_active_state == "active")
            .count();
        if active < 20 {
            return Err(format!("{active} of 20 units active"));
        }
        if let Some(refused) = states.iter().find(|s| s.name.as_str() == "refused.service") {
            return Err(format!("the refused unit has a state: {refused:?}"));
        }
        Ok(())
    })
    .await;
}

/// etcd stops answering (paused) for longer than the lease: the hollow machine fences itself,
/// which its agent records at once, keeps while etcd does not answer, and writes once etcd
/// answers again, with its coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_that_fences_records_it_once_etcd_answers_again() {
    let c = cluster(1).await;
    let names = vec!["kept.service".to_string()];
    c.registry
        .put_unit(&unit(&names[0], &[]))
        .await
        .expect("put unit");
    let placed = eventually(Duration::from_secs(30), || all_running_once(&c, &names)).await;
    let machine = placed[&names[0]].clone();
    let mut presence = c
        .simulation
        .machine(&machine)
        .expect("the machine")
        .presence();

    c.etcd.pause();
    let fenced = tokio::time::timeout(TTL * 4, async {
        while !matches!(
            *presence.borrow_and_update(),
            fleet_registry::PresenceStatus::Fenced
        ) {
            if presence.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    c.etcd.resume();
    assert_eq!(fenced, Ok(true), "the machine fenced while etcd was paused");

    let about = eventually(Duration::from_secs(30), || async {
        let about: Vec<Event> = events(
            &c.registry,
            EventFilter {
                machine: Some(machine.clone()),
                ..EventFilter::default()
            },
        )
        .await
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Fenced | EventKind::Unfenced))
        .collect();
        match about.len() {
            2 => Ok(about),
            _ => Err(format!("{about:?}")),
        }
    })
    .await;
    assert_eq!(
        about.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Fenced, EventKind::Unfenced]
    );
    // Recorded when the agent saw it fence (which a slow etcd request may delay past the
    // resume), written once etcd answered.
    assert!(about[0].time <= about[1].time);
    assert!(
        about[0]
            .message
            .contains("stopping its non-global units (1)"),
        "{}",
        about[0].message
    );
    assert!(about.iter().all(|e| e.source.as_ref() == Some(&machine)));
}

/// The stored unit states, by key, and how many times each was written.
async fn state_writes(c: &Cluster) -> BTreeMap<String, (i64, String)> {
    let prefix = format!("{}states/", c.etcd.prefix);
    c.etcd
        .key_space()
        .await
        .keys
        .into_iter()
        .filter(|k| k.key.starts_with(prefix.as_bytes()))
        .map(|k| {
            let value = String::from_utf8_lossy(&k.value).into_owned();
            (
                String::from_utf8_lossy(&k.key).into_owned(),
                (k.version, value),
            )
        })
        .collect()
}

/// A unit whose start ends within `PUBLISH_HOLD` has its state written once, with the outcome;
/// one whose start takes longer has the step it is at published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_start_writes_its_state_once_and_a_slow_one_shows_its_steps() {
    let c = cluster(3).await;
    let names: Vec<String> = (0..12).map(|n| format!("quick-{n}.service")).collect();
    put_units(&c, &names).await;
    eventually(Duration::from_secs(30), || all_running_once(&c, &names)).await;
    let writes = state_writes(&c).await;
    assert_eq!(writes.len(), names.len(), "{writes:?}");
    for (key, (version, value)) in &writes {
        assert_eq!(*version, 1, "{key} written {version} times, last {value}");
    }
    drop(c);

    let c = cluster_with(2, Duration::from_secs(3)).await;
    let name = "slow.service".to_string();
    c.registry
        .put_unit(&unit(&name, &[]))
        .await
        .expect("put unit");
    eventually(Duration::from_secs(10), || async {
        let writes = state_writes(&c).await;
        match writes.values().next() {
            Some((_, value)) if value.contains("\"activating\"") => Ok(()),
            other => Err(format!("no activating state published yet: {other:?}")),
        }
    })
    .await;
    eventually(Duration::from_secs(15), || {
        all_running_once(&c, std::slice::from_ref(&name))
    })
    .await;
}

/// How many watch streams etcd has begun, by its own count.
async fn watch_streams_started(etcd: &Etcd) -> f64 {
    let url = format!("{}/metrics", etcd.endpoint);
    let text = reqwest::get(&url)
        .await
        .expect("etcd's metrics")
        .text()
        .await
        .expect("etcd's metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_started_total{") && l.contains("grpc_method=\"Watch\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An agent's periodic resync reads its placements again and keeps its watch: resyncs with
/// nothing changing begin no watch stream, and the kept watches still bring new placements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_keep_the_agents_watches_which_still_bring_placements() {
    const RESYNC: Duration = Duration::from_millis(200);
    let c = cluster_configured(3, |config| config.resync_interval = RESYNC).await;
    let first: Vec<String> = (0..6).map(|n| format!("before-{n}.service")).collect();
    put_units(&c, &first).await;
    eventually(Duration::from_secs(30), || all_running_once(&c, &first)).await;
    // Quiet: every agent resyncs about ten times.
    let before = watch_streams_started(&c.etcd).await;
    tokio::time::sleep(RESYNC * 10).await;
    let after = watch_streams_started(&c.etcd).await;
    assert_eq!(after, before, "watch streams begun by resyncs");
    let second: Vec<String> = (0..6).map(|n| format!("after-{n}.service")).collect();
    put_units(&c, &second).await;
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    eventually(Duration::from_secs(30), || all_running_once(&c, &all)).await;
}

/// Each state an agent writes is conditioned on the revision it knows the key at, so that a
/// write of its own that timed out and is applied late cannot put an older state back. A key
/// written behind its back (here by a stray client, the same value again) makes its next
/// write refused: the agent reads what etcd holds and writes again soon, not at its next
/// resync (an hour here), though nothing else changes on the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_write_refused_is_made_again_over_what_etcd_holds() {
    let c = cluster_configured(1, |config| {
        config.resync_interval = Duration::from_secs(3600)
    })
    .await;
    let name = "crashes.service".to_string();
    put_units(&c, std::slice::from_ref(&name)).await;
    let at = eventually(Duration::from_secs(30), || {
        all_running_once(&c, std::slice::from_ref(&name))
    })
    .await;
    let machine = &at[&name];
    let key = format!("states/{machine}/{name}");
    let (_, (_, value)) = state_writes(&c)
        .await
        .into_iter()
        .find(|(k, _)| k.ends_with(&key))
        .expect("the unit's state");
    c.etcd.put_raw(&key, value.as_bytes()).await;

    let crashed = c
        .simulation
        .machine(machine)
        .expect("the unit's machine")
        .systemd()
        .exit(&name, 1);
    assert!(crashed, "{name} was not running");
    eventually(Duration::from_secs(20), || async {
        let writes = state_writes(&c).await;
        match writes.iter().find(|(k, _)| k.ends_with(&key)) {
            Some((_, (_, value))) if value.contains("\"systemdActiveState\":\"failed\"") => Ok(()),
            other => Err(format!("the crash not published: {other:?}")),
        }
    })
    .await;
}

/// A global unit on 600 hollow machines, updated 100 at a time (more machines than an update
/// took before its machines were listed apart from its record): each machine is given the new
/// content and reported running it, then the unit's own content is written, and the update
/// is done. Its record stays small at every step, and its machine lists are written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_unit_on_six_hundred_hollow_machines_is_updated_a_hundred_at_a_time() {
    use fleet_registry::{Layout, PreviousContent, Update, UpdateState, UpdateUnit};
    const MACHINES: usize = 600;
    let c = cluster(MACHINES as u32).await;
    let name = UnitName::parse("monitor.service").expect("unit name");
    let old = unit("monitor.service", &[("X-Fleet", "Global", "true")]);
    c.registry.put_unit(&old).await.expect("put unit");
    let running_everywhere = |want: fleet_units::UnitHash| {
        let c = &c;
        async move {
            let states = c.registry.unit_states().await.map_err(|e| e.to_string())?;
            let running = states
                .iter()
                .filter(|s| s.name.as_str() == "monitor.service")
                .filter(|s| s.hash == want && fleet_registry::reports_active(s))
                .count();
            if running == MACHINES {
                Ok(())
            } else {
                Err(format!("{running} machines report it running {want}"))
            }
        }
    };
    eventually(Duration::from_secs(60), || running_everywhere(old.hash())).await;

    // What the API asks for: every machine that runs it, in id order, then its own content.
    let mut machines: Vec<MachineId> = c
        .registry
        .unit_machines(&name)
        .await
        .expect("its machines")
        .expect("the unit")
        .machines
        .into_iter()
        .map(|m| m.id)
        .collect();
    machines.sort();
    assert_eq!(machines.len(), MACHINES);
    let new = unit(
        "monitor.service",
        &[("X-Fleet", "Global", "true"), ("Unit", "Description", "v2")],
    );
    let mut units: Vec<UpdateUnit> = machines
        .into_iter()
        .map(|m| UpdateUnit {
            machine: Some(m),
            global: true,
            ..UpdateUnit::pending(name.clone(), old.hash())
        })
        .collect();
    units.push(UpdateUnit {
        global: true,
        ..UpdateUnit::pending(name.clone(), old.hash())
    });
    let update = Update {
        id: "1a2b".into(),
        created_ms: 1,
        options: new.options.clone(),
        max_parallel: 100,
        min_healthy_ms: 0,
        healthy_deadline_ms: 60_000,
        auto_revert: false,
        state: UpdateState::Running,
        reason: None,
        ended_ms: None,
        units,
        previous: vec![PreviousContent {
            hash: old.hash(),
            options: old.options.clone(),
        }],
        stamped_by: 0,
    };
    c.registry
        .create_update(&update)
        .await
        .expect("update created");

    // Its record, at every step seen, and its machine list.
    let record_key = format!("{}updates/1a2b", c.etcd.prefix);
    let lists = format!("{}update-machines/1a2b/", c.etcd.prefix);
    let largest = std::sync::atomic::AtomicUsize::new(0);
    let done = eventually(Duration::from_secs(120), || {
        let c = &c;
        let (record_key, lists, largest) = (&record_key, &lists, &largest);
        async move {
            let keys = c.etcd.key_space().await.keys;
            if let Some(k) = keys.iter().find(|k| k.key == record_key.as_bytes()) {
                largest.fetch_max(k.value.len(), std::sync::atomic::Ordering::Relaxed);
            }
            let listed: Vec<_> = keys
                .iter()
                .filter(|k| k.key.starts_with(lists.as_bytes()))
                .collect();
            assert_eq!(listed.len(), 1, "600 machines in one list");
            assert_eq!(
                listed[0].mod_revision, listed[0].create_revision,
                "a machine list written again"
            );
            let stored = c
                .registry
                .update("1a2b")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no update")?;
            match stored.update.state {
                UpdateState::Done => Ok(stored),
                UpdateState::Running => Err(format!(
                    "{} of {} entries healthy",
                    stored
                        .update
                        .units
                        .iter()
                        .filter(|u| u.phase == fleet_registry::Phase::Healthy)
                        .count(),
                    stored.update.units.len()
                )),
                other => panic!("the update ended {other:?}: {:?}", stored.update.reason),
            }
        }
    })
    .await;
    assert_eq!(done.layout, Layout::Listed);
    let largest = largest.into_inner();
    // Some 40 bytes per machine in flight (100 at most), not 200 per machine (600).
    assert!(
        largest > 0 && largest < 8_000,
        "a record of {largest} bytes"
    );
    let own = c
        .registry
        .unit(&name)
        .await
        .expect("read")
        .expect("the unit");
    assert_eq!(own.hash(), new.hash());
    eventually(Duration::from_secs(30), || running_everywhere(new.hash())).await;
}
