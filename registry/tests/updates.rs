//! Rolling updates' records against a real etcd: an update of a global unit on thousands of
//! machines is kept with its machines listed once and a record that does not grow with them
//! (`update/record.rs`), read back whole by a point read, a list and the engine's view, and
//! removed whole; one too large for a transaction is refused with nothing written; a record
//! an older fleetd wrote whole is read and written again whole.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_registry::{
    as_listed, CreateUpdateError, EngineView, Layout, MachineId, Omitted, Phase, Update,
    UpdateState, UpdateUnit, MAX_PARALLEL_MACHINES, MAX_UPDATE_MACHINES,
};
use fleet_testkit::Etcd;
use support::*;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(15);

fn many(n: usize) -> MachineId {
    MachineId::parse(&format!("{n:032x}")).unwrap()
}

/// An update of `units` global units on `machines` machines each, as the API makes it.
fn global_update(id: &str, units: usize, machines: usize) -> Update {
    let mut entries = Vec::new();
    for u in 0..units {
        let unit = global_unit(&format!("monitor{u}.service"));
        for m in 0..machines {
            entries.push(UpdateUnit {
                machine: Some(many(m)),
                global: true,
                ..UpdateUnit::pending(unit.name.clone(), unit.hash())
            });
        }
        entries.push(UpdateUnit {
            global: true,
            ..UpdateUnit::pending(unit.name.clone(), unit.hash())
        });
    }
    Update {
        id: id.into(),
        created_ms: 1,
        options: global_unit("new.service").options,
        max_parallel: 2,
        min_healthy_ms: 1_000,
        healthy_deadline_ms: 60_000,
        auto_revert: true,
        state: UpdateState::Running,
        reason: None,
        ended_ms: None,
        units: entries,
        previous: vec![],
        stamped_by: 0,
    }
}

/// `update` without its machine entries, as a list of updates or the engine (once it is over)
/// reads a listed one.
fn without_machines(update: &Update) -> Update {
    let mut without = update.clone();
    without.units.retain(|u| u.machine.is_none());
    without
}

/// The keys under `updates/` and `update-machines/`, with their values' sizes and modification revisions.
async fn update_keys(etcd: &Etcd) -> Vec<(String, usize, i64)> {
    let records = format!("{}updates/", etcd.prefix);
    let lists = format!("{}update-machines/", etcd.prefix);
    etcd.key_space()
        .await
        .keys
        .into_iter()
        .map(|k| {
            (
                String::from_utf8_lossy(&k.key).into_owned(),
                k.value.len(),
                k.mod_revision,
            )
        })
        .filter(|(k, _, _)| k.starts_with(&records) || k.starts_with(&lists))
        .map(|(k, len, rev)| (k[etcd.prefix.len()..].to_string(), len, rev))
        .collect()
}

