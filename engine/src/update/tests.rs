//! Rolling updates' steps, against a simulated cluster whose machines take one step to
//! restart a unit on the content it is given.

use std::collections::BTreeSet;

use super::*;
use fleet_registry::UpdateState;
use fleet_units::{UnitFile, UnitOption};

fn content(exec: &str) -> Vec<UnitOption> {
    UnitFile::parse(&format!("[Service]\nExecStart={exec}\n"))
        .unwrap()
        .into_options()
}

fn hash(exec: &str) -> UnitHash {
    UnitFile::from_options(content(exec)).hash()
}

fn update(units: usize, max_parallel: u32, auto_revert: bool) -> Update {
    Update {
        id: "u1".into(),
        created_ms: 0,
        options: content("/bin/new"),
        max_parallel,
        min_healthy_ms: 1_000,
        healthy_deadline_ms: 10_000,
        auto_revert,
        state: UpdateState::Running,
        reason: None,
        ended_ms: None,
        previous: vec![fleet_registry::PreviousContent {
            hash: hash("/bin/old"),
            options: content("/bin/old"),
        }],
        stamped_by: 1,
        units: (1..=units)
            .map(|i| {
                UpdateUnit::pending(
                    UnitName::parse(&format!("web@{i}.service")).unwrap(),
                    hash("/bin/old"),
                )
            })
            .collect(),
    }
}

fn machine(i: usize) -> MachineId {
    MachineId::parse(&format!("{i:032x}")).unwrap()
}

/// An update of the global unit `agent.service` that runs on `machines` machines: one entry
/// per machine, then its own content.
fn global_update(machines: usize, max_parallel: u32, auto_revert: bool) -> Update {
    global_updates(&["agent.service"], machines, max_parallel, auto_revert)
}

/// An update of the global units `names`, each on `machines` machines, in the order the API
/// makes: each unit's machines, then its own content.
fn global_updates(names: &[&str], machines: usize, max_parallel: u32, auto_revert: bool) -> Update {
    let mut u = update(0, max_parallel, auto_revert);
    for name in names {
        let name = UnitName::parse(name).unwrap();
        for i in 1..=machines {
            let mut entry = UpdateUnit::pending(name.clone(), hash("/bin/old"));
            entry.machine = Some(machine(i));
            entry.global = true;
            u.units.push(entry);
        }
        let mut own = UpdateUnit::pending(name, hash("/bin/old"));
        own.global = true;
        u.units.push(own);
    }
    u
}

/// What a machine runs of a unit: its content and systemd's active state.
type Running = Option<(UnitHash, String)>;

/// Each unit's content and what its machine runs; a unit given content restarts on it at the
/// next step (down meanwhile); the new content fails when `bad` (except for the units
/// `spared`). A global unit has its own content, written at a revision, and each of its
/// machines runs its version of it when it has one written over that very revision,
/// otherwise the unit's content.
struct Cluster {
    units: BTreeMap<UnitName, (UnitHash, Running)>,
    /// Per global unit: its own content and the revision it was written at.
    globals: BTreeMap<UnitName, (UnitHash, u64)>,
    /// Per global unit and machine: its version (revision written over, content) and what
    /// it runs.
    machines: BTreeMap<Target, (Option<(u64, UnitHash)>, Running)>,
    bad: bool,
    spared: BTreeSet<UnitName>,
    revision: u64,
}

impl Cluster {
    fn new(update: &Update, bad: bool) -> Cluster {
        let old = hash("/bin/old");
        let running = || Some((old, "active".to_string()));
        let mut cluster = Cluster {
            units: BTreeMap::new(),
            globals: BTreeMap::new(),
            machines: BTreeMap::new(),
            bad,
            spared: BTreeSet::new(),
            revision: 1,
        };
        for u in &update.units {
            match (&u.machine, u.global) {
                (Some(_), _) => {
                    cluster.machines.insert(target(u), (None, running()));
                }
                (None, true) => {
                    cluster.globals.insert(u.name.clone(), (old, 1));
                }
                (None, false) => {
                    cluster.units.insert(u.name.clone(), (old, running()));
                }
            }
        }
        cluster
    }

