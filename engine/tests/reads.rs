//! The engine's periodic read of the whole cluster, against a real etcd: one that finds the
//! cluster as the engine's view had it keeps the memo (no whole plan), and what the view had
//! not yet reported when the read replaced it is still planned.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_engine::FULL_READ_EVERY;
use fleet_registry::Registry;
use fleet_telemetry::{ENGINE_CLUSTER_READS, ENGINE_WHOLE_PLANS};
use fleet_testkit::Etcd;
use fleet_units::UnitName;
use support::{connect, presences, spawn_engine, unit, write_units};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(30);
/// A read of the whole cluster every `FULL_READ_EVERY` of these: every 1.5 s.
const INTERVAL: Duration = Duration::from_millis(50);

/// The units placed.
async fn placed(registry: &Registry) -> BTreeSet<UnitName> {
    let snapshot = registry.engine_snapshot().await.expect("read");
    snapshot
        .placements
        .into_iter()
        .map(|(_, p)| p.name)
        .collect()
}

/// Waits until the engine has read the cluster `n` more times.
async fn reads(n: u64) {
    let until = Instant::now() + DEADLINE;
    let from = ENGINE_CLUSTER_READS.get();
    while ENGINE_CLUSTER_READS.get() < from + n {
        assert!(
            Instant::now() < until,
            "the engine did not read the cluster again"
        );
        tokio::time::sleep(INTERVAL).await;
    }
}

// The only test of this file: the counts of whole plans and reads are the process's.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_that_finds_the_cluster_unchanged_keeps_the_memo_and_what_was_unreported() {
    let etcd = Etcd::start();
    let registry = connect(&etcd).await;
    let presences = presences(&registry, 3, Duration::from_secs(10)).await;
    write_units(&registry, 6).await;
    let engine = spawn_engine(
        registry.clone(),
        &presences[0],
        fleet_engine::EngineConfig {
            reconcile_interval: INTERVAL,
            ..fleet_engine::EngineConfig::default()
        },
    );
    let until = Instant::now() + DEADLINE;
    while placed(&registry).await.len() < 6 {
        assert!(Instant::now() < until, "units not placed in time");
        tokio::time::sleep(INTERVAL).await;
    }
    assert!(INTERVAL * FULL_READ_EVERY <= Duration::from_secs(2));
    // Member records and readings no longer change (a member records its reading of the
    // members when they change): none over a whole read period.
    let revisions = || async {
        let snapshot = registry.engine_snapshot().await.expect("read");
        let revisions: Vec<i64> = snapshot
            .members
            .iter()
            .map(|e| snapshot.judged(e).revision)
            .collect();
        revisions
    };
    let until = Instant::now() + DEADLINE;
    loop {
        let before = revisions().await;
        tokio::time::sleep(INTERVAL * FULL_READ_EVERY).await;
        if revisions().await == before {
            break;
        }
        assert!(
            Instant::now() < until,
            "member records or readings keep changing"
        );
    }

    // Nothing changes: reads find the cluster as the view has it.
    reads(1).await;
    let whole_plans = ENGINE_WHOLE_PLANS.get();
    reads(2).await;
    assert_eq!(
        ENGINE_WHOLE_PLANS.get(),
        whole_plans,
        "a read that found the cluster unchanged planned whole"
    );

    // Units written while the reads go on, one every 40 ms: each is placed, including those
    // the view had taken in but not yet reported when a read replaced it (and a read that
    // lands between a write and the view's news of it plans whole, as it should).
    let mut written = BTreeSet::new();
    let reads_before = ENGINE_CLUSTER_READS.get();
    let mut n = 0;
    while ENGINE_CLUSTER_READS.get() < reads_before + 3 {
        let u = unit(&format!("w{n}.service"));
        registry.put_unit(&u).await.expect("put unit");
        written.insert(u.name);
        n += 1;
        assert!(n < 1000, "the engine stopped reading the cluster");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let until = Instant::now() + DEADLINE;
    loop {
        let now = placed(&registry).await;
        let missing: Vec<&UnitName> = written.difference(&now).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "never placed: {missing:?}");
        tokio::time::sleep(INTERVAL).await;
    }
    engine.abort();
}
