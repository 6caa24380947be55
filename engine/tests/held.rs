//! The engine while units are held (members whose lease is gone, not yet declared dead), against
//! a real etcd: it plans the whole cluster again only when something changed, not at every
//! look it takes while it waits.

mod support;

use std::time::Duration;

use fleet_registry::{JobState, Machine, Presence, Unit};
use fleet_telemetry::ENGINE_WHOLE_PLANS;
use fleet_testkit::Etcd;
use fleet_units::{UnitName, UnitOption};
use support::{connect, id};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

fn unit(name: &str) -> Unit {
    Unit {
        name: UnitName::parse(name).expect("name"),
        options: vec![UnitOption::new("Service", "ExecStart", "/bin/true")],
        desired_state: JobState::Launched,
    }
}

async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < until, "{what}: not so in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn while_units_are_held_the_engine_plans_again_only_on_a_change() {
    let etcd = Etcd::start();
    let registry = connect(&etcd).await;
    let mut presences = Vec::new();
    for n in 1..=2u8 {
        let machine = Machine {
            id: id(n),
            public_ip: format!("10.0.0.{n}"),
            metadata: Default::default(),
            version: "test".into(),
            peer_address: None,
        };
        presences.push(
            Presence::start(registry.clone(), machine, Duration::from_secs(2), None)
                .await
                .expect("register"),
        );
    }
    for n in 0..6 {
        registry
            .put_unit(&unit(&format!("u{n}.service")))
            .await
            .expect("put unit");
    }
    let engine = tokio::spawn(fleet_engine::run(
        registry.clone(),
        id(1),
        presences[0].subscribe(),
        fleet_engine::EngineConfig {
            reconcile_interval: Duration::from_secs(1),
            ..fleet_engine::EngineConfig::default()
        },
    ));
    eventually("all units placed", || async {
        registry
            .engine_snapshot()
            .await
            .expect("read")
            .placements
            .len()
            == 6
    })
    .await;

    // Machine 2 powered off: its lease lapses, and machine 1 alone is no majority of the
    // two, so its units stay held while the engine looks again every half second.
    let on_two = |snapshot: &fleet_registry::EngineSnapshot| -> Vec<UnitName> {
        let mut names: Vec<UnitName> = snapshot
            .placements
            .iter()
            .filter(|(m, _)| *m == id(2))
            .map(|(_, p)| p.name.clone())
            .collect();
        names.sort();
        names
    };
    let held = on_two(&registry.engine_snapshot().await.expect("read"));
    assert!(!held.is_empty(), "nothing placed on machine 2");
    presences.truncate(1);
    eventually("machine 2 gone", || async {
        registry.machines().await.expect("read").len() == 1
    })
    .await;
    // The engine has seen it (it plans the held cluster once).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = ENGINE_WHOLE_PLANS.get();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let planned = ENGINE_WHOLE_PLANS.get() - before;
    assert!(
        planned <= 1,
        "{planned} whole plans in 3 s of units held and nothing changing"
    );
    let snapshot = registry.engine_snapshot().await.expect("read");
    assert_eq!(
        snapshot.members.len(),
        2,
        "the lost machine was declared dead"
    );
    assert_eq!(on_two(&snapshot), held, "held units were moved");

    // A change is planned at once: a new unit goes to the one live machine.
    let before = ENGINE_WHOLE_PLANS.get();
    registry
        .put_unit(&unit("new.service"))
        .await
        .expect("put unit");
    eventually("the new unit placed", || async {
        registry
            .engine_snapshot()
            .await
            .expect("read")
            .placements
            .iter()
            .any(|(m, p)| p.name.as_str() == "new.service" && *m == id(1))
    })
    .await;
    assert!(ENGINE_WHOLE_PLANS.get() > before);
    engine.abort();
}
