//! The engine while units are held (members whose lease is gone, not yet declared dead), against
//! a real etcd: it plans from its memo, the lost machine and the changes meanwhile alike, never
//! the whole cluster; and when a held unit is placed twice (which leaves it no memo), it plans
//! the whole cluster again only when something changed, not at every look it takes while it
//! waits.

mod support;

use std::time::Duration;

use fleet_telemetry::ENGINE_WHOLE_PLANS;
use fleet_testkit::Etcd;
use fleet_units::UnitName;
use support::{all_placed, connect, eventually, id, presences, spawn_engine, unit, write_units};

// The only test of this file: the count of whole plans is the process's.
#[tokio::test(flavor = "multi_thread")]
async fn while_units_are_held_the_engine_plans_again_only_on_a_change() {
    let etcd = Etcd::start();
    let registry = connect(&etcd).await;
    let mut presences = presences(&registry, 2, Duration::from_secs(2)).await;
    write_units(&registry, 6).await;
    let engine = spawn_engine(
        registry.clone(),
        &presences[0],
        // The engine reads the cluster again (and plans it whole) every 30 of these: not
        // within this test.
        fleet_engine::EngineConfig {
            reconcile_interval: Duration::from_secs(10),
            ..fleet_engine::EngineConfig::default()
        },
    );
    all_placed(&registry, 6).await;

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
    let before = ENGINE_WHOLE_PLANS.get();
    presences.truncate(1);
    eventually("machine 2 gone", || async {
        registry.machines().await.expect("read").len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let planned = ENGINE_WHOLE_PLANS.get() - before;
    assert_eq!(
        planned, 0,
        "whole plans for a lease gone and 3 s of units held"
    );
    let snapshot = registry.engine_snapshot().await.expect("read");
    assert_eq!(
        snapshot.members.len(),
        2,
        "the lost machine was declared dead"
    );
    assert_eq!(on_two(&snapshot), held, "held units were moved");

    // A change is planned at once, from the memo: a new unit goes to the one live machine.
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
    assert_eq!(
        ENGINE_WHOLE_PLANS.get(),
        before,
        "the new unit planned whole"
    );

    // A held unit placed on machine 1 too (the registry refuses it: written by hand here):
    // a change the memo does not decide, planned whole once; its plan leaves no memo, and
    // the looks that follow plan nothing.
    let twice = &held[0];
    let placement = fleet_registry::Placement::for_unit(&unit(twice.as_str()));
    let value = serde_json::to_vec(&placement).expect("encode");
    etcd.put_raw(&format!("placements/{}/{twice}", id(1)), &value)
        .await;
    etcd.put_raw(&format!("placed/{twice}/{}", id(1)), b"")
        .await;
    eventually("the change planned", || async {
        ENGINE_WHOLE_PLANS.get() > before
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let planned = ENGINE_WHOLE_PLANS.get() - before;
    assert_eq!(
        planned, 1,
        "whole plans for one change and 3 s of units held"
    );
    let snapshot = registry.engine_snapshot().await.expect("read");
    assert_eq!(on_two(&snapshot), held, "held units were moved");
    engine.abort();
}
