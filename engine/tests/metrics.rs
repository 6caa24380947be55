//! The engine's metrics, against a real etcd: leadership, placements written and reconcile
//! durations are counted as the engine works.

mod support;

use std::time::Duration;

use fleet_telemetry::{ENGINE_LEADER, ENGINE_PLACEMENTS, ENGINE_RECONCILE};
use fleet_testkit::Etcd;
use support::{connect, present, spawn_engine, write_units};

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not so in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_reports_leadership_placements_and_reconciliations() {
    let etcd = Etcd::start();
    let registry = connect(&etcd).await;
    let presence = present(&registry, 1, Duration::from_secs(10)).await;
    write_units(&registry, 3).await;
    assert_eq!(ENGINE_LEADER.get(), 0);
    let placed_before = ENGINE_PLACEMENTS.get();
    let engine = spawn_engine(
        registry.clone(),
        &presence,
        fleet_engine::EngineConfig::default(),
    );
    eventually("the engine leads", || ENGINE_LEADER.get() == 1).await;
    eventually("three placements are counted", || {
        ENGINE_PLACEMENTS.get() >= placed_before + 3
    })
    .await;
    assert_eq!(registry.placements().await.expect("placements").len(), 3);
    eventually("a reconciliation is timed", || {
        ENGINE_RECONCILE.count() >= 1
    })
    .await;
    assert!(ENGINE_RECONCILE.sum() > 0.0);

    engine.abort();
    let ended = engine.await;
    assert!(
        ended.as_ref().is_err_and(|e| e.is_cancelled()),
        "the engine ran until it was stopped: {ended:?}"
    );
    assert_eq!(ENGINE_LEADER.get(), 0, "a stopped engine does not lead");
    drop(presence);
}