    /// What a machine of a global unit is to run.
    fn effective(&self, (name, _): &Target, version: &Option<(u64, UnitHash)>) -> UnitHash {
        let (own, written) = self.globals[name];
        match version {
            Some((over, content)) if *over == written => *content,
            _ => own,
        }
    }

    fn observe(&self) -> BTreeMap<Target, Observed> {
        let seen = |content: UnitHash, running: &Option<(UnitHash, String)>| Observed {
            content: Some(content),
            desired: JobState::Launched,
            running: running.clone(),
            health: None,
        };
        let mut observed: BTreeMap<Target, Observed> = self
            .units
            .iter()
            .map(|(name, (content, running))| ((name.clone(), None), seen(*content, running)))
            .collect();
        for (name, (own, _)) in &self.globals {
            observed.insert((name.clone(), None), seen(*own, &None));
        }
        for (target, (version, running)) in &self.machines {
            observed.insert(
                target.clone(),
                seen(self.effective(target, version), running),
            );
        }
        observed
    }

    /// Machines catch up with the content they were given.
    fn tick(&mut self) {
        let new = hash("/bin/new");
        let (bad, spared) = (self.bad, self.spared.clone());
        let restart = |name: &UnitName, content: UnitHash, running: &mut Running| {
            if running.as_ref().map(|(h, _)| *h) != Some(content) {
                let active = if content == new && bad && !spared.contains(name) {
                    "failed"
                } else {
                    "active"
                };
                *running = Some((content, active.to_string()));
            }
        };
        for (name, (content, running)) in self.units.iter_mut() {
            restart(name, *content, running);
        }
        let targets: Vec<Target> = self.machines.keys().cloned().collect();
        for target in targets {
            let content = self.effective(&target, &self.machines[&target].0);
            restart(
                &target.0,
                content,
                &mut self.machines.get_mut(&target).unwrap().1,
            );
        }
    }

    fn apply(&mut self, actions: &[Action]) {
        let new = hash("/bin/new");
        for action in actions {
            match action {
                Action::Write((name, None)) | Action::Revert((name, None), _) => {
                    let to = match action {
                        Action::Revert(_, from) => *from,
                        _ => new,
                    };
                    if let Some(own) = self.globals.get_mut(name) {
                        self.revision += 1;
                        *own = (to, self.revision);
                    } else {
                        let unit = self.units.get_mut(name).unwrap();
                        unit.0 = to;
                        unit.1 = None;
                    }
                }
                Action::Write(target) => {
                    let (_, written) = self.globals[&target.0];
                    self.machines.get_mut(target).unwrap().0 = Some((written, new));
                }
                Action::Revert(target, _) => self.machines.get_mut(target).unwrap().0 = None,
                Action::Forget(name, machines) => {
                    for m in machines {
                        self.machines
                            .get_mut(&(name.clone(), Some(m.clone())))
                            .unwrap()
                            .0 = None;
                    }
                }
            }
        }
        // A machine whose content changed is down until the next tick.
        let targets: Vec<Target> = self.machines.keys().cloned().collect();
        for target in targets {
            let content = self.effective(&target, &self.machines[&target].0);
            let entry = self.machines.get_mut(&target).unwrap();
            if entry.1.as_ref().map(|(h, _)| *h) != Some(content) {
                entry.1 = None;
            }
        }
    }

    /// Units (or machines of a global unit) not running their content, active.
    fn down(&self) -> usize {
        let units = self
            .units
            .values()
            .filter(|(content, running)| {
                running.as_ref() != Some(&(*content, "active".to_string()))
            })
            .count();
        let machines = self
            .machines
            .iter()
            .filter(|(target, (version, running))| {
                running.as_ref() != Some(&(self.effective(target, version), "active".to_string()))
            })
            .count();
        units + machines
    }

