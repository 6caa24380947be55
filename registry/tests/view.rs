//! Views kept from a watch's events, against a real etcd: after any sequence of changes a view
//! says what a fresh read says (and has its digest), one opened while writes go on misses none, the engine's own
//! writes are not undone by the watch reporting them late, and keeping a view reads no keys.

mod support;

use std::time::Duration;

use fleet_registry::{
    AgentSnapshot, AgentView, EngineSnapshot, EngineView, Error, Placement, PlacementOp, Refreshed,
    Registry,
};
use support::*;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(15);

/// The snapshot's lists in a canonical order, printed: views keep no order.
fn engine_canonical(s: &EngineSnapshot) -> String {
    let mut units: Vec<String> = s.units.iter().map(|u| format!("{u:?}")).collect();
    let mut machines: Vec<String> = s.machines.iter().map(|m| format!("{m:?}")).collect();
    let mut members: Vec<String> = s.members.iter().map(|m| format!("{m:?}")).collect();
    let mut placements: Vec<String> = s.placements.iter().map(|p| format!("{p:?}")).collect();
    units.sort();
    machines.sort();
    members.sort();
    placements.sort();
    format!(
        "leader {:?}\nunits {units:#?}\nmachines {machines:#?}\nmembers {members:#?}\nplacements {placements:#?}\nunplaceable {:?}\nstopping {:?}\ndraining {:?}",
        s.leader, s.unplaceable, s.stopping, s.draining
    )
}

fn agent_canonical(s: &AgentSnapshot) -> String {
    let mut placements: Vec<String> = s.placements.iter().map(|p| format!("{p:?}")).collect();
    let mut globals: Vec<String> = s.global_units.iter().map(|u| format!("{u:?}")).collect();
    placements.sort();
    globals.sort();
    format!(
        "machine {:?}\nplacements {placements:#?}\nglobals {globals:#?}\nstopping {:?}\ncreated {:?}\nversions {:?}",
        s.machine, s.stopping, s.global_revisions, s.versions
    )
}

