//! What the engine plans from its memo, against a real etcd, without a plan of the whole
//! cluster: a machine lost (its lease lapses, the engine holds its units, declares it dead once
//! a majority of the machines renewed theirs, and places its units on the others); units
//! destroyed, taken off their machines, which then release them; a machine joining while
//! they stop them; instances of a template that conflict with each other; and a unit that
//! follows one of them (`MachineOf`), written, its leader stopped (it stays where it is),
//! and destroyed; a global unit written; a unit no machine takes, while a machine joins that
//! does not take it, until one joins that does; and, while a unit waits for good, the whole
//! plan of a unit with `Replaces`, which leaves a memo.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_registry::{JobState, Presence};
use fleet_telemetry::ENGINE_WHOLE_PLANS;
use fleet_testkit::Etcd;
use fleet_units::{UnitName, UnitOption};
use support::{connect, id, spawn_engine, unit, write_units};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(30);
const UNITS: usize = 9;

/// Waits until `name` is placed: on which machines.
async fn placed_unit(registry: &fleet_registry::Registry, name: &str) -> Vec<u8> {
    let name = UnitName::parse(name).expect("name");
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(on) = placed(registry).await.remove(&name) {
            return on;
        }
        assert!(Instant::now() < until, "{name} not placed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Machine `n` registered: on a lease of 2 s for machine 3, which is lost, of 10 s for the
/// others, which must not lapse on a busy machine (that would be a change of its own).
async fn present(registry: &fleet_registry::Registry, n: u8) -> Presence {
    let ttl = Duration::from_secs(if n == 3 { 2 } else { 10 });
    support::present(registry, n, ttl).await
}

/// Machine `n` releases every unit it was stopping, as its agent does once they stopped.
async fn release_all(registry: &fleet_registry::Registry, n: u8) {
    let agent = registry.agent_snapshot(&id(n)).await.expect("read");
    let records: Vec<(UnitName, i64)> = agent.stopping.into_iter().collect();
    registry
        .release_stopping(&id(n), &records)
        .await
        .expect("release");
}

/// Where each unit is placed: its machines, by unit name.
async fn placed(registry: &fleet_registry::Registry) -> BTreeMap<UnitName, Vec<u8>> {
    let mut at: BTreeMap<UnitName, Vec<u8>> = BTreeMap::new();
    let snapshot = registry.engine_snapshot().await.expect("read");
    for (machine, placement) in &snapshot.placements {
        let n = (1..=6u8).find(|&n| id(n) == *machine).expect("one of ours");
        at.entry(placement.name.clone()).or_default().push(n);
    }
    at
}

// The only test of this file: the count of whole plans is the process's.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_machine_releases_a_join_conflicts_followers_and_a_wait_are_planned_from_the_memo() {
    let etcd = Etcd::start();
    let registry = connect(&etcd).await;
    let mut presences = Vec::new();
    for n in 1..=3u8 {
        presences.push(present(&registry, n).await);
    }
    write_units(&registry, UNITS).await;
    // Without a witness, every member holding a lease counts as renewed on request.
    let engine = spawn_engine(
        registry.clone(),
        &presences[0],
        fleet_engine::EngineConfig {
            timing: fleet_quorum::Timing::for_ttl(Duration::from_secs(2), Duration::from_secs(1)),
            // The engine reads the cluster again (and plans it whole) every 30 of these: not
            // within this test. (It also does when its watch errs, or brings a declaration's
            // changes later than 2 s: that would fail this test, wrongly.)
            reconcile_interval: Duration::from_secs(10),
            ..fleet_engine::EngineConfig::default()
        },
    );
    let until = Instant::now() + DEADLINE;
    while placed(&registry).await.len() < UNITS {
        assert!(Instant::now() < until, "units not placed in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = placed(&registry).await;
    let lost: Vec<&UnitName> = before
        .iter()
        .filter(|(_, on)| on.as_slice() == [3])
        .map(|(name, _)| name)
        .collect();
    assert_eq!(lost.len(), UNITS / 3, "spread: {before:?}");
    let whole_plans = ENGINE_WHOLE_PLANS.get();

    // Machine 3 powered off.
    presences.truncate(2);
    let until = Instant::now() + DEADLINE;
    let after = loop {
        let after = placed(&registry).await;
        let members = registry
            .engine_snapshot()
            .await
            .expect("read")
            .members
            .len();
        if members == 2 && after.len() == UNITS && after.values().all(|on| on != &[3]) {
            break after;
        }
        assert!(
            Instant::now() < until,
            "machine 3's units not placed elsewhere in time: {after:?}, {members} members"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (name, on) in &after {
        assert_eq!(on.len(), 1, "{name} placed on {on:?}");
        if !lost.contains(&name) {
            assert_eq!(before[name], *on, "{name} moved");
        }
    }
    assert_eq!(
        ENGINE_WHOLE_PLANS.get(),
        whole_plans,
        "the lost machine planned whole"
    );

    // Three units destroyed: each machine stops its own first (a stopping record), then
    // releases it, as its agent does.
    let destroyed: Vec<&UnitName> = after.keys().take(3).collect();
    for name in &destroyed {
        assert!(registry.delete_unit(name).await.expect("destroy"));
    }
    let until = Instant::now() + DEADLINE;
    loop {
        let snapshot = registry.engine_snapshot().await.expect("read");
        let stopping: Vec<&UnitName> = snapshot.stopping.iter().map(|(_, n)| n).collect();
        if destroyed.iter().all(|n| stopping.contains(n)) {
            break;
        }
        assert!(
            Instant::now() < until,
            "destroyed units not taken off their machines in time: {stopping:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A machine joins while the others stop them: the least loaded, it takes the next unit.
    let _four = present(&registry, 4).await;
    registry
        .put_unit(&unit("after-join.service"))
        .await
        .expect("put unit");
    assert_eq!(
        placed_unit(&registry, "after-join.service").await,
        [4],
        "not placed on the machine that joined"
    );
    for n in 1..=2u8 {
        release_all(&registry, n).await;
    }
    // The engine has taken the releases in once a unit written after them is placed.
    registry
        .put_unit(&unit("last.service"))
        .await
        .expect("put unit");
    placed_unit(&registry, "last.service").await;
    let snapshot = registry.engine_snapshot().await.expect("read");
    assert_eq!(snapshot.placements.len(), UNITS - destroyed.len() + 2);
    assert!(snapshot.stopping.is_empty(), "{:?}", snapshot.stopping);
    assert!(
        snapshot.unplaceable.is_empty(),
        "{:?}",
        snapshot.unplaceable
    );
    assert_eq!(
        ENGINE_WHOLE_PLANS.get(),
        whole_plans,
        "destroys, the join while machines stopped them, or their releases planned whole"
    );

    // Three instances that conflict with each other, on the three live machines: each on
    // one of its own.
    let mut on = Vec::new();
    for n in 1..=3 {
        let name = format!("web@{n}.service");
        let mut web = unit(&name);
        web.options
            .push(UnitOption::new("X-Fleet", "Conflicts", "web@*.service"));
        registry.put_unit(&web).await.expect("put unit");
        on.extend(placed_unit(&registry, &name).await);
    }
    on.sort();
    assert_eq!(on, [1, 2, 4], "instances that conflict share a machine");
    assert_eq!(
        ENGINE_WHOLE_PLANS.get(),
        whole_plans,
        "instances that conflict planned whole"
    );

    // A unit that follows one of them goes to its machine; its leader stopped stays there
    // (loaded); the follower destroyed, that machine stops it.
    let leader = placed_unit(&registry, "web@2.service").await;
    let mut log = unit("log@2.service");
    log.options
        .push(UnitOption::new("X-Fleet", "MachineOf", "web@2.service"));
    registry.put_unit(&log).await.expect("put unit");
    assert_eq!(placed_unit(&registry, "log@2.service").await, leader);
    let web = UnitName::parse("web@2.service").expect("name");
    assert!(registry
        .set_desired_state(&web, JobState::Loaded)
        .await
        .expect("stop"));
    let until = Instant::now() + DEADLINE;
    loop {
        let snapshot = registry.engine_snapshot().await.expect("read");
        let state = snapshot
            .placements
            .iter()
            .find(|(_, p)| p.name == web)
            .map(|(_, p)| p.desired_state);
        if state == Some(JobState::Loaded) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the leader's placement not stopped in time: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(placed_unit(&registry, "web@2.service").await, leader);
    assert!(registry.delete_unit(&log.name).await.expect("destroy"));
    let until = Instant::now() + DEADLINE;
    loop {
        let snapshot = registry.engine_snapshot().await.expect("read");
        if snapshot.stopping.iter().any(|(_, n)| *n == log.name) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the follower destroyed not taken off its machine in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ENGINE_WHOLE_PLANS.get(),
        whole_plans,
        "a unit that follows another planned whole"
    );

    // Its machine releases it, as its agent does; then a global unit written: it runs
    // everywhere, and a unit written after it is placed.
    release_all(&registry, leader[0]).await;
    let mut global = unit("everywhere.service");
    global
        .options
        .push(UnitOption::new("X-Fleet", "Global", "true"));
    registry.put_unit(&global).await.expect("put unit");
    registry
        .put_unit(&unit("after-global.service"))
        .await
        .expect("put unit");
    placed_unit(&registry, "after-global.service").await;
    assert_eq!(
        ENGINE_WHOLE_PLANS.get(),
        whole_plans,
        "a global unit planned whole"
    );

    // A unit whose metadata no machine has waits, its reasons written (one per live
    // machine); a machine without it joins, then one with it, which takes it, its reasons
    // cleared.
    let mut db = unit("db.service");
    db.options
        .push(UnitOption::new("X-Fleet", "MachineMetadata", "role=db"));
    registry.put_unit(&db).await.expect("put unit");
    let reasons = reasons_of(&registry, &db.name, |r| r.is_some()).await;
    assert_eq!(
        reasons.as_ref().map(Vec::len),
        Some(3),
        "not one reason for each of machines 1, 2 and 4: {reasons:?}"
    );
    // A machine without it joins: one more reason.
    let _six = support::present_with(&registry, 6, Duration::from_secs(10), &[]).await;
    let reasons = reasons_of(&registry, &db.name, |r| r.is_some_and(|r| r.len() == 4)).await;
    assert!(
        reasons
            .iter()
            .flatten()
            .all(|r| r.ends_with("metadata role=db not matched")),
        "{reasons:?}"
    );
    let _five =
        support::present_with(&registry, 5, Duration::from_secs(10), &[("role", "db")]).await;
    assert_eq!(placed_unit(&registry, "db.service").await, [5]);
    reasons_of(&registry, &db.name, |r| r.is_none()).await;
    assert_eq!(
        ENGINE_WHOLE_PLANS.get(),
        whole_plans,
        "a unit that waits for a machine, or the machine that takes it, planned whole"
    );

    // While a unit waits for good, a unit with a rule the memo does not decide (`Replaces`)
    // costs one whole plan, which places it and leaves a memo: the next unit is planned from
    // it.
    let mut gpu = unit("gpu.service");
    gpu.options
        .push(UnitOption::new("X-Fleet", "MachineMetadata", "role=gpu"));
    registry.put_unit(&gpu).await.expect("put unit");
    reasons_of(&registry, &gpu.name, |r| r.is_some()).await;
    let mut replacing = unit("replacing.service");
    replacing
        .options
        .push(UnitOption::new("X-Fleet", "Replaces", "nothing.service"));
    registry.put_unit(&replacing).await.expect("put unit");
    placed_unit(&registry, "replacing.service").await;
    registry
        .put_unit(&unit("after-replacing.service"))
        .await
        .expect("put unit");
    placed_unit(&registry, "after-replacing.service").await;
    assert_eq!(
        ENGINE_WHOLE_PLANS.get(),
        whole_plans + 1,
        "not one whole plan for a unit with Replaces while a unit waits, and none after"
    );
    engine.abort();
}

/// Waits until the reasons recorded why `name` cannot be placed are as `wanted`: those.
async fn reasons_of(
    registry: &fleet_registry::Registry,
    name: &UnitName,
    wanted: impl Fn(Option<&Vec<String>>) -> bool,
) -> Option<Vec<String>> {
    let until = Instant::now() + DEADLINE;
    loop {
        let snapshot = registry.engine_snapshot().await.expect("read");
        let reasons = snapshot.unplaceable.get(name);
        if wanted(reasons) {
            return reasons.cloned();
        }
        assert!(
            Instant::now() < until,
            "the reasons of {name} not as awaited in time: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