    /// What each machine of a global unit runs.
    fn machines_run(&self) -> Vec<Option<UnitHash>> {
        self.machines
            .values()
            .map(|(_, running)| running.as_ref().map(|(h, _)| *h))
            .collect()
    }
}

/// Runs steps every 250 ms until the update is over: its last record, and the most units seen
/// down at once.
fn run(mut u: Update, cluster: &mut Cluster, pause_at: Option<u64>) -> (Update, usize) {
    let mut most_down = 0;
    for tick in 0..1_000u64 {
        let now = tick * 250;
        if pause_at == Some(now) {
            u.state = UpdateState::Paused;
        }
        let (next, actions) = step(&u, &cluster.observe(), &BTreeMap::new(), now, 1);
        cluster.apply(&actions);
        most_down = most_down.max(cluster.down());
        u = next;
        if u.state.is_final() {
            return (u, most_down);
        }
        cluster.tick();
        most_down = most_down.max(cluster.down());
    }
    panic!("the update did not end: {u:?}");
}

#[test]
fn updates_max_parallel_units_at_a_time_each_healthy_before_the_next() {
    let u = update(6, 2, true);
    let mut cluster = Cluster::new(&u, false);
    let (done, most_down) = run(u, &mut cluster, None);
    assert_eq!(done.state, UpdateState::Done, "{done:?}");
    assert!(most_down <= 2, "{most_down} down at once");
    assert!(done.units.iter().all(|u| u.phase == Phase::Healthy));
    let new = hash("/bin/new");
    assert!(cluster.units.values().all(|(c, _)| *c == new));
    // Each waited its min_healthy: three rounds of at least a second.
    assert!(done.ended_ms.unwrap() >= 3_000, "{:?}", done.ended_ms);
}

#[test]
fn a_failure_reverts_every_touched_unit_within_the_bound() {
    let u = update(6, 2, true);
    let mut cluster = Cluster::new(&u, true);
    let (reverted, most_down) = run(u, &mut cluster, None);
    assert_eq!(reverted.state, UpdateState::Reverted, "{reverted:?}");
    assert!(most_down <= 2, "{most_down} down at once");
    assert!(reverted
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("web@1.service") && r.contains("failed")));
    let old = hash("/bin/old");
    assert!(cluster.units.values().all(|(c, _)| *c == old));
    // Only the first two were touched; the rest never changed.
    let phases: Vec<Phase> = reverted.units.iter().map(|u| u.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Reverted,
            Phase::Reverted,
            Phase::Pending,
            Phase::Pending,
            Phase::Pending,
            Phase::Pending
        ]
    );
}

#[test]
fn without_auto_revert_a_failure_stops_the_update() {
    let u = update(6, 2, false);
    let mut cluster = Cluster::new(&u, true);
    let (failed, _) = run(u, &mut cluster, None);
    assert_eq!(failed.state, UpdateState::Failed);
    let new = hash("/bin/new");
    assert_eq!(
        cluster.units.values().filter(|(c, _)| *c == new).count(),
        2,
        "nothing started after the failure"
    );
}

#[test]
fn a_paused_update_starts_nothing_and_resumes() {
    let u = update(4, 1, true);
    let mut cluster = Cluster::new(&u, false);
    // Paused at once: the first unit is in flight, judged, and nothing else starts.
    let mut now = 0;
    let (mut u, actions) = step(&u, &cluster.observe(), &BTreeMap::new(), now, 1);
    cluster.apply(&actions);
    u.state = UpdateState::Paused;
    for _ in 0..40 {
        now += 250;
        cluster.tick();
        let (next, actions) = step(&u, &cluster.observe(), &BTreeMap::new(), now, 1);
        cluster.apply(&actions);
        u = next;
    }
    assert_eq!(u.state, UpdateState::Paused);
    let phases: Vec<Phase> = u.units.iter().map(|u| u.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Healthy,
            Phase::Pending,
            Phase::Pending,
            Phase::Pending
        ]
    );
    u.state = UpdateState::Running;
    let (done, most_down) = run(u, &mut cluster, None);
    assert_eq!(done.state, UpdateState::Done);
    assert!(most_down <= 1);
}

