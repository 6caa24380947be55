//! The leading engine records what it decided as events, against a real etcd: each unit placed
//! with why there, and a unit it cannot place once per change of its reasons, not once per
//! pass, with a line per machine, or past sixteen machines a line per reason.

mod support;

use std::time::Duration;

use fleet_registry::{Event, EventFilter, EventKind, JobState, Presence, Registry, Unit};
use fleet_testkit::Etcd;
use fleet_units::{UnitName, UnitOption};
use support::{connect, id, presences, spawn_engine};
use tokio::time::Instant;

fn unit(name: &str, xfleet: &[(&str, &str)]) -> Unit {
    let mut unit = support::unit(name);
    unit.options.extend(
        xfleet
            .iter()
            .map(|(key, value)| UnitOption::new("X-Fleet", *key, *value)),
    );
    unit
}

/// Registered machines and the engine on the first one's lease, planning every `interval`.
struct Cluster {
    registry: Registry,
    engine: tokio::task::JoinHandle<()>,
    _presences: Vec<Presence>,
    _etcd: Etcd,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.engine.abort();
    }
}

/// Two registered machines and the engine ([`Cluster`]).
async fn cluster(interval: Duration) -> Cluster {
    cluster_of(2, interval).await
}

/// `machines` registered machines and the engine ([`Cluster`]).
async fn cluster_of(machines: u8, interval: Duration) -> Cluster {
    let etcd = Etcd::start();
    let registry = connect(&etcd).await;
    let presences = presences(&registry, machines, Duration::from_secs(10)).await;
    let engine = spawn_engine(
        connect(&etcd).await,
        &presences[0],
        fleet_engine::EngineConfig {
            reconcile_interval: interval,
            ..fleet_engine::EngineConfig::default()
        },
    );
    Cluster {
        registry,
        engine,
        _presences: presences,
        _etcd: etcd,
    }
}

/// The events of `unit`, once there are at least `count` of them.
async fn events_of(registry: &Registry, unit: &str, count: usize) -> Vec<Event> {
    let filter = EventFilter {
        unit: Some(UnitName::parse(unit).expect("name")),
        machine: None,
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let page = registry.events(&filter, None, 100).await.expect("events");
        if page.events.len() >= count {
            return page.events;
        }
        assert!(
            Instant::now() < until,
            "events of {unit}: {:?}",
            page.events
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_placement_is_recorded_with_why_there() {
    let c = cluster(Duration::from_secs(1)).await;
    c.registry
        .put_unit(&unit("plain.service", &[]))
        .await
        .expect("put");
    let plain = events_of(&c.registry, "plain.service", 1).await;
    let [placed] = plain.as_slice() else {
        panic!("{plain:?}");
    };
    assert_eq!(placed.kind, EventKind::Placed);
    assert_eq!(placed.machine, Some(id(1)));
    assert_eq!(placed.message, "least loaded of 2 machines (load 0)");
    // Recorded by the engine's machine.
    assert_eq!(placed.source, Some(id(1)));

    let pinned = id(2).to_string();
    c.registry
        .put_unit(&unit("pinned.service", &[("MachineID", &pinned)]))
        .await
        .expect("put");
    let events = events_of(&c.registry, "pinned.service", 1).await;
    assert_eq!(kinds(&events), [EventKind::Placed]);
    assert_eq!(events[0].machine, Some(id(2)));
    assert_eq!(events[0].message, format!("MachineID={pinned}"));

    // A change of desired state moves nothing and places nothing anew.
    c.registry
        .set_desired_state(
            &UnitName::parse("plain.service").expect("name"),
            JobState::Loaded,
        )
        .await
        .expect("stop");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        kinds(&events_of(&c.registry, "plain.service", 1).await),
        [EventKind::Placed]
    );
}

/// A destroyed unit is taken off its machine, stopped there first: its event says so, not that
/// it moves elsewhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_destroyed_unit_is_recorded_as_stopped_not_as_moving() {
    let c = cluster(Duration::from_secs(1)).await;
    let name = UnitName::parse("gone.service").expect("name");
    c.registry
        .put_unit(&unit("gone.service", &[]))
        .await
        .expect("put");
    events_of(&c.registry, "gone.service", 1).await;
    c.registry.delete_unit(&name).await.expect("destroy");
    let events = events_of(&c.registry, "gone.service", 2).await;
    assert_eq!(kinds(&events), [EventKind::Placed, EventKind::Moved]);
    assert_eq!(
        events[1].message,
        "taken off this machine (destroyed or unloaded): stopped here"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unit_that_cannot_be_placed_is_recorded_once_per_change_of_its_reasons() {
    // Many passes in the time of the test.
    let c = cluster(Duration::from_millis(50)).await;
    c.registry
        .put_unit(&unit("nowhere.service", &[("MachineMetadata", "role=db")]))
        .await
        .expect("put");
    let events = events_of(&c.registry, "nowhere.service", 1).await;
    assert_eq!(kinds(&events), [EventKind::Unplaceable]);
    assert_eq!(
        events[0].message,
        format!(
            "{}: metadata role=db not matched; {}: metadata role=db not matched",
            id(1).short(),
            id(2).short()
        )
    );
    assert_eq!(events[0].machine, None);
    // Twenty passes and a change of something else later, still one.
    c.registry
        .put_unit(&unit("other.service", &[]))
        .await
        .expect("put");
    events_of(&c.registry, "other.service", 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        kinds(&events_of(&c.registry, "nowhere.service", 1).await),
        [EventKind::Unplaceable]
    );

    // Machine 2 takes the role: the unit is placed there, and says why there.
    let role = [("role".to_string(), Some("db".to_string()))].into();
    assert!(c
        .registry
        .patch_machine_metadata(&id(2), &role)
        .await
        .expect("patch"));
    let events = events_of(&c.registry, "nowhere.service", 2).await;
    assert_eq!(kinds(&events), [EventKind::Unplaceable, EventKind::Placed]);
    assert_eq!(events[1].machine, Some(id(2)));
    assert_eq!(events[1].message, "least loaded of 2 machines (load 0)");
}

#[tokio::test(flavor = "multi_thread")]
async fn past_sixteen_machines_a_unit_that_cannot_be_placed_is_given_a_line_per_reason() {
    let c = cluster_of(20, Duration::from_secs(10)).await;
    // (These machines' short ids are all alike, `00000000`: which three the line names, and
    // in what order, the plan's own tests check.)
    let name = UnitName::parse("nowhere.service").expect("name");
    c.registry
        .put_unit(&unit(name.as_str(), &[("MachineMetadata", "role=db")]))
        .await
        .expect("put");
    let line = format!(
        "{}, {}, {} and 17 more: metadata role=db not matched",
        id(1).short(),
        id(2).short(),
        id(3).short()
    );
    let events = events_of(&c.registry, name.as_str(), 1).await;
    assert_eq!(kinds(&events), [EventKind::Unplaceable]);
    assert_eq!(events[0].message, line);
    let recorded = c
        .registry
        .engine_snapshot()
        .await
        .expect("read")
        .unplaceable;
    assert_eq!(recorded.get(&name), Some(&vec![line]));
}