/// Follows the view's changes until it says what a fresh read says.
async fn engine_converges(registry: &Registry, view: &mut EngineView) {
    let until = Instant::now() + DEADLINE;
    loop {
        let read = registry.engine_snapshot().await.unwrap();
        let fresh = engine_canonical(&read);
        let kept = engine_canonical(view.snapshot());
        if kept == fresh {
            // And the members whose lease is gone, kept as records change.
            let absent: Vec<(fleet_registry::MachineId, i64)> = read
                .members
                .iter()
                .filter(|e| {
                    !read
                        .machines
                        .iter()
                        .any(|m| m.machine.id == e.member.machine.id)
                })
                .map(|e| (e.member.machine.id.clone(), read.judged(e).revision))
                .collect();
            let kept: Vec<(fleet_registry::MachineId, i64)> = view
                .absent_members()
                .map(|(id, revision)| (id.clone(), revision))
                .collect();
            assert_eq!(kept, absent);
            // And the units placed on each machine, and each member's record revision.
            let ids: std::collections::BTreeSet<&fleet_registry::MachineId> = read
                .placements
                .iter()
                .map(|(m, _)| m)
                .chain(read.machines.iter().map(|m| &m.machine.id))
                .chain(read.members.iter().map(|e| &e.member.machine.id))
                .collect();
            for id in ids {
                let mut on: Vec<&fleet_units::UnitName> = read
                    .placements
                    .iter()
                    .filter(|(m, _)| m == id)
                    .map(|(_, p)| &p.name)
                    .collect();
                on.sort();
                assert_eq!(view.placed_on(id).collect::<Vec<_>>(), on, "on {id}");
                let revision = read
                    .members
                    .iter()
                    .find(|e| e.member.machine.id == *id)
                    .map(|e| read.judged(e).revision);
                assert_eq!(view.member_revision(id), revision, "member {id}");
            }
            return;
        }
        assert!(
            Instant::now() < until,
            "the view differs from a fresh read:\nkept {kept}\nfresh {fresh}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), view.changed()).await;
    }
}

async fn agent_converges(
    registry: &Registry,
    machine: &fleet_registry::MachineId,
    view: &mut AgentView,
) {
    let until = Instant::now() + DEADLINE;
    loop {
        let fresh = agent_canonical(&registry.agent_snapshot(machine).await.unwrap());
        let kept = agent_canonical(view.snapshot());
        if kept == fresh {
            return;
        }
        assert!(
            Instant::now() < until,
            "the view differs from a fresh read:\nkept {kept}\nfresh {fresh}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), view.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_view_kept_from_events_says_what_a_fresh_read_says() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (a, lease_a) = present(&registry, 1).await;
    let (b, _) = present(&registry, 2).await;
    let leadership = registry
        .campaign(&machine_id(1), lease_a)
        .await
        .unwrap()
        .expect("machine 1 leads");
    for name in ["a.service", "b.service", "c.service"] {
        registry.put_unit(&unit(name)).await.unwrap();
    }
    let mut view = registry.engine_view().await.unwrap();
    engine_converges(&registry, &mut view).await;

    // Units written, changed and removed; a global unit.
    for name in ["d.service", "e.service"] {
        registry.put_unit(&unit(name)).await.unwrap();
    }
    registry.put_unit(&global_unit("g.service")).await.unwrap();
    registry.delete_unit(&name("b.service")).await.unwrap();
    let mut changed = unit("a.service");
    changed.desired_state = fleet_registry::JobState::Loaded;
    registry.put_unit(&changed).await.unwrap();
    // The engine's own writes, applied to the view as etcd accepts them.
    let ops = vec![
        place(&machine_id(1), "a.service"),
        place(&machine_id(2), "c.service"),
        PlacementOp::SetUnplaceable {
            name: name("d.service"),
            reasons: vec!["no machine".into()],
        },
    ];
    let revisions = registry.apply_placements(leadership, &ops).await.unwrap();
    view.applied(&ops, &revisions);
    engine_converges(&registry, &mut view).await;
    let ops = vec![
        unplace(&machine_id(2), "c.service"),
        PlacementOp::ClearUnplaceable {
            name: name("d.service"),
        },
        place(&machine_id(2), "d.service"),
    ];
    let revisions = registry.apply_placements(leadership, &ops).await.unwrap();
    view.applied(&ops, &revisions);
    // A machine joins; another's lease expires (its record goes, its member record stays).
    let (_c, _) = present(&registry, 3).await;
    drop(b);
    let until = Instant::now() + EXPIRY_DEADLINE;
    while view
        .snapshot()
        .machines
        .iter()
        .any(|m| m.machine.id == machine_id(2))
    {
        assert!(Instant::now() < until, "machine 2's expiry is not seen");
        let _ = tokio::time::timeout(Duration::from_millis(200), view.changed()).await;
    }
    engine_converges(&registry, &mut view).await;
    assert_eq!(view.snapshot().leader, Some(leadership));
    assert_eq!(view.snapshot().machines.len(), 2);
    assert_eq!(view.snapshot().members.len(), 3);

    // A view read afresh has the same digest, though its lists are in another order; one
    // read after a change has another, until the kept view has the change too.
    let keys = std::hash::RandomState::new();
    let fresh = registry.engine_view().await.unwrap();
    let names = |v: &EngineView| -> Vec<String> {
        v.snapshot()
            .units
            .iter()
            .map(|u| u.name.to_string())
            .collect()
    };
    assert_ne!(
        names(&view),
        names(&fresh),
        "the same order: nothing to show"
    );
    assert_eq!(view.digest(&keys), fresh.digest(&keys));
    registry.put_unit(&unit("f.service")).await.unwrap();
    let after = registry.engine_view().await.unwrap();
    assert_ne!(view.digest(&keys), after.digest(&keys));
    assert_ne!(fresh.digest(&keys), after.digest(&keys));
    engine_converges(&registry, &mut view).await;
    assert_eq!(view.digest(&keys), after.digest(&keys));
    drop(a);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engines_own_writes_are_not_undone_by_the_watch_reporting_them_late() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, leadership) = leading(&registry, 1).await;
    registry.put_unit(&unit("x.service")).await.unwrap();
    let mut view = registry.engine_view().await.unwrap();
    let placed = |view: &EngineView| {
        view.snapshot()
            .placements
            .iter()
            .any(|(_, p)| p.name.as_str() == "x.service")
    };

    // Placed, then removed, both applied before the watch has reported either: the removal
    // is applied as a write two revisions later, and written to etcd only at the end, so that
    // the watch cannot report it first.
    let put = [place(&machine_id(1), "x.service")];
    let revisions = registry.apply_placements(leadership, &put).await.unwrap();
    view.applied(&put, &revisions);
    assert!(placed(&view));
    let delete = [unplace(&machine_id(1), "x.service")];
    view.applied(&delete, &[revisions[0] + 2]);
    assert!(!placed(&view));
    // Another placement, written after x's and not applied here: once the view has it, the
    // watch (in order under one prefix) has reported x's placement, which must not bring x
    // back.
    registry
        .apply_placements(leadership, &[place(&machine_id(1), "y.service")])
        .await
        .unwrap();
    let until = Instant::now() + DEADLINE;
    while !view
        .snapshot()
        .placements
        .iter()
        .any(|(_, p)| p.name.as_str() == "y.service")
    {
        assert!(
            Instant::now() < until,
            "the watch does not report y's placement"
        );
        tokio::time::timeout(DEADLINE, view.changed())
            .await
            .expect("the watch reports the placements")
            .unwrap();
    }
    assert!(!placed(&view), "a late event undid a newer write");
    let deleted = registry
        .apply_placements(leadership, &delete)
        .await
        .unwrap();
    view.applied(&delete, &deleted);
    assert!(!placed(&view));
    engine_converges(&registry, &mut view).await;
}

/// Follows the view until `done` holds of the changes taken so far (taken once more at the
/// end, to catch any the last wake-up left), and returns them all merged.
async fn changes_until(
    view: &mut EngineView,
    done: impl Fn(&fleet_registry::ViewChanges) -> bool,
) -> fleet_registry::ViewChanges {
    let until = Instant::now() + DEADLINE;
    let mut all = fleet_registry::ViewChanges::default();
    loop {
        let more = view.take_changes();
        all.units.extend(more.units);
        all.machines.extend(more.machines);
        all.updates |= more.updates;
        all.other |= more.other;
        if done(&all) {
            return all;
        }
        assert!(Instant::now() < until, "changes not reported: {all:?}");
        let _ = tokio::time::timeout(Duration::from_millis(200), view.changed()).await;
    }
}

/// What the engine plans a burst from: units others wrote or deleted, by name, and whether
/// anything else changed; never its own placement writes, neither as it applies them nor as
/// the watch reports them later.
#[tokio::test(flavor = "multi_thread")]
async fn an_engine_view_tells_which_units_others_changed_and_not_its_own_writes() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, leadership) = leading(&registry, 1).await;
    registry.put_unit(&unit("a.service")).await.unwrap();
    let mut view = registry.engine_view().await.unwrap();
    assert_eq!(view.take_changes(), Default::default());

    registry.put_unit(&unit("b.service")).await.unwrap();
    registry.delete_unit(&name("a.service")).await.unwrap();
    let changes = changes_until(&mut view, |c| c.units.len() == 2).await;
    assert_eq!(
        changes.units,
        [name("a.service"), name("b.service")].into_iter().collect()
    );
    assert!(!changes.other, "{changes:?}");
    assert!(view.unit(&name("b.service")).is_some());
    assert!(view.unit(&name("a.service")).is_none());

    // The engine's own writes: not changes, applied or reported.
    let ops = vec![
        place(&machine_id(1), "b.service"),
        PlacementOp::SetUnplaceable {
            name: name("c.service"),
            reasons: vec!["no machine".into()],
        },
    ];
    let revisions = registry.apply_placements(leadership, &ops).await.unwrap();
    view.applied(&ops, &revisions);
    assert!(view.placement(&machine_id(1), &name("b.service")).is_some());
    assert_eq!(view.unreported_writes(), 2, "a placement and a reason");
    registry.put_unit(&unit("d.service")).await.unwrap();
    let until = Instant::now() + DEADLINE;
    while view.unreported_writes() > 0 {
        assert!(
            Instant::now() < until,
            "the watch does not report the own writes"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), view.changed()).await;
    }
    let changes = changes_until(&mut view, |c| !c.units.is_empty()).await;
    assert_eq!(changes.units, [name("d.service")].into_iter().collect());
    assert!(!changes.other, "own writes counted as changes: {changes:?}");

    // b taken off machine 1 (the engine's own write, a stopping record), then released by
    // that machine: a change of b.
    let ops = vec![PlacementOp::Move {
        machine: machine_id(1),
        name: name("b.service"),
    }];
    let revisions = registry.apply_placements(leadership, &ops).await.unwrap();
    view.applied(&ops, &revisions);
    let records: Vec<(fleet_units::UnitName, i64)> = registry
        .agent_snapshot(&machine_id(1))
        .await
        .unwrap()
        .stopping
        .into_iter()
        .collect();
    assert_eq!(records.len(), 1);
    registry
        .release_stopping(&machine_id(1), &records)
        .await
        .unwrap();
    let changes = changes_until(&mut view, |c| !c.units.is_empty()).await;
    assert_eq!(changes.units, [name("b.service")].into_iter().collect());
    assert!(!changes.other, "{changes:?}");
    assert!(view.snapshot().stopping.is_empty());

    // A machine joining: its machine and member records, by the machine's id.
    let (b, _) = present(&registry, 2).await;
    let changes = changes_until(&mut view, |c| !c.machines.is_empty()).await;
    assert_eq!(changes.machines, [machine_id(2)].into_iter().collect());
    assert!(changes.units.is_empty(), "{changes:?}");
    assert!(!changes.other, "{changes:?}");
    assert!(view.machine(&machine_id(2)).is_some());
    assert!(view.is_member(&machine_id(2)));

    // But not a member recording a new reading of the members (every member does, for
    // every join): the members are the same. The unit written after it is reported after
    // it.
    let reading = fleet_registry::Member {
        machine: machine(1),
        seen_revision: view.snapshot().revision,
        seen_members: 2,
    };
    assert!(registry.record_reading(&reading).await.unwrap());
    registry.put_unit(&unit("e.service")).await.unwrap();
    let changes = changes_until(&mut view, |c| !c.units.is_empty()).await;
    assert_eq!(changes.units, [name("e.service")].into_iter().collect());
    assert!(
        !changes.other,
        "a new reading counted as a change: {changes:?}"
    );
    let snapshot = view.snapshot();
    let recorded = snapshot
        .members
        .iter()
        .find(|e| e.member.machine.id == machine_id(1))
        .map(|e| snapshot.judged(e).reading.seen_members);
    assert_eq!(recorded, Some(2), "the view did not keep the reading");

    // A rolling update written: an update, nothing else (it counts only for drains).
    let e = unit("e.service");
    let update = fleet_registry::Update {
        id: "u1".into(),
        created_ms: 0,
        options: e.options.clone(),
        max_parallel: 1,
        min_healthy_ms: 1_000,
        healthy_deadline_ms: 10_000,
        auto_revert: false,
        state: fleet_registry::UpdateState::Running,
        reason: None,
        ended_ms: None,
        units: vec![fleet_registry::UpdateUnit::pending(
            e.name.clone(),
            e.hash(),
        )],
        previous: vec![],
        stamped_by: 0,
    };
    registry.create_update(&update).await.unwrap();
    let changes = changes_until(&mut view, |c| c.updates).await;
    assert!(
        changes.units.is_empty() && changes.machines.is_empty(),
        "{changes:?}"
    );
    assert!(
        !changes.other,
        "an update counted as anything else: {changes:?}"
    );
    assert!(view.snapshot().updates.contains_key("u1"));

    // Machine 2, running e, powered off: its lease expires, its machine record goes.
    let ops = vec![place(&machine_id(2), "e.service")];
    let revisions = registry.apply_placements(leadership, &ops).await.unwrap();
    view.applied(&ops, &revisions);
    drop(b);
    let changes = changes_until(&mut view, |c| !c.machines.is_empty()).await;
    assert_eq!(changes.machines, [machine_id(2)].into_iter().collect());
    assert!(!changes.other, "{changes:?}");
    assert!(view.machine(&machine_id(2)).is_none());
    assert!(view.is_member(&machine_id(2)));
    // Declared dead: its member record and its placements go, a change of that machine
    // too (what was held there is placed elsewhere).
    assert!(registry
        .declare_dead(
            leadership,
            &machine_id(2),
            member_revision(&view, 2),
            &[name("e.service")]
        )
        .await
        .unwrap());
    let until = Instant::now() + DEADLINE;
    let mut all = fleet_registry::ViewChanges::default();
    while view.is_member(&machine_id(2))
        || view.placement(&machine_id(2), &name("e.service")).is_some()
    {
        assert!(Instant::now() < until, "the declaration not seen");
        let _ = tokio::time::timeout(Duration::from_millis(200), view.changed()).await;
        let more = view.take_changes();
        all.units.extend(more.units);
        all.machines.extend(more.machines);
        all.updates |= more.updates;
        all.other |= more.other;
    }
    assert_eq!(all.machines, [machine_id(2)].into_iter().collect());
    assert!(all.units.is_empty() && !all.other, "{all:?}");
}