#[test]
fn a_unit_that_never_gets_healthy_fails_at_its_deadline_and_a_break_starts_the_wait_again() {
    let mut u = update(1, 1, false);
    let name = u.units[0].name.clone();
    let new = hash("/bin/new");
    let observed = |running: Option<(UnitHash, &str)>| {
        BTreeMap::from([(
            (name.clone(), None),
            Observed {
                content: Some(new),
                desired: JobState::Launched,
                running: running.map(|(h, a)| (h, a.to_string())),
                health: None,
            },
        )])
    };
    u = step(&u, &observed(None), &BTreeMap::new(), 0, 1).0;
    assert_eq!(u.units[0].phase, Phase::Updating);
    // Active 900 ms, then a break: not healthy yet.
    u = step(
        &u,
        &observed(Some((new, "active"))),
        &BTreeMap::new(),
        100,
        1,
    )
    .0;
    u = step(
        &u,
        &observed(Some((new, "active"))),
        &BTreeMap::new(),
        1_000,
        1,
    )
    .0;
    u = step(
        &u,
        &observed(Some((new, "activating"))),
        &BTreeMap::new(),
        1_050,
        1,
    )
    .0;
    u = step(
        &u,
        &observed(Some((new, "active"))),
        &BTreeMap::new(),
        1_100,
        1,
    )
    .0;
    assert_eq!(u.units[0].phase, Phase::Updating);
    u = step(
        &u,
        &observed(Some((new, "active"))),
        &BTreeMap::new(),
        2_000,
        1,
    )
    .0;
    assert_eq!(
        u.units[0].phase,
        Phase::Updating,
        "the wait started again at 1,100"
    );
    // Never running long enough: failed at the deadline.
    u = step(
        &u,
        &observed(Some((new, "activating"))),
        &BTreeMap::new(),
        10_000,
        1,
    )
    .0;
    assert_eq!(u.units[0].phase, Phase::Failed);
    assert_eq!(u.state, UpdateState::Failed);
    assert!(u
        .reason
        .as_deref()
        .unwrap()
        .contains("not healthy within 10 s"));
}

#[test]
fn units_that_do_not_run_are_done_once_written_and_final_updates_do_nothing() {
    let mut u = update(2, 2, true);
    let new = hash("/bin/new");
    let loaded: BTreeMap<Target, Observed> = u
        .units
        .iter()
        .map(|x| {
            (
                (x.name.clone(), None),
                Observed {
                    content: Some(new),
                    desired: JobState::Loaded,
                    running: None,
                    health: None,
                },
            )
        })
        .collect();
    u = step(&u, &loaded, &BTreeMap::new(), 0, 1).0;
    u = step(&u, &loaded, &BTreeMap::new(), 250, 1).0;
    assert_eq!(u.state, UpdateState::Done);
    let (again, actions) = step(&u, &loaded, &BTreeMap::new(), 500, 1);
    assert_eq!((again, actions), (u, vec![]));
}

