//! The leading engine against a real etcd: once it has read the cluster, it handles each change
//! from the change itself, reading nothing again, however many units there are.

mod support;

use std::time::Duration;

use fleet_registry::{Registry, Unit};
use fleet_testkit::Etcd;
use support::{connect, presences, present, spawn_engine};
use tokio::time::Instant;

const UNITS: usize = 300;

fn unit(n: usize) -> Unit {
    support::unit(&format!("u{n}.service"))
}

/// Waits until `count` units are placed, read through the test's own registry.
async fn placed(observer: &Registry, count: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let now = observer.placements().await.expect("placements").len();
        if now >= count {
            return;
        }
        assert!(
            Instant::now() < until,
            "{now} of {count} units placed in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_handles_a_change_without_reading_the_cluster_again() {
    let etcd = Etcd::start();
    // The engine's registry counts the keys the engine reads; the test reads through another.
    let engine_registry = connect(&etcd).await;
    let observer = connect(&etcd).await;
    let presences = presences(&observer, 3, Duration::from_secs(10)).await;
    for n in 0..UNITS {
        observer.put_unit(&unit(n)).await.expect("put unit");
    }
    let engine = spawn_engine(
        engine_registry.clone(),
        &presences[0],
        fleet_engine::EngineConfig {
            // A full read every 30 s (`FULL_READ_EVERY`): none in this test's time.
            reconcile_interval: Duration::from_secs(1),
            ..fleet_engine::EngineConfig::default()
        },
    );
    placed(&observer, UNITS).await;
    let read_to_start = engine_registry.keys_read();
    assert!(
        read_to_start >= UNITS as u64,
        "the engine read the cluster once: {read_to_start} keys"
    );

    // New units one by one, and several reconcile periods: nothing is read again.
    for n in UNITS..UNITS + 5 {
        observer.put_unit(&unit(n)).await.expect("put unit");
        placed(&observer, n + 1).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        engine_registry.keys_read(),
        read_to_start,
        "the engine read keys again to handle a change"
    );
    engine.abort();
    drop(presences);
}

/// The safety net behind the view: every `FULL_READ_EVERY` reconcile intervals the leader
/// reads the cluster from etcd again, even when nothing changed.
#[tokio::test(flavor = "multi_thread")]
async fn the_engine_reads_the_cluster_again_now_and_then() {
    let etcd = Etcd::start();
    let engine_registry = connect(&etcd).await;
    let observer = connect(&etcd).await;
    let presence = present(&observer, 1, Duration::from_secs(10)).await;
    for n in 0..20 {
        observer.put_unit(&unit(n)).await.expect("put unit");
    }
    let interval = Duration::from_millis(50);
    let engine = spawn_engine(
        engine_registry.clone(),
        &presence,
        fleet_engine::EngineConfig {
            reconcile_interval: interval,
            ..fleet_engine::EngineConfig::default()
        },
    );
    placed(&observer, 20).await;
    let first = engine_registry.keys_read();
    let until = Instant::now() + interval * fleet_engine::FULL_READ_EVERY * 10;
    while engine_registry.keys_read() == first {
        assert!(
            Instant::now() < until,
            "no full read in ten times its period"
        );
        tokio::time::sleep(interval).await;
    }
    engine.abort();
    drop(presence);
}