/// The revision machine `n`'s judgement rests on (its member record's or its reading's), in
/// the view.
fn member_revision(view: &EngineView, n: u8) -> i64 {
    view.member_revision(&machine_id(n)).expect("not a member")
}

/// A machine record under another machine's key is no machine's, in a snapshot as in a view
/// kept from events (the engine looks machines up by key, and the view names them by key).
#[tokio::test(flavor = "multi_thread")]
async fn a_machine_record_under_another_machines_key_is_no_machine() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, _) = present(&registry, 1).await;
    let record = serde_json::to_vec(&machine(4)).unwrap();
    etcd.put_raw(&format!("machines/{}", machine_id(3)), &record)
        .await;
    let snapshot = registry.engine_snapshot().await.unwrap();
    let ids: Vec<_> = snapshot.machines.iter().map(|e| &e.machine.id).collect();
    assert_eq!(ids, [&machine_id(1)]);
    let mut view = registry.engine_view().await.unwrap();
    assert!(view.machine(&machine_id(3)).is_none());
    assert!(view.machine(&machine_id(4)).is_none());

    etcd.put_raw(&format!("machines/{}", machine_id(5)), &record)
        .await;
    let changes = changes_until(&mut view, |c| !c.machines.is_empty()).await;
    assert_eq!(changes.machines, [machine_id(5)].into_iter().collect());
    assert!(view.machine(&machine_id(5)).is_none());
    assert!(view.machine(&machine_id(4)).is_none());
    assert_eq!(view.snapshot().machines.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn keeping_a_view_reads_no_keys() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    for n in 0..50 {
        registry
            .put_unit(&unit(&format!("u{n}.service")))
            .await
            .unwrap();
    }
    let mut view = registry.engine_view().await.unwrap();
    assert!(
        registry.keys_read() >= 50,
        "opening the view reads the units"
    );
    let before = registry.keys_read();
    for n in 50..60 {
        registry
            .put_unit(&unit(&format!("u{n}.service")))
            .await
            .unwrap();
    }
    let until = Instant::now() + DEADLINE;
    while view.snapshot().units.len() < 60 {
        assert!(Instant::now() < until, "the view misses new units");
        tokio::time::timeout(DEADLINE, view.changed())
            .await
            .expect("woken by new units")
            .unwrap();
    }
    assert_eq!(
        registry.keys_read(),
        before,
        "a change was read from etcd again"
    );
}