#[test]
fn a_unit_that_does_not_run_again_after_its_revert_fails_the_update() {
    let u = update(4, 1, true);
    let old = hash("/bin/old");
    let new = hash("/bin/new");
    let name = u.units[0].name.clone();
    let seen = |content: UnitHash, running: (UnitHash, &str)| {
        BTreeMap::from([(
            (name.clone(), None),
            Observed {
                content: Some(content),
                desired: JobState::Launched,
                running: Some((running.0, running.1.to_string())),
                health: None,
            },
        )])
    };
    let (u, _) = step(&u, &BTreeMap::new(), &BTreeMap::new(), 0, 1);
    let (u, _) = step(&u, &seen(new, (new, "failed")), &BTreeMap::new(), 250, 1);
    assert_eq!(u.state, UpdateState::Reverting);
    assert_eq!(u.units[0].phase, Phase::Reverting);
    // The old content fails too: the update ends there, the other units untouched.
    let (u, actions) = step(&u, &seen(old, (old, "failed")), &BTreeMap::new(), 500, 1);
    assert_eq!(u.state, UpdateState::Failed, "{u:?}");
    assert!(actions.is_empty(), "{actions:?}");
    assert!(u.reason.as_deref().unwrap().contains("did not run again"));
    assert!(u.units[1..].iter().all(|x| x.phase == Phase::Pending));
}

#[test]
fn a_new_leader_times_the_units_in_flight_on_its_own_clock() {
    let u = update(1, 1, false);
    let name = u.units[0].name.clone();
    let new = hash("/bin/new");
    let (u, _) = step(&u, &BTreeMap::new(), &BTreeMap::new(), 0, 1);
    let starting = BTreeMap::from([(
        (name.clone(), None),
        Observed {
            content: Some(new),
            desired: JobState::Launched,
            running: Some((new, "activating".to_string())),
            health: None,
        },
    )]);
    // Leader 2's clock is 20 s ahead: its deadline counts from its own first look.
    let (u, _) = step(&u, &starting, &BTreeMap::new(), 20_000, 2);
    assert_eq!(u.units[0].phase, Phase::Updating);
    assert_eq!(u.units[0].since_ms, Some(20_000));
    assert_eq!(u.stamped_by, 2);
    let (u, _) = step(&u, &starting, &BTreeMap::new(), 30_000, 2);
    assert_eq!(u.units[0].phase, Phase::Failed, "its own deadline passed");
}

#[test]
fn a_declared_health_check_must_pass_for_a_unit_to_be_healthy() {
    let mut u = update(1, 1, false);
    u.options.push(UnitOption {
        section: "X-Fleet".into(),
        name: "HealthCheck".into(),
        value: "/usr/bin/check".into(),
    });
    let name = u.units[0].name.clone();
    let new = u.hash();
    let observed = |health: Option<&str>| {
        BTreeMap::from([(
            (name.clone(), None),
            Observed {
                content: Some(new),
                desired: JobState::Launched,
                running: Some((new, "active".to_string())),
                health: health.map(str::to_string),
            },
        )])
    };
    u = step(&u, &observed(None), &BTreeMap::new(), 0, 1).0;
    // Active all along, its check failing: never healthy, failed at the deadline with why.
    for t in [100, 2_000, 5_000] {
        u = step(
            &u,
            &observed(Some("failing: exit status: 1")),
            &BTreeMap::new(),
            t,
            1,
        )
        .0;
        assert_eq!(u.units[0].phase, Phase::Updating, "at {t}");
    }
    let failed = step(
        &u,
        &observed(Some("failing: exit status: 1")),
        &BTreeMap::new(),
        10_000,
        1,
    )
    .0;
    assert_eq!(failed.units[0].phase, Phase::Failed);
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap()
            .contains("health check failing: exit status: 1"),
        "{:?}",
        failed.reason
    );
    // Passing for min_healthy: healthy.
    u = step(&u, &observed(Some("ok")), &BTreeMap::new(), 6_000, 1).0;
    u = step(&u, &observed(Some("ok")), &BTreeMap::new(), 7_000, 1).0;
    assert_eq!(u.units[0].phase, Phase::Healthy);
    assert_eq!(u.state, UpdateState::Done);
}