/// Follows the view until it holds `want` as update `id` (`None`: no such update).
async fn view_holds(view: &mut EngineView, id: &str, want: Option<&Update>) {
    let until = Instant::now() + DEADLINE;
    loop {
        let held = view.snapshot().updates.get(id).map(|s| &s.update);
        if held == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "the view holds {:?} units of update {id}, not {:?}",
            held.map(|u| u.units.len()),
            want.map(|u| u.units.len())
        );
        let _ = tokio::time::timeout(Duration::from_millis(500), view.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_global_update_on_twelve_thousand_machines_is_kept_listed() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_leader, leadership) = leading(&registry, 1).await;
    let mut view = registry.engine_view().await.unwrap();
    let update = global_update("1a2b", 1, 12_000);

    registry.create_update(&update).await.unwrap();
    let stored = registry.update("1a2b").await.unwrap().expect("created");
    assert_eq!(stored.layout, Layout::Listed);
    assert_eq!(stored.update, update);
    // A list of updates has their machines counted, not listed.
    let listed = registry.updates().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].update, without_machines(&update));
    assert_eq!(
        listed[0].omitted,
        Omitted::from([(
            name("monitor0.service"),
            BTreeMap::from([(Phase::Pending, 12_000)])
        )])
    );
    assert!(stored.omitted.is_empty());
    view_holds(&mut view, "1a2b", Some(&update)).await;
    let keys = update_keys(&etcd).await;
    let names: Vec<&str> = keys.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "update-machines/1a2b/0",
            "update-machines/1a2b/1",
            "update-machines/1a2b/2",
            "updates/1a2b",
        ]
    );
    let created = keys[0].2;
    assert!(keys[3].1 < 2_000, "a record of {} bytes", keys[3].1);

    // The engine's steps: two machines updating, then one healthy and the next updating.
    let mut next = update.clone();
    for entry in &mut next.units[..2] {
        entry.phase = Phase::Updating;
        entry.since_ms = Some(10);
    }
    next.stamped_by = leadership.revision;
    assert!(registry
        .write_update(&next, Layout::Listed, stored.revision, Some(leadership))
        .await
        .unwrap());
    let stored = registry.update("1a2b").await.unwrap().unwrap();
    assert_eq!(stored.update, next);
    view_holds(&mut view, "1a2b", Some(&next)).await;
    next.units[0].phase = Phase::Healthy;
    next.units[0].up_since_ms = Some(20);
    next.units[2].phase = Phase::Updating;
    next.units[2].since_ms = Some(30);
    assert!(registry
        .write_update(&next, Layout::Listed, stored.revision, Some(leadership))
        .await
        .unwrap());
    // The healthy machine's times are not kept.
    assert_ne!(as_listed(&next), next);
    let stored = registry.update("1a2b").await.unwrap().unwrap();
    assert_eq!(stored.update, as_listed(&next));
    view_holds(&mut view, "1a2b", Some(&as_listed(&next))).await;
    let keys = update_keys(&etcd).await;
    assert!(keys[3].1 < 2_000, "a record of {} bytes", keys[3].1);
    assert!(
        keys[..3].iter().all(|(_, _, rev)| *rev == created),
        "machine lists written again: {keys:?}"
    );

    // A stale write changes nothing.
    assert!(!registry
        .write_update(&update, Layout::Listed, created, Some(leadership))
        .await
        .unwrap());

    // Over: its claim released; removed: its record and lists gone.
    let mut over = as_listed(&next);
    over.state = UpdateState::Aborted;
    assert!(registry
        .write_update(&over, Layout::Listed, stored.revision, Some(leadership))
        .await
        .unwrap());
    let stored = registry.update("1a2b").await.unwrap().unwrap();
    assert_eq!(stored.update, over);
    // The engine keeps an update that is over without its machines: it only counts those.
    view_holds(&mut view, "1a2b", Some(&without_machines(&over))).await;
    let snapshot = registry.engine_snapshot().await.unwrap();
    assert_eq!(snapshot.updates["1a2b"].update, without_machines(&over));
    assert!(registry
        .delete_update("1a2b", stored.revision, leadership)
        .await
        .unwrap());
    assert!(update_keys(&etcd).await.is_empty());
    assert!(registry.update("1a2b").await.unwrap().is_none());
    view_holds(&mut view, "1a2b", None).await;
    // The unit can be in an update again.
    registry
        .create_update(&global_update("1a2c", 1, 3))
        .await
        .unwrap();
    let snapshot = registry.engine_snapshot().await.unwrap();
    assert_eq!(
        snapshot.updates.get("1a2c").map(|s| &s.update),
        Some(&global_update("1a2c", 1, 3))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_too_large_for_one_transaction_writes_nothing() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let before = etcd.key_space().await;

    let too_many = global_update("1a2b", 1, MAX_UPDATE_MACHINES + 1);
    match registry.create_update(&too_many).await {
        Err(CreateUpdateError::TooLarge(why)) => {
            assert!(why.contains("at most 20000 machines"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // 125 global units on 121 machines each: 4 lists, 125 claims and the record.
    let too_wide = global_update("1a2c", 125, 121);
    match registry.create_update(&too_wide).await {
        Err(CreateUpdateError::TooLarge(why)) => {
            assert!(why.contains("4 keys of machine lists"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // More machines at a time than its record keeps the times of.
    let mut too_fast = global_update("1a2d", 1, 300);
    too_fast.max_parallel = MAX_PARALLEL_MACHINES as u32 + 1;
    match registry.create_update(&too_fast).await {
        Err(CreateUpdateError::TooLarge(why)) => {
            assert!(why.contains("at most 200 machines at a time"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(etcd.key_space().await.revision, before.revision);
    // Within both bounds.
    registry
        .create_update(&global_update("1a2d", 2, MAX_UPDATE_MACHINES / 2))
        .await
        .unwrap();
    let stored = registry.update("1a2d").await.unwrap().unwrap();
    assert_eq!(
        stored.update,
        global_update("1a2d", 2, MAX_UPDATE_MACHINES / 2)
    );
}

/// A record an older fleetd wrote with every entry in it is read as it is, and written again
/// the same way (its machines have no lists).
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_record_of_an_older_fleetd_stays_whole() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_leader, leadership) = leading(&registry, 1).await;
    let mut update = global_update("1a2b", 1, 3);
    etcd.put_raw("updates/1a2b", &serde_json::to_vec(&update).unwrap())
        .await;
    // A key that is no record under `updates/` (by hand, say) is left alone.
    etcd.put_raw("updates/1a2b/stray", b"not a record").await;
    let stored = registry.update("1a2b").await.unwrap().unwrap();
    assert_eq!(stored.layout, Layout::Inline);
    assert_eq!(stored.update, update);
    let snapshot = registry.engine_snapshot().await.unwrap();
    assert_eq!(snapshot.updates.len(), 1);
    assert_eq!(snapshot.updates["1a2b"], stored);
    assert_eq!(
        registry.updates().await.unwrap(),
        std::slice::from_ref(&stored)
    );

    update.units[0].phase = Phase::Healthy;
    update.units[0].since_ms = Some(5);
    assert!(registry
        .write_update(&update, stored.layout, stored.revision, Some(leadership))
        .await
        .unwrap());
    let keys = update_keys(&etcd).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    let stored = registry.update("1a2b").await.unwrap().unwrap();
    assert_eq!((stored.layout, &stored.update), (Layout::Inline, &update));
}

/// A watch reports each prefix apart, so the engine's view may see an update's record before
/// the machine lists written with it: it keeps the record until they come.
#[tokio::test(flavor = "multi_thread")]
async fn a_view_reads_a_record_that_comes_before_its_machine_lists() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let update = global_update("1a2b", 2, 6_000);
    registry.create_update(&update).await.unwrap();
    let keys: Vec<(String, Vec<u8>)> = etcd
        .key_space()
        .await
        .keys
        .into_iter()
        .map(|k| {
            (
                String::from_utf8_lossy(&k.key[etcd.prefix.len()..]).into_owned(),
                k.value,
            )
        })
        .filter(|(k, _)| k.starts_with("updates/") || k.starts_with("update-machines/"))
        .collect();
    assert_eq!(keys.len(), 4, "three lists and the record");
    let mut view = registry.engine_view().await.unwrap();
    view_holds(&mut view, "1a2b", Some(&update)).await;
    for (key, _) in &keys {
        etcd.delete_raw(key).await;
    }
    view_holds(&mut view, "1a2b", None).await;

    // The record, then each list: the update is read once the last one comes.
    let (lists, record) = keys.split_at(3);
    etcd.put_raw(&record[0].0, &record[0].1).await;
    for (key, value) in lists {
        let _ = tokio::time::timeout(Duration::from_millis(300), view.changed()).await;
        assert!(
            !view.snapshot().updates.contains_key("1a2b"),
            "read before its lists came"
        );
        etcd.put_raw(key, value).await;
    }
    view_holds(&mut view, "1a2b", Some(&update)).await;
    let snapshot = registry.engine_snapshot().await.unwrap();
    assert_eq!(snapshot.updates["1a2b"].update, update);
}