/// A view watches from now and then reads: opened or read again while writes go on, it misses
/// none of them. Each key is placed once and removed once, so a missed write is never mended
/// (but for a missed placement of a key removed before the view was opened).
#[tokio::test(flavor = "multi_thread")]
async fn views_opened_or_read_again_while_placements_are_written_miss_none_of_them() {
    const UNITS: usize = 300;
    const KEPT: usize = 100;
    /// Every this many writes, the writer lets views be opened while it goes on.
    const EVERY: usize = 50;
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, leadership) = leading(&registry, 1).await;
    let me = machine_id(1);
    // A few views, opened at set points: views nobody reads hold their events on the one
    // HTTP/2 connection, whose window a view opened on every turn of a loop would fill.
    let (open, mut opening) = tokio::sync::mpsc::channel::<usize>(1);
    let writer = {
        let registry = registry.clone();
        let me = me.clone();
        tokio::spawn(async move {
            for k in 0..UNITS {
                let mut ops = vec![place(&me, &format!("u-{k}.service"))];
                if k >= KEPT {
                    ops.push(unplace(&me, &format!("u-{}.service", k - KEPT)));
                }
                registry.apply_placements(leadership, &ops).await.unwrap();
                if k % EVERY == EVERY / 2 {
                    open.send(k).await.unwrap();
                }
            }
        })
    };
    let mut agents: Vec<AgentView> = Vec::new();
    let mut engines = Vec::new();
    while let Some(_written) = opening.recv().await {
        // Read again, keeping the watch, as an agent's resync does.
        if let Some(view) = agents.last_mut() {
            view.refresh().await.unwrap();
        }
        agents.push(registry.agent_view(&me).await.unwrap());
        engines.push(registry.engine_view().await.unwrap());
    }
    writer.await.unwrap();
    assert_eq!(agents.len(), UNITS / EVERY);
    for view in &mut agents {
        agent_converges(&registry, &me, view).await;
        assert_eq!(view.snapshot().placements.len(), KEPT);
    }
    for view in &mut engines {
        engine_converges(&registry, view).await;
        assert_eq!(view.snapshot().placements.len(), KEPT);
    }
}