#[test]
fn a_global_unit_is_updated_machine_by_machine_then_its_own_content() {
    let u = global_update(5, 2, true);
    let mut cluster = Cluster::new(&u, false);
    let new = hash("/bin/new");
    let name = UnitName::parse("agent.service").unwrap();
    // First step: two machines get versions; the unit's own content is untouched.
    let (first, actions) = step(&u, &cluster.observe(), &BTreeMap::new(), 0, 1);
    assert_eq!(
        actions,
        vec![
            Action::Write((name.clone(), Some(machine(1)))),
            Action::Write((name.clone(), Some(machine(2))))
        ]
    );
    assert_eq!(first.units.last().unwrap().phase, Phase::Pending);
    cluster.apply(&actions);
    let (done, most_down) = run(first, &mut cluster, None);
    assert_eq!(done.state, UpdateState::Done, "{done:?}");
    assert!(most_down <= 2, "{most_down} machines down at once");
    assert_eq!(
        cluster.globals[&name].0, new,
        "its own content is the new one"
    );
    assert!(cluster.machines_run().iter().all(|r| *r == Some(new)));
    assert!(
        cluster.machines.values().all(|(v, _)| v.is_none()),
        "the versions are removed once done"
    );
}

#[test]
fn a_global_unit_failing_on_a_machine_is_reverted_machine_by_machine() {
    let u = global_update(5, 2, true);
    let mut cluster = Cluster::new(&u, true);
    let (reverted, most_down) = run(u, &mut cluster, None);
    assert_eq!(reverted.state, UpdateState::Reverted, "{reverted:?}");
    assert!(most_down <= 2, "{most_down} machines down at once");
    let old = hash("/bin/old");
    let name = UnitName::parse("agent.service").unwrap();
    assert_eq!(
        cluster.globals[&name].0, old,
        "its own content never changed"
    );
    assert!(cluster.machines_run().iter().all(|r| *r == Some(old)));
    assert!(cluster.machines.values().all(|(v, _)| v.is_none()));
}

#[test]
fn a_machine_gone_from_a_global_update_is_not_waited_for() {
    let mut u = global_update(2, 1, false);
    let name = UnitName::parse("agent.service").unwrap();
    let new = hash("/bin/new");
    let seen = |content: Option<UnitHash>| Observed {
        content,
        desired: JobState::Launched,
        running: None,
        health: None,
    };
    u = step(&u, &BTreeMap::new(), &BTreeMap::new(), 0, 1).0;
    assert_eq!(u.units[0].phase, Phase::Updating);
    // Machine 1 is gone: nothing to wait for there; machine 2 goes next.
    let gone = BTreeMap::from([((name.clone(), Some(machine(1))), seen(None))]);
    let (next, actions) = step(&u, &gone, &BTreeMap::new(), 250, 1);
    assert_eq!(next.units[0].phase, Phase::Healthy);
    assert_eq!(
        actions,
        vec![Action::Write((name.clone(), Some(machine(2))))]
    );
    // Once machine 2 is healthy, the unit's own content is written, taking nothing down.
    let mut u = next;
    let healthy = || {
        BTreeMap::from([(
            (name.clone(), Some(machine(2))),
            Observed {
                content: Some(new),
                desired: JobState::Launched,
                running: Some((new, "active".to_string())),
                health: None,
            },
        )])
    };
    u = step(&u, &healthy(), &BTreeMap::new(), 500, 1).0;
    let (next, actions) = step(&u, &healthy(), &BTreeMap::new(), 2_000, 1);
    assert_eq!(next.units[1].phase, Phase::Healthy);
    assert_eq!(actions, vec![Action::Write((name.clone(), None))]);
    let own = BTreeMap::from([((name.clone(), None), seen(Some(new)))]);
    let (done, actions) = step(&next, &own, &BTreeMap::new(), 2_250, 1);
    assert_eq!(done.state, UpdateState::Done);
    assert_eq!(
        actions,
        vec![Action::Forget(name, vec![machine(1), machine(2)])]
    );
}