/// Reading an agent's view again says whether the read differed from the view, and leaves
/// out of the watch what the read holds.
#[tokio::test(flavor = "multi_thread")]
async fn reading_a_view_again_says_whether_it_differed() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, leadership) = leading(&registry, 1).await;
    let me = machine_id(1);
    let mut view = registry.agent_view(&me).await.unwrap();
    assert_eq!(view.refresh().await.unwrap(), Refreshed::Same);
    // Written, and not yet taken from the watch: the read holds it, the view did not.
    registry
        .apply_placements(leadership, &[place(&me, "a.service")])
        .await
        .unwrap();
    assert_eq!(view.refresh().await.unwrap(), Refreshed::Differed);
    assert_eq!(names_placed(&view), ["a.service"]);
    assert_eq!(view.refresh().await.unwrap(), Refreshed::Same);
    // The watch's report of that write is left out: the next change it brings is the next.
    registry
        .apply_placements(leadership, &[place(&me, "b.service")])
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, view.changed())
        .await
        .expect("the next write is seen")
        .unwrap();
    assert_eq!(names_placed(&view), ["a.service", "b.service"]);
    agent_converges(&registry, &me, &mut view).await;
}

fn names_placed(view: &AgentView) -> Vec<String> {
    let mut names: Vec<String> = view
        .snapshot()
        .placements
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    names.sort();
    names
}

/// What a read made after the watch was opened holds is left out of the watch.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_from_now_leaves_out_what_the_read_after_it_holds() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let mut changes = registry
        .watch_now(&registry.engine_watch_prefixes())
        .await
        .unwrap();
    registry.put_unit(&unit("a.service")).await.unwrap();
    let read = registry.engine_snapshot().await.unwrap().revision;
    registry.put_unit(&unit("b.service")).await.unwrap();
    changes.skip_through(read);
    let seen = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .expect("the write after the read is seen")
        .unwrap();
    assert!(seen > read, "a change at {seen}, read at {read}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_view_follows_its_placements_the_global_units_and_its_record() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, leadership) = leading(&registry, 1).await;
    let (_b, _) = present(&registry, 2).await;
    let me = machine_id(1);
    let mut view = registry.agent_view(&me).await.unwrap();
    agent_converges(&registry, &me, &mut view).await;

    registry.put_unit(&global_unit("g.service")).await.unwrap();
    registry.put_unit(&global_unit("h.service")).await.unwrap();
    registry
        .apply_placements(
            leadership,
            &[
                place(&me, "a.service"),
                place(&me, "b.service"),
                place(&machine_id(2), "c.service"),
            ],
        )
        .await
        .unwrap();
    agent_converges(&registry, &me, &mut view).await;
    assert_eq!(
        view.snapshot().placements.len(),
        2,
        "only its own placements"
    );

    registry.delete_unit(&name("g.service")).await.unwrap();
    registry
        .apply_placements(leadership, &[unplace(&me, "a.service")])
        .await
        .unwrap();
    let mut metadata = fleet_registry::MetadataOverrides::new();
    metadata.insert("role".into(), Some("web".into()));
    assert!(registry
        .patch_machine_metadata(&me, &metadata)
        .await
        .unwrap());
    agent_converges(&registry, &me, &mut view).await;
    let snapshot = view.snapshot();
    assert_eq!(
        snapshot
            .machine
            .as_ref()
            .map(|m| m.metadata.get("role").cloned()),
        Some(Some("web".to_string()))
    );
    assert_eq!(names(&snapshot.global_units), ["h.service"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn moves_and_drains_are_followed_released_and_forgotten_with_a_dead_machine() {
    use fleet_registry::DrainStart;
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, lease_a) = present(&registry, 1).await;
    let (b, _) = present(&registry, 2).await;
    let leadership = registry
        .campaign(&machine_id(1), lease_a)
        .await
        .unwrap()
        .expect("machine 1 leads");
    let (one, two) = (machine_id(1), machine_id(2));
    let mut engine = registry.engine_view().await.unwrap();
    let mut agent = registry.agent_view(&one).await.unwrap();
    let ops = vec![
        place(&one, "a.service"),
        place(&one, "b.service"),
        place(&two, "c.service"),
    ];
    let revisions = registry.apply_placements(leadership, &ops).await.unwrap();
    engine.applied(&ops, &revisions);

    // A move: the placement goes, the machine is recorded as stopping the unit.
    let moves = vec![
        PlacementOp::Move {
            machine: one.clone(),
            name: name("a.service"),
        },
        PlacementOp::Move {
            machine: two.clone(),
            name: name("c.service"),
        },
    ];
    let revisions = registry.apply_placements(leadership, &moves).await.unwrap();
    engine.applied(&moves, &revisions);
    assert!(engine
        .snapshot()
        .stopping
        .contains(&(one.clone(), name("a.service"))));
    engine_converges(&registry, &mut engine).await;
    agent_converges(&registry, &one, &mut agent).await;
    assert_eq!(
        agent.snapshot().stopping.keys().collect::<Vec<_>>(),
        [&name("a.service")],
        "only its own"
    );
    assert_eq!(registry.placements().await.unwrap().len(), 1, "b is left");

    // The agent says it has stopped it: a release of another record of it (an older one's,
    // applied late) removes nothing; one of the record it has does.
    let created = agent.snapshot().stopping[&name("a.service")];
    let stale = registry
        .release_stopping(&one, &[(name("a.service"), created - 1)])
        .await
        .unwrap_err();
    assert!(matches!(stale, Error::Conflict(_)), "{stale:?}");
    agent_converges(&registry, &one, &mut agent).await;
    assert_eq!(
        agent.snapshot().stopping.len(),
        1,
        "released by a stale release"
    );
    registry
        .release_stopping(&one, &[(name("a.service"), created)])
        .await
        .unwrap();
    engine_converges(&registry, &mut engine).await;
    agent_converges(&registry, &one, &mut agent).await;
    assert!(agent.snapshot().stopping.is_empty());
    assert_eq!(engine.snapshot().stopping.len(), 1, "machine 2's is left");

    // Drains: only of members, once; followed by the engine's view.
    assert_eq!(registry.drain(&one).await.unwrap(), DrainStart::Started);
    assert_eq!(
        registry.drain(&one).await.unwrap(),
        DrainStart::AlreadyDraining
    );
    assert_eq!(
        registry.drain(&machine_id(9)).await.unwrap(),
        DrainStart::Unknown
    );
    let drains = registry.drains().await.unwrap();
    assert_eq!(drains.len(), 1);
    assert_eq!((drains[0].units, drains[0].stopping), (1, 0), "b is left");
    assert!(!drains[0].drained());
    let status = registry.drain_status(&two).await.unwrap();
    assert_eq!(status, None);
    engine_converges(&registry, &mut engine).await;
    assert!(engine.snapshot().draining.contains(&one));
    assert!(registry.undrain(&one).await.unwrap());
    assert!(!registry.undrain(&one).await.unwrap());
    engine_converges(&registry, &mut engine).await;
    assert!(engine.snapshot().draining.is_empty());

    // A machine declared dead stops nothing any more: its records go with it, its versions
    // of global units too.
    registry.put_unit(&global_unit("g.service")).await.unwrap();
    assert!(registry
        .set_version(
            &two,
            &name("g.service"),
            "u1",
            &unit("x.service").options,
            leadership
        )
        .await
        .unwrap());
    assert_eq!(
        registry.agent_snapshot(&two).await.unwrap().versions.len(),
        1
    );
    drop(b);
    eventually("machine 2 is gone", EXPIRY_DEADLINE, || async {
        !registry
            .machines()
            .await
            .unwrap()
            .iter()
            .any(|m| m.id == two)
    })
    .await;
    // Its lease lapsed, but it is a member still: an update waits for it.
    assert!(registry
        .global_unit_on(&name("g.service"), &two)
        .await
        .unwrap()
        .unwrap()
        .content
        .is_some());
    let (_, members) = registry.cluster_members().await.unwrap();
    let judged = members
        .iter()
        .find(|e| e.member.machine.id == two)
        .expect("machine 2 is a member")
        .mod_revision;
    assert!(registry
        .declare_dead(leadership, &two, judged, &[])
        .await
        .unwrap());
    engine_converges(&registry, &mut engine).await;
    assert!(engine.snapshot().stopping.is_empty());
    assert!(registry
        .agent_snapshot(&two)
        .await
        .unwrap()
        .versions
        .is_empty());
    assert_eq!(
        registry
            .global_unit_on(&name("g.service"), &two)
            .await
            .unwrap()
            .unwrap()
            .content,
        None,
        "declared dead: nothing to wait for"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machines_version_of_a_global_unit_applies_only_over_the_write_it_was_made_for() {
    use fleet_units::{UnitFile, UnitOption};
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, leadership) = leading(&registry, 1).await;
    let (_b, _) = present(&registry, 2).await;
    let (one, two) = (machine_id(1), machine_id(2));
    let g = name("g.service");
    let global = global_unit("g.service");
    let mut new = global.options.clone();
    new.push(UnitOption::new("Service", "Environment", "V=2"));
    let new_hash = UnitFile::from_options(new.clone()).hash();
    registry.put_unit(&global).await.unwrap();
    let mut agent = registry.agent_view(&one).await.unwrap();
    let runs = |agent: &AgentView| {
        let s = agent.snapshot();
        let unit = s.global_units.iter().find(|u| u.name == g).unwrap();
        UnitFile::from_options(s.global_options(unit).to_vec()).hash()
    };
    let content_on = |m: fleet_registry::MachineId| {
        let registry = registry.clone();
        let g = g.clone();
        async move {
            registry
                .global_unit_on(&g, &m)
                .await
                .unwrap()
                .unwrap()
                .content
        }
    };

    // Machine 1 gets the new content; machine 2 keeps the unit's.
    assert!(registry
        .set_version(&one, &g, "u1", &new, leadership)
        .await
        .unwrap());
    agent_converges(&registry, &one, &mut agent).await;
    assert_eq!(runs(&agent), new_hash);
    assert_eq!(content_on(one.clone()).await, Some(new_hash));
    assert_eq!(content_on(two.clone()).await, Some(global.hash()));
    assert_eq!(content_on(machine_id(9)).await, None, "not a member");

    // The unit destroyed and started again with the same content: its own content runs.
    registry.delete_unit(&g).await.unwrap();
    registry.put_unit(&global).await.unwrap();
    agent_converges(&registry, &one, &mut agent).await;
    assert_eq!(runs(&agent), global.hash());
    assert_eq!(content_on(one.clone()).await, Some(global.hash()));

    // Written over the new unit, then the unit's content changes, and changes back: its own
    // content runs, for good.
    assert!(registry
        .set_version(&one, &g, "u2", &new, leadership)
        .await
        .unwrap());
    agent_converges(&registry, &one, &mut agent).await;
    assert_eq!(runs(&agent), new_hash);
    let mut other = global.options.clone();
    other.push(UnitOption::new("Service", "Environment", "V=3"));
    assert!(registry
        .set_unit_options(&g, &other, Some(leadership))
        .await
        .unwrap());
    agent_converges(&registry, &one, &mut agent).await;
    assert_eq!(runs(&agent), UnitFile::from_options(other).hash());
    assert!(registry
        .set_unit_options(&g, &global.options, None)
        .await
        .unwrap());
    agent_converges(&registry, &one, &mut agent).await;
    assert_eq!(runs(&agent), global.hash(), "back to its base: still moot");
    assert_eq!(content_on(one.clone()).await, Some(global.hash()));

    // Its desired state written (stop, start): moot too.
    assert!(registry
        .set_version(&one, &g, "u3", &new, leadership)
        .await
        .unwrap());
    agent_converges(&registry, &one, &mut agent).await;
    assert_eq!(runs(&agent), new_hash);
    assert!(registry
        .set_desired_state(&g, fleet_registry::JobState::Loaded)
        .await
        .unwrap());
    agent_converges(&registry, &one, &mut agent).await;
    assert_eq!(runs(&agent), global.hash());

    // Removed: gone from the view.
    registry
        .clear_versions(&[(one.clone(), g.clone())], leadership)
        .await
        .unwrap();
    agent_converges(&registry, &one, &mut agent).await;
    assert!(agent.snapshot().versions.is_empty());
    assert!(
        !registry
            .set_version(&one, &name("none.service"), "u3", &new, leadership)
            .await
            .unwrap(),
        "no such global unit"
    );
}

/// What a [`fleet_registry::Progress`] says of `names` (how many machines each is placed on,
/// and whether one reports it active), against what fresh reads of the placements and the
/// states say.
async fn progress_converges(
    registry: &Registry,
    progress: &mut fleet_registry::Progress,
    names: &[&str],
) {
    let until = Instant::now() + DEADLINE;
    loop {
        let placements = registry.placements().await.unwrap();
        let states = registry.unit_states().await.unwrap();
        let fresh: Vec<(u32, bool)> = names
            .iter()
            .map(|n| {
                let placed = placements.iter().filter(|(_, p)| p.name == name(n)).count();
                let active = states
                    .iter()
                    .any(|s| s.name == name(n) && fleet_registry::reports_active(s));
                (placed as u32, active)
            })
            .collect();
        let kept: Vec<(u32, bool)> = names
            .iter()
            .map(|n| (progress.placements(&name(n)), progress.is_active(&name(n))))
            .collect();
        if kept == fresh {
            return;
        }
        assert!(
            Instant::now() < until,
            "the progress differs from fresh reads of {names:?}: kept {kept:?}, fresh {fresh:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), progress.changed()).await;
    }
}

/// More states than one read takes (5,000 a request) are all read when the progress is opened.
#[tokio::test(flavor = "multi_thread")]
async fn progress_opened_over_more_states_than_a_chunk_reads_them_all() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, lease) = present(&registry, 1).await;
    let all: Vec<String> = (0..5_050).map(|i| format!("u{i:05}.service")).collect();
    let states: Vec<fleet_registry::UnitState> = all.iter().map(|n| state(1, n)).collect();
    registry.publish_states(lease, &states).await.unwrap();
    let progress = registry.follow_progress().await.unwrap();
    let missing: Vec<&String> = all
        .iter()
        .filter(|n| !progress.is_active(&name(n)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} states not read, {:?}…",
        missing.len(),
        missing.first()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_kept_from_a_watch_says_what_fresh_reads_say() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, lease_1) = present(&registry, 1).await;
    let (_b, lease_2) = present(&registry, 2).await;
    let leadership = registry
        .campaign(&machine_id(1), lease_1)
        .await
        .unwrap()
        .expect("machine 1 leads");
    let all = ["a.service", "b.service", "c.service", "d.service"];
    for n in all {
        registry.put_unit(&unit(n)).await.unwrap();
    }
    // Before it is opened: a placed on 1 and active there, b placed on 2 and not reported.
    let ops = [
        place(&machine_id(1), "a.service"),
        place(&machine_id(2), "b.service"),
    ];
    registry.apply_placements(leadership, &ops).await.unwrap();
    registry
        .publish_state(lease_1, &state(1, "a.service"))
        .await
        .unwrap();
    let mut progress = registry.follow_progress().await.unwrap();
    assert_eq!(progress.placements(&name("a.service")), 1);
    assert!(progress.is_active(&name("a.service")));
    assert!(progress.is_placed(&name("b.service")));
    assert!(!progress.is_active(&name("b.service")));
    assert!(!progress.is_placed(&name("c.service")));
    progress_converges(&registry, &mut progress, &all).await;

    // c placed and reported; b moved from 2 to 1 and reported; a no longer active; d reported
    // by a machine it is not placed on (it still counts as reported active).
    let ops = [
        place(&machine_id(1), "c.service"),
        unplace(&machine_id(2), "b.service"),
        place(&machine_id(1), "b.service"),
    ];
    registry.apply_placements(leadership, &ops).await.unwrap();
    let mut stopped = state(1, "a.service");
    stopped.systemd_active_state = "deactivating".into();
    registry
        .publish_states(
            lease_1,
            &[state(1, "b.service"), state(1, "c.service"), stopped],
        )
        .await
        .unwrap();
    registry
        .publish_state(lease_2, &state(2, "d.service"))
        .await
        .unwrap();
    let mut concerned = std::collections::BTreeSet::new();
    let until = Instant::now() + DEADLINE;
    while concerned.len() < all.len() {
        assert!(Instant::now() < until, "changes of {concerned:?} only");
        if let Ok(units) =
            tokio::time::timeout(Duration::from_millis(200), progress.changed()).await
        {
            concerned.extend(units.unwrap().into_iter().map(|n| n.to_string()));
        }
    }
    assert_eq!(
        concerned,
        all.iter().map(|n| n.to_string()).collect(),
        "the units the changes concern"
    );
    progress_converges(&registry, &mut progress, &all).await;
    assert_eq!(progress.placements(&name("b.service")), 1);
    assert!(!progress.is_active(&name("a.service")));
    assert!(progress.is_active(&name("d.service")));

    // A unit placed twice (the registry refuses it: written by hand here) counts twice; a
    // machine's lease revoked takes its states with it.
    let placement = Placement::for_unit(&unit("c.service"));
    let value = serde_json::to_vec(&placement).unwrap();
    etcd.put_raw(&format!("placements/{}/c.service", machine_id(2)), &value)
        .await;
    etcd.put_raw(&format!("placed/c.service/{}", machine_id(2)), b"")
        .await;
    let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    client.lease_revoke(lease_2).await.unwrap();
    progress_converges(&registry, &mut progress, &all).await;
    assert_eq!(progress.placements(&name("c.service")), 2);
    assert!(!progress.is_active(&name("d.service")));

    // The same placement and the same state written again count once: taken off once, b is
    // placed nowhere and reported by nobody.
    registry
        .apply_placements(leadership, &[place(&machine_id(1), "b.service")])
        .await
        .unwrap();
    registry
        .publish_state(lease_1, &state(1, "b.service"))
        .await
        .unwrap();
    progress_converges(&registry, &mut progress, &all).await;
    assert_eq!(progress.placements(&name("b.service")), 1);
    assert!(progress.is_active(&name("b.service")));
    registry
        .apply_placements(leadership, &[unplace(&machine_id(1), "b.service")])
        .await
        .unwrap();
    let mut stopped = state(1, "b.service");
    stopped.systemd_active_state = "inactive".into();
    registry.publish_state(lease_1, &stopped).await.unwrap();
    progress_converges(&registry, &mut progress, &all).await;
    assert!(!progress.is_placed(&name("b.service")));
    assert!(!progress.is_active(&name("b.service")));
}

/// A snapshot larger than one request reads (5,000 units or placements a request) holds every
/// unit and placement, at one revision, and a view opened on it says what a fresh read says.
#[tokio::test(flavor = "multi_thread")]
async fn an_engine_snapshot_larger_than_a_request_is_read_whole() {
    use futures_util::{stream, StreamExt};
    const UNITS: usize = 11_000;
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, leadership) = leading(&registry, 1).await;
    let names: Vec<String> = (0..UNITS).map(|i| format!("u{i:05}.service")).collect();
    stream::iter(&names)
        .for_each_concurrent(64, |n| {
            let registry = registry.clone();
            async move { registry.put_unit(&unit(n)).await.unwrap() }
        })
        .await;
    let ops: Vec<PlacementOp> = names.iter().map(|n| place(&machine_id(1), n)).collect();
    registry.apply_placements(leadership, &ops).await.unwrap();

    let requests = registry.kv_requests();
    let snapshot = registry.engine_snapshot().await.unwrap();
    assert_eq!(snapshot.units.len(), UNITS);
    assert_eq!(snapshot.placements.len(), UNITS);
    assert_eq!(
        registry.kv_requests() - requests,
        5,
        "one transaction, then two more chunks each of units and placements"
    );
    let mut view = registry.engine_view().await.unwrap();
    registry.put_unit(&unit("late.service")).await.unwrap();
    engine_converges(&registry, &mut view).await;
}