#[test]
fn global_units_own_content_is_written_only_once_every_machine_of_every_unit_is_healthy() {
    let u = global_updates(&["a.service", "b.service"], 3, 1, true);
    let (a, b) = (
        UnitName::parse("a.service").unwrap(),
        UnitName::parse("b.service").unwrap(),
    );
    // b's new content fails, a's does not: a's machines are healthy before b fails.
    let mut cluster = Cluster::new(&u, true);
    cluster.spared.insert(a.clone());
    let (reverted, most_down) = run(u.clone(), &mut cluster, None);
    assert_eq!(reverted.state, UpdateState::Reverted, "{reverted:?}");
    assert!(most_down <= 1, "{most_down} machines down at once");
    let old = hash("/bin/old");
    assert_eq!(
        cluster.globals[&a],
        (old, 1),
        "a's own content never written"
    );
    assert_eq!(cluster.globals[&b], (old, 1));
    assert!(cluster.machines_run().iter().all(|r| *r == Some(old)));

    // Both healthy: neither own content is written before all six machines are healthy.
    let mut cluster = Cluster::new(&u, false);
    let mut u = u;
    let mut now = 0;
    loop {
        let (next, actions) = step(&u, &cluster.observe(), &BTreeMap::new(), now, 1);
        let writes_own = actions
            .iter()
            .any(|a| matches!(a, Action::Write((_, None))));
        if writes_own {
            assert!(
                next.units
                    .iter()
                    .filter(|x| x.machine.is_some())
                    .all(|x| x.phase == Phase::Healthy),
                "own content written early: {next:?}"
            );
        }
        cluster.apply(&actions);
        u = next;
        if u.state.is_final() {
            break;
        }
        cluster.tick();
        now += 250;
        assert!(now < 1_000_000, "the update did not end");
    }
    assert_eq!(u.state, UpdateState::Done);
    let new = hash("/bin/new");
    assert_eq!((cluster.globals[&a].0, cluster.globals[&b].0), (new, new));
    assert!(cluster.machines_run().iter().all(|r| *r == Some(new)));
}

#[test]
fn a_version_applies_only_over_the_write_it_was_made_for() {
    // The simulation's rule, as the registry's: a machine whose version was written over an
    // earlier write of the unit runs the unit's own content, even when that content is back
    // to what it was.
    let u = global_update(1, 1, false);
    let name = UnitName::parse("agent.service").unwrap();
    let mut cluster = Cluster::new(&u, false);
    let one = (name.clone(), Some(machine(1)));
    cluster.apply(&[Action::Write(one.clone())]);
    cluster.tick();
    assert_eq!(cluster.machines_run(), [Some(hash("/bin/new"))]);
    let old = hash("/bin/old");
    cluster.apply(&[Action::Revert((name.clone(), None), old)]);
    cluster.tick();
    assert_eq!(cluster.machines_run(), [Some(old)]);
}

#[test]
fn max_unavailable_counts_instances_stopping_for_a_drain() {
    let mut u = update(3, 3, false);
    u.options.push(UnitOption {
        section: "X-Fleet".into(),
        name: "MaxUnavailable".into(),
        value: "2".into(),
    });
    let cluster = Cluster::new(&u, false);
    let template = UnitName::parse("web@.service").unwrap();
    // One instance of web@ stops for a drain: one more may go down, not three.
    let stopping = BTreeMap::from([(template.clone(), 1)]);
    let (next, actions) = step(&u, &cluster.observe(), &stopping, 0, 1);
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(next.units[0].phase, Phase::Updating);
    // Two stopping: none.
    let stopping = BTreeMap::from([(template, 2)]);
    let (_, actions) = step(&u, &cluster.observe(), &stopping, 0, 1);
    assert!(actions.is_empty(), "{actions:?}");
    // None stopping: two, the template's bound (its max_parallel of 3 notwithstanding).
    let (_, actions) = step(&u, &cluster.observe(), &BTreeMap::new(), 0, 1);
    assert_eq!(actions.len(), 2, "{actions:?}");
}
