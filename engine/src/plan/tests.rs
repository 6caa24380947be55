//! Tests of [`plan`]: examples per rule, and properties over random clusters.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

use fleet_registry::{JobState, Machine, MachineEntry, MachineId, Placement, Unit};
use fleet_units::{UnitName, UnitOption};

fn mid(n: u8) -> MachineId {
    MachineId::parse(&format!("f1ee70{n:02x}{}", "0".repeat(24))).unwrap()
}

fn machine(n: u8) -> MachineEntry {
    MachineEntry {
        machine: Machine {
            id: mid(n),
            public_ip: format!("10.0.0.{n}"),
            metadata: Default::default(),
            version: String::new(),
            peer_address: None,
        },
        lease: 100 + n as i64,
    }
}

fn unit(name: &str, state: JobState) -> Unit {
    Unit {
        name: UnitName::parse(name).unwrap(),
        options: vec![UnitOption {
            section: "Service".into(),
            name: "ExecStart".into(),
            value: format!("/bin/echo {name}"),
        }],
        desired_state: state,
    }
}

fn global(name: &str) -> Unit {
    let mut u = unit(name, JobState::Launched);
    u.options.push(UnitOption {
        section: "X-Fleet".into(),
        name: "Global".into(),
        value: "true".into(),
    });
    u
}

fn snapshot(
    units: Vec<Unit>,
    machines: Vec<MachineEntry>,
    placements: Vec<(MachineId, Placement)>,
) -> EngineSnapshot {
    EngineSnapshot {
        revision: 1,
        leader: None,
        units,
        members: Vec::new(),
        readings: Default::default(),
        machines,
        placements,
        unplaceable: Default::default(),
        stopping: Default::default(),
        draining: Default::default(),
        updates: Default::default(),
    }
}

/// Member records of `machines`, so that what they are stopping holds units back.
fn members_of(machines: &[MachineEntry]) -> Vec<fleet_registry::MemberEntry> {
    machines
        .iter()
        .map(|m| fleet_registry::MemberEntry {
            member: fleet_registry::Member {
                machine: m.machine.clone(),
                seen_revision: 1,
                seen_members: machines.len(),
            },
            create_revision: 1,
            mod_revision: 1,
        })
        .collect()
}

/// Applies ops to the snapshot's placements, as etcd would.
fn apply(mut s: EngineSnapshot, ops: &[PlacementOp]) -> EngineSnapshot {
    for op in ops {
        match op {
            PlacementOp::Put {
                machine, placement, ..
            } => {
                s.placements
                    .retain(|(m, p)| !(m == machine && p.name == placement.name));
                s.placements.push((machine.clone(), placement.clone()));
            }
            PlacementOp::Delete { machine, name } => {
                s.placements
                    .retain(|(m, p)| !(m == machine && &p.name == name));
            }
            PlacementOp::Move { machine, name } => {
                s.placements
                    .retain(|(m, p)| !(m == machine && &p.name == name));
                s.stopping.insert((machine.clone(), name.clone()));
            }
            PlacementOp::SetUnplaceable { name, reasons } => {
                s.unplaceable.insert(name.clone(), reasons.clone());
            }
            PlacementOp::ClearUnplaceable { name } => {
                s.unplaceable.remove(name);
            }
        }
    }
    s
}

#[test]
fn unplaceable_reasons_are_written_when_they_change_and_cleared_when_placed() {
    let stale = UnitName::parse("stale.service").unwrap();
    let same = UnitName::parse("same.service").unwrap();
    let new = UnitName::parse("new.service").unwrap();
    let current: std::collections::BTreeMap<UnitName, Vec<String>> = [
        (stale.clone(), vec!["old".to_string()]),
        (same.clone(), vec!["r".to_string()]),
    ]
    .into();
    let now = vec![
        Unplaceable {
            unit: same.clone(),
            reasons: vec!["r".into()],
        },
        Unplaceable {
            unit: new.clone(),
            reasons: vec!["f1ee7001: metadata role=db not matched".into()],
        },
    ];
    assert_eq!(
        unplaceable_ops(&current, &now),
        vec![
            PlacementOp::SetUnplaceable {
                name: new,
                reasons: vec!["f1ee7001: metadata role=db not matched".into()],
            },
            PlacementOp::ClearUnplaceable { name: stale },
        ]
    );
}

fn puts(ops: &[PlacementOp]) -> Vec<(String, MachineId)> {
    ops.iter()
        .filter_map(|op| match op {
            PlacementOp::Put {
                machine, placement, ..
            } => Some((placement.name.to_string(), machine.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn spreads_units_least_loaded_ties_by_machine_id() {
    let s = snapshot(
        (1..=5)
            .map(|i| unit(&format!("u{i}.service"), JobState::Launched))
            .collect(),
        vec![machine(3), machine(1), machine(2)],
        vec![],
    );
    let got = puts(&plan(&s).ops);
    assert_eq!(
        got,
        vec![
            ("u1.service".into(), mid(1)),
            ("u2.service".into(), mid(2)),
            ("u3.service".into(), mid(3)),
            ("u4.service".into(), mid(1)),
            ("u5.service".into(), mid(2)),
        ]
    );
}

#[test]
fn existing_placements_count_and_stay() {
    let u1 = unit("a.service", JobState::Launched);
    let s = snapshot(
        vec![u1.clone(), unit("b.service", JobState::Loaded)],
        vec![machine(1), machine(2)],
        vec![(mid(1), Placement::for_unit(&u1))],
    );
    let ops = plan(&s).ops;
    assert_eq!(puts(&ops), vec![("b.service".into(), mid(2))]);
}

#[test]
fn table_of_removals_and_updates() {
    let a = unit("a.service", JobState::Launched);
    let mut a_loaded = a.clone();
    a_loaded.desired_state = JobState::Loaded;
    let cases: Vec<(&str, EngineSnapshot, Vec<PlacementOp>)> = vec![
        (
            "unit destroyed: placement removed",
            snapshot(
                vec![],
                vec![machine(1)],
                vec![(mid(1), Placement::for_unit(&a))],
            ),
            vec![PlacementOp::Delete {
                machine: mid(1),
                name: a.name.clone(),
            }],
        ),
        (
            "unit unloaded (inactive): placement removed",
            snapshot(
                vec![unit("a.service", JobState::Inactive)],
                vec![machine(1)],
                vec![(mid(1), Placement::for_unit(&a))],
            ),
            vec![PlacementOp::Delete {
                machine: mid(1),
                name: a.name.clone(),
            }],
        ),
        (
            "desired state changed: placement rewritten in place",
            snapshot(
                vec![a_loaded.clone()],
                vec![machine(1), machine(2)],
                vec![(mid(2), Placement::for_unit(&a))],
            ),
            vec![PlacementOp::Put {
                machine: mid(2),
                placement: Placement::for_unit(&a_loaded),
            }],
        ),
        (
            "machine gone: unit placed again elsewhere",
            snapshot(
                vec![a.clone()],
                vec![machine(2)],
                vec![(mid(1), Placement::for_unit(&a))],
            ),
            vec![
                PlacementOp::Delete {
                    machine: mid(1),
                    name: a.name.clone(),
                },
                PlacementOp::Put {
                    machine: mid(2),
                    placement: Placement::for_unit(&a),
                },
            ],
        ),
        (
            "placed twice: the second is stopped, and recorded as stopping",
            {
                let mut s = snapshot(
                    vec![a.clone()],
                    vec![machine(1), machine(2)],
                    vec![
                        (mid(2), Placement::for_unit(&a)),
                        (mid(1), Placement::for_unit(&a)),
                    ],
                );
                s.members = members_of(&s.machines);
                s
            },
            vec![PlacementOp::Move {
                machine: mid(2),
                name: a.name.clone(),
            }],
        ),
        (
            "no machine: nothing to do",
            snapshot(vec![a.clone()], vec![], vec![]),
            vec![],
        ),
        (
            "global unit: not placed by the engine",
            snapshot(vec![global("g.service")], vec![machine(1)], vec![]),
            vec![],
        ),
        (
            "steady state: nothing to do",
            snapshot(
                vec![a.clone()],
                vec![machine(1)],
                vec![(mid(1), Placement::for_unit(&a))],
            ),
            vec![],
        ),
    ];
    for (what, s, want) in cases {
        assert_eq!(plan(&s).ops, want, "{what}");
    }
}

#[test]
fn global_units_count_toward_load_equally() {
    let s = snapshot(
        vec![global("g.service"), unit("a.service", JobState::Launched)],
        vec![machine(2), machine(1)],
        vec![],
    );
    assert_eq!(puts(&plan(&s).ops), vec![("a.service".into(), mid(1))]);
}

#[test]
fn plan_is_idempotent_and_order_independent() {
    let units: Vec<Unit> = (0..40)
        .map(|i| unit(&format!("u{i:02}.service"), JobState::Launched))
        .collect();
    let machines: Vec<MachineEntry> = (1..=7).map(machine).collect();
    let s = snapshot(units.clone(), machines.clone(), vec![]);
    let ops = plan(&s).ops;
    let mut reversed = snapshot(
        units.into_iter().rev().collect(),
        machines.into_iter().rev().collect(),
        vec![],
    );
    assert_eq!(plan(&reversed).ops, ops);
    reversed = apply(s, &ops);
    assert_eq!(plan(&reversed).ops, vec![], "a second pass changes nothing");
    let mut per_machine: BTreeMap<MachineId, usize> = BTreeMap::new();
    for (m, _) in &reversed.placements {
        *per_machine.entry(m.clone()).or_default() += 1;
    }
    let (min, max) = (
        per_machine.values().min().copied().unwrap_or(0),
        per_machine.values().max().copied().unwrap_or(0),
    );
    assert!(max - min <= 1, "balanced: {per_machine:?}");
}

// ---- the [X-Fleet] rules ----

/// A launched unit with these `[X-Fleet]` options.
fn xunit(name: &str, xfleet: &[(&str, &str)]) -> Unit {
    let mut u = unit(name, JobState::Launched);
    for (key, value) in xfleet {
        u.options.push(UnitOption {
            section: "X-Fleet".into(),
            name: key.to_string(),
            value: value.to_string(),
        });
    }
    u
}

/// A global unit with these further `[X-Fleet]` options.
fn xglobal(name: &str, xfleet: &[(&str, &str)]) -> Unit {
    let mut options = vec![("Global", "true")];
    options.extend_from_slice(xfleet);
    xunit(name, &options)
}

/// Machine `n` with this metadata.
fn host(n: u8, metadata: &[(&str, &str)]) -> MachineEntry {
    let mut m = machine(n);
    m.machine.metadata = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m
}

fn at(n: u8, u: &Unit) -> (MachineId, Placement) {
    (mid(n), Placement::for_unit(u))
}

/// Plans and applies until nothing changes, each machine stopping what was moved off it
/// between passes (as agents do): the cluster it settles in, and the last (empty) plan's
/// unplaceable units. Panics if a pass starts a unit that a machine is still stopping, or if it
/// does not settle within a few passes.
fn converge(s: &EngineSnapshot) -> (EngineSnapshot, Plan) {
    let mut s = s.clone();
    for _ in 0..10 {
        // As the engine plans: units of absent members held.
        let (p, _) = plan_and_memo(&s);
        if p.ops.is_empty() {
            return (s, p);
        }
        let started = starts_while_stopping(&s, &p.ops);
        assert!(started.is_empty(), "{started:?}\nops {:?}", p.ops);
        s = apply(s, &p.ops);
        s.stopping.clear();
    }
    panic!("no fixpoint after 10 passes: {:?}", plan(&s).ops);
}

/// `s` settled ([`converge`]), with the reasons of its unplaceable units recorded as the
/// engine records them.
fn settle(s: &EngineSnapshot) -> EngineSnapshot {
    let (s, p) = converge(s);
    let reasons = unplaceable_ops(&s.unplaceable, &p.unplaceable);
    apply(s, &reasons)
}

/// Units `ops` place on a machine while another member machine is stopping them (recorded in
/// `before`, or moved by `ops` themselves): what would run two copies.
fn starts_while_stopping(before: &EngineSnapshot, ops: &[PlacementOp]) -> Vec<String> {
    let members: std::collections::BTreeSet<&MachineId> = before
        .members
        .iter()
        .map(|e| &e.member.machine.id)
        .chain(before.machines.iter().map(|m| &m.machine.id))
        .collect();
    let mut stopping: Vec<(MachineId, UnitName)> = before
        .stopping
        .iter()
        .filter(|(m, _)| members.contains(m))
        .cloned()
        .collect();
    for op in ops {
        if let PlacementOp::Move { machine, name } = op {
            stopping.push((machine.clone(), name.clone()));
        }
    }
    ops.iter()
        .filter_map(|op| match op {
            PlacementOp::Put { machine, placement } => Some((machine, placement)),
            _ => None,
        })
        .filter(|(machine, placement)| {
            // An in-place rewrite starts nothing.
            !before
                .placements
                .iter()
                .any(|(m, p)| m == *machine && p.name == placement.name)
        })
        .filter_map(|(machine, placement)| {
            stopping
                .iter()
                .find(|(m, n)| *n == placement.name && m != machine)
                .map(|(m, _)| format!("{} placed on {machine} while {m} stops it", placement.name))
        })
        .collect()
}

/// Where every unit is once the plan and the moves it starts are carried out: unit name ->
/// machine number.
fn outcome(s: &EngineSnapshot, p: &Plan) -> BTreeMap<String, u8> {
    converge(&apply(s.clone(), &p.ops))
        .0
        .placements
        .iter()
        .map(|(m, pl)| {
            let n = u8::from_str_radix(&m.as_str()[6..8], 16).unwrap();
            (pl.name.to_string(), n)
        })
        .collect()
}

fn placed_on(pairs: &[(&str, u8)]) -> BTreeMap<String, u8> {
    pairs.iter().map(|(u, m)| (u.to_string(), *m)).collect()
}

fn reasons_of(p: &Plan) -> BTreeMap<String, Vec<String>> {
    p.unplaceable
        .iter()
        .map(|u| (u.unit.to_string(), u.reasons.clone()))
        .collect()
}

/// Expected reasons: unit -> reasons.
fn why(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(u, rs)| (u.to_string(), rs.iter().map(|r| r.to_string()).collect()))
        .collect()
}

struct Case {
    rule: &'static str,
    snapshot: EngineSnapshot,
    /// Every placement after applying the plan.
    placed: BTreeMap<String, u8>,
    unplaceable: BTreeMap<String, Vec<String>>,
}

fn run(cases: Vec<Case>) {
    for case in cases {
        let (after, last) = converge(&case.snapshot);
        let placed: BTreeMap<String, u8> = after
            .placements
            .iter()
            .map(|(m, pl)| {
                let n = u8::from_str_radix(&m.as_str()[6..8], 16).unwrap();
                (pl.name.to_string(), n)
            })
            .collect();
        assert_eq!(placed, case.placed, "{}: placements", case.rule);
        assert_eq!(
            reasons_of(&last),
            case.unplaceable,
            "{}: unplaceable",
            case.rule
        );
    }
}

#[test]
fn machine_id_rule() {
    let full = mid(2).to_string();
    run(vec![
        Case {
            // MachineID: the full id picks the machine, although machine 1 is less loaded.
            rule: "MachineID full id",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[("MachineID", &full)]),
                    xunit("b.service", &[]),
                ],
                vec![machine(1), machine(2)],
                vec![],
            ),
            placed: placed_on(&[("a.service", 2), ("b.service", 1)]),
            unplaceable: why(&[]),
        },
        Case {
            // MachineID: fleet also accepts the 8-character short id.
            rule: "MachineID short id",
            snapshot: snapshot(
                vec![xunit("a.service", &[("MachineID", "f1ee7002")])],
                vec![machine(1), machine(2)],
                vec![],
            ),
            placed: placed_on(&[("a.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // MachineID: a machine that is not there; one reason per machine.
            rule: "MachineID of an absent machine",
            snapshot: snapshot(
                vec![xunit("a.service", &[("MachineID", "1234abcd")])],
                vec![machine(1), machine(2)],
                vec![],
            ),
            placed: placed_on(&[]),
            unplaceable: why(&[(
                "a.service",
                &[
                    "f1ee7001: unit must run on machine 1234abcd",
                    "f1ee7002: unit must run on machine 1234abcd",
                ],
            )]),
        },
        Case {
            // MachineID: any other prefix than the short id is not accepted (as in fleet).
            rule: "MachineID other prefix",
            snapshot: snapshot(
                vec![xunit("a.service", &[("MachineID", "f1ee70")])],
                vec![machine(1)],
                vec![],
            ),
            placed: placed_on(&[]),
            unplaceable: why(&[("a.service", &["f1ee7001: unit must run on machine f1ee70"])]),
        },
        Case {
            // MachineID changed: the unit leaves its machine for the new one.
            rule: "MachineID changed",
            snapshot: snapshot(
                vec![xunit("a.service", &[("MachineID", "f1ee7002")])],
                vec![machine(1), machine(2)],
                vec![at(1, &xunit("a.service", &[("MachineID", "f1ee7001")]))],
            ),
            placed: placed_on(&[("a.service", 2)]),
            unplaceable: why(&[]),
        },
    ]);
}

#[test]
fn metadata_rule() {
    let machines = || {
        vec![
            host(1, &[("role", "web"), ("region", "us")]),
            host(2, &[("role", "db"), ("region", "eu")]),
            host(3, &[("role", "web"), ("region", "eu")]),
        ]
    };
    run(vec![
        Case {
            // MachineMetadata: values of one key are OR-ed (db or cache: machine 2 only).
            rule: "metadata OR within a key",
            snapshot: snapshot(
                vec![xunit(
                    "a.service",
                    &[("MachineMetadata", "\"role=db\" \"role=cache\"")],
                )],
                machines(),
                vec![],
            ),
            placed: placed_on(&[("a.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // MachineMetadata: keys are AND-ed (web and eu: machine 3 only).
            rule: "metadata AND across keys",
            snapshot: snapshot(
                vec![xunit(
                    "a.service",
                    &[
                        ("MachineMetadata", "role=web"),
                        ("MachineMetadata", "region=eu"),
                    ],
                )],
                machines(),
                vec![],
            ),
            placed: placed_on(&[("a.service", 3)]),
            unplaceable: why(&[]),
        },
        Case {
            // MachineMetadata: a key no machine has; one reason per machine.
            rule: "metadata missing key",
            snapshot: snapshot(
                vec![xunit("a.service", &[("MachineMetadata", "disk=ssd")])],
                machines(),
                vec![],
            ),
            placed: placed_on(&[]),
            unplaceable: why(&[(
                "a.service",
                &[
                    "f1ee7001: metadata disk=ssd not matched",
                    "f1ee7002: metadata disk=ssd not matched",
                    "f1ee7003: metadata disk=ssd not matched",
                ],
            )]),
        },
        Case {
            // MachineMetadata: several items on one line, OR-ed within a key and AND-ed across
            // keys (eu and db: machine 2 only).
            rule: "metadata OR and AND on one line",
            snapshot: snapshot(
                vec![xunit(
                    "a.service",
                    &[("MachineMetadata", "\"region=ap\" \"region=eu\" \"role=db\"")],
                )],
                machines(),
                vec![],
            ),
            placed: placed_on(&[("a.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // MachineMetadata: the reason names the first key not matched, with its values.
            rule: "metadata unmatched everywhere: first failing key per machine",
            snapshot: snapshot(
                vec![xunit(
                    "a.service",
                    &[(
                        "MachineMetadata",
                        "\"region=ap\" \"region=eu\" \"role=cache\"",
                    )],
                )],
                machines(),
                vec![],
            ),
            placed: placed_on(&[]),
            unplaceable: why(&[(
                "a.service",
                &[
                    "f1ee7001: metadata region=ap|eu not matched",
                    "f1ee7002: metadata role=cache not matched",
                    "f1ee7003: metadata role=cache not matched",
                ],
            )]),
        },
        Case {
            // A metadata change in the unit makes it move.
            rule: "unit metadata changed",
            snapshot: snapshot(
                vec![xunit("a.service", &[("MachineMetadata", "role=db")])],
                machines(),
                vec![at(
                    1,
                    &xunit("a.service", &[("MachineMetadata", "role=web")]),
                )],
            ),
            placed: placed_on(&[("a.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // A metadata change on the machine makes the unit move.
            rule: "machine metadata changed",
            snapshot: snapshot(
                vec![xunit("a.service", &[("MachineMetadata", "region=us")])],
                vec![
                    host(1, &[("region", "eu")]),
                    host(2, &[("region", "us")]),
                    host(3, &[]),
                ],
                vec![at(
                    1,
                    &xunit("a.service", &[("MachineMetadata", "region=us")]),
                )],
            ),
            placed: placed_on(&[("a.service", 2)]),
            unplaceable: why(&[]),
        },
    ]);
}

#[test]
fn conflicts_rule() {
    let b = xunit("b.service", &[]);
    let c = xunit("c.service", &[]);
    let d = xunit("d.service", &[]);
    // Machine 1 runs b (load 1), machine 2 runs c and d (load 2): the least loaded is 1.
    let busy = || vec![at(1, &b), at(2, &c), at(2, &d)];
    let placed_busy = |extra: &[(&str, u8)]| {
        let mut all = vec![("b.service", 1), ("c.service", 2), ("d.service", 2)];
        all.extend_from_slice(extra);
        placed_on(&all)
    };
    run(vec![
        Case {
            // Conflicts: a refuses b's machine.
            rule: "conflicts one way",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[("Conflicts", "b.service")]),
                    b.clone(),
                    c.clone(),
                    d.clone(),
                ],
                vec![machine(1), machine(2)],
                busy(),
            ),
            placed: placed_busy(&[("a.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // Conflicts: checked both ways, b refuses a next to it.
            rule: "conflicts the other way",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[]),
                    xunit("b.service", &[("Conflicts", "a.service")]),
                    c.clone(),
                    d.clone(),
                ],
                vec![machine(1), machine(2)],
                vec![
                    at(1, &xunit("b.service", &[("Conflicts", "a.service")])),
                    at(2, &c),
                    at(2, &d),
                ],
            ),
            placed: placed_busy(&[("a.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // Conflicts: globs, as fleet's path.Match.
            rule: "conflicts glob",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[("Conflicts", "[ab].*")]),
                    b.clone(),
                    c.clone(),
                    d.clone(),
                ],
                vec![machine(1), machine(2)],
                busy(),
            ),
            placed: placed_busy(&[("a.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // Conflicts against a global unit running on machine 1 only (its metadata).
            rule: "conflicts with a global unit",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[("Conflicts", "g.service")]),
                    xglobal("g.service", &[("MachineMetadata", "role=web")]),
                    c.clone(),
                ],
                vec![host(1, &[("role", "web")]), host(2, &[])],
                vec![at(2, &c)],
            ),
            placed: placed_on(&[("a.service", 2), ("c.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // A global unit's Conflicts count too, both ways.
            rule: "a global unit conflicts with the unit",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[]),
                    xglobal("g.service", &[("Conflicts", "a.*")]),
                ],
                vec![machine(1), machine(2)],
                vec![],
            ),
            placed: placed_on(&[]),
            unplaceable: why(&[(
                "a.service",
                &[
                    "f1ee7001: conflicts with global unit g.service",
                    "f1ee7002: conflicts with global unit g.service",
                ],
            )]),
        },
        Case {
            // Stability: b was there first; the re-submitted a, which now conflicts with b,
            // moves; b stays.
            rule: "a conflict appears: the changed unit moves",
            snapshot: snapshot(
                vec![xunit("a.service", &[("Conflicts", "b.service")]), b.clone()],
                vec![machine(1), machine(2)],
                vec![at(1, &xunit("a.service", &[])), at(1, &b)],
            ),
            placed: placed_on(&[("a.service", 2), ("b.service", 1)]),
            unplaceable: why(&[]),
        },
        Case {
            // Stability, the other way: b, re-submitted with a Conflicts on a, moves.
            rule: "a conflict appears the other way: the changed unit moves",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[]),
                    xunit("b.service", &[("Conflicts", "a.service")]),
                ],
                vec![machine(1), machine(2)],
                vec![at(1, &xunit("a.service", &[])), at(1, &b)],
            ),
            placed: placed_on(&[("a.service", 1), ("b.service", 2)]),
            unplaceable: why(&[]),
        },
    ]);
}

#[test]
fn five_mutually_conflicting_units_on_three_machines() {
    // Conflicts=%p@*.service: at most one web@ instance per machine.
    let units: Vec<Unit> = (1..=5)
        .map(|i| {
            xunit(
                &format!("web@{i}.service"),
                &[("Conflicts", "%p@*.service")],
            )
        })
        .collect();
    let s = snapshot(units, vec![machine(3), machine(1), machine(2)], vec![]);
    let p = plan(&s);
    assert_eq!(
        outcome(&s, &p),
        placed_on(&[
            ("web@1.service", 1),
            ("web@2.service", 2),
            ("web@3.service", 3)
        ])
    );
    assert_eq!(
        reasons_of(&p),
        why(&[
            (
                "web@4.service",
                &[
                    "f1ee7001: conflicts with web@1.service",
                    "f1ee7002: conflicts with web@2.service",
                    "f1ee7003: conflicts with web@3.service",
                ],
            ),
            (
                "web@5.service",
                &[
                    "f1ee7001: conflicts with web@1.service",
                    "f1ee7002: conflicts with web@2.service",
                    "f1ee7003: conflicts with web@3.service",
                ],
            ),
        ])
    );
}

#[test]
fn machine_of_rule() {
    // The follower's name sorts before its leader's: dependency order still places the leader
    // first.
    let leader = xunit("zdb.service", &[]);
    let follower = xunit("app.service", &[("MachineOf", "zdb.service")]);
    run(vec![
        Case {
            // MachineOf: co-located in one pass.
            rule: "MachineOf pair co-located",
            snapshot: snapshot(
                vec![follower.clone(), leader.clone(), xunit("m.service", &[])],
                vec![machine(1), machine(2), machine(3)],
                vec![],
            ),
            // m.service depends on nothing and sorts before zdb.service: it goes first.
            placed: placed_on(&[("app.service", 2), ("m.service", 1), ("zdb.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // MachineOf: the leader can be placed nowhere, so the follower waits.
            rule: "follower waits for an unplaceable leader",
            snapshot: snapshot(
                vec![follower.clone(), xunit("zdb.service", &[("MachineID", "1234abcd")])],
                vec![machine(1)],
                vec![],
            ),
            placed: placed_on(&[]),
            unplaceable: why(&[
                ("app.service", &["waiting for zdb.service (MachineOf) to be placed"]),
                ("zdb.service", &["f1ee7001: unit must run on machine 1234abcd"]),
            ]),
        },
        Case {
            // MachineOf: a leader that is not loaded; the follower waits.
            rule: "follower waits for an absent leader",
            snapshot: snapshot(
                vec![follower.clone(), unit("zdb.service", JobState::Inactive)],
                vec![machine(1)],
                vec![],
            ),
            placed: placed_on(&[]),
            unplaceable: why(&[("app.service", &["waiting for zdb.service (MachineOf) to be placed"])]),
        },
        Case {
            // MachineOf: the leader's machine is gone; the follower follows it.
            rule: "follower follows a moved leader",
            snapshot: snapshot(
                vec![follower.clone(), leader.clone(), xunit("x.service", &[])],
                vec![machine(2), machine(3)],
                vec![at(1, &leader), at(2, &follower), at(2, &xunit("x.service", &[]))],
            ),
            placed: placed_on(&[("app.service", 3), ("x.service", 2), ("zdb.service", 3)]),
            unplaceable: why(&[]),
        },
        Case {
            // MachineOf: the leader's metadata changed and it moves; the follower comes along.
            rule: "follower follows a leader whose metadata changed",
            snapshot: snapshot(
                vec![follower.clone(), xunit("zdb.service", &[("MachineMetadata", "role=db")])],
                vec![host(1, &[]), host(2, &[]), host(3, &[("role", "db")])],
                vec![at(1, &leader), at(1, &follower)],
            ),
            placed: placed_on(&[("app.service", 3), ("zdb.service", 3)]),
            unplaceable: why(&[]),
        },
        Case {
            // MachineOf: every leader must be on the same machine.
            rule: "followers of two leaders on different machines",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[("MachineOf", "\"x.service\" \"y.service\"")]),
                    xunit("x.service", &[]),
                    xunit("y.service", &[]),
                ],
                vec![machine(1), machine(2)],
                vec![],
            ),
            placed: placed_on(&[("x.service", 1), ("y.service", 2)]),
            unplaceable: why(&[(
                "a.service",
                &["MachineOf units x.service and y.service are on different machines (f1ee7001 and f1ee7002)"],
            )]),
        },
        Case {
            // MachineOf: the follower cannot go to the leader's machine (metadata): one reason
            // per machine.
            rule: "follower blocked on the leader's machine",
            snapshot: snapshot(
                vec![
                    xunit("app.service", &[("MachineOf", "zdb.service"), ("MachineMetadata", "role=web")]),
                    leader.clone(),
                ],
                vec![host(1, &[]), host(2, &[("role", "web")])],
                vec![at(1, &leader)],
            ),
            placed: placed_on(&[("zdb.service", 1)]),
            unplaceable: why(&[(
                "app.service",
                &[
                    "f1ee7001: metadata role=web not matched",
                    "f1ee7002: not the machine of zdb.service (MachineOf)",
                ],
            )]),
        },
    ]);
}

#[test]
fn replaces_rule() {
    let b = xunit("b.service", &[]);
    run(vec![
        Case {
            // Replaces: a must go to machine 1 (metadata), where b runs: b moves away.
            rule: "Replaces pushes the replaced unit",
            snapshot: snapshot(
                vec![
                    xunit(
                        "a.service",
                        &[("Replaces", "b.service"), ("MachineMetadata", "role=x")],
                    ),
                    b.clone(),
                ],
                vec![host(1, &[("role", "x")]), host(2, &[])],
                vec![at(1, &b)],
            ),
            placed: placed_on(&[("a.service", 1), ("b.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // Replaces: the replaced unit treats its replacer as a conflict.
            rule: "the replaced unit avoids its replacer",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[("Replaces", "b*")]),
                    b.clone(),
                    xunit("c.service", &[]),
                ],
                vec![machine(1), machine(2)],
                vec![
                    at(1, &xunit("a.service", &[("Replaces", "b*")])),
                    at(2, &xunit("c.service", &[])),
                ],
            ),
            placed: placed_on(&[("a.service", 1), ("b.service", 2), ("c.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // Replaces: already co-located (a re-submitted with Replaces): b moves, a stays.
            rule: "Replaces on existing placements",
            snapshot: snapshot(
                vec![xunit("a.service", &[("Replaces", "b.service")]), b.clone()],
                vec![machine(1), machine(2)],
                vec![at(1, &xunit("a.service", &[])), at(1, &b)],
            ),
            placed: placed_on(&[("a.service", 1), ("b.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // Replaces: circular replacements are ignored, as fleet does.
            rule: "circular Replaces ignored",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[("Replaces", "b.service")]),
                    xunit("b.service", &[("Replaces", "a.service")]),
                ],
                vec![machine(1)],
                vec![],
            ),
            placed: placed_on(&[("a.service", 1), ("b.service", 1)]),
            unplaceable: why(&[]),
        },
        Case {
            // fleet v1.0's own scenario (functional test TestScheduleCircularReplace): a runs,
            // then b, which replaces a and is replaced by it, is started. fleet's check of a
            // machine's units skips a pair that replace each other (agent/state.go,
            // hasReplace), so neither wins: b goes where the load says and both run.
            rule: "circular Replaces: the second unit is placed by load, nothing pushed",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[("Replaces", "b.service")]),
                    xunit("b.service", &[("Replaces", "a.service")]),
                ],
                vec![machine(1), machine(2)],
                vec![at(1, &xunit("a.service", &[("Replaces", "b.service")]))],
            ),
            placed: placed_on(&[("a.service", 1), ("b.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // Circular through globs too, and already together: neither pushes the other.
            rule: "circular Replaces between placed units",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[("Replaces", "b*")]),
                    xunit("b.service", &[("Replaces", "a*")]),
                ],
                vec![machine(1), machine(2)],
                vec![
                    at(1, &xunit("a.service", &[("Replaces", "b*")])),
                    at(1, &xunit("b.service", &[("Replaces", "a*")])),
                ],
            ),
            placed: placed_on(&[("a.service", 1), ("b.service", 1)]),
            unplaceable: why(&[]),
        },
        Case {
            // Replaces: with nowhere else to go, the replaced unit waits.
            rule: "replaced unit with nowhere to go",
            snapshot: snapshot(
                vec![xunit("a.service", &[("Replaces", "b.service")]), b.clone()],
                vec![machine(1)],
                vec![at(1, &b)],
            ),
            placed: placed_on(&[("a.service", 1)]),
            unplaceable: why(&[("b.service", &["f1ee7001: replaced by a.service (Replaces)"])]),
        },
    ]);
}

#[test]
fn globals_and_load() {
    run(vec![
        Case {
            // A global unit counts toward load only where its metadata matches: machine 1
            // runs g, so a goes to machine 2.
            rule: "global unit with metadata counts only where it matches",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[]),
                    xglobal("g.service", &[("MachineMetadata", "role=web")]),
                ],
                vec![host(1, &[("role", "web")]), host(2, &[])],
                vec![],
            ),
            placed: placed_on(&[("a.service", 2)]),
            unplaceable: why(&[]),
        },
        Case {
            // A global unit that matches no machine counts nowhere: ties by machine id.
            rule: "global unit matching no machine",
            snapshot: snapshot(
                vec![
                    xunit("a.service", &[]),
                    xglobal("g.service", &[("MachineMetadata", "role=db")]),
                ],
                vec![host(1, &[("role", "web")]), host(2, &[])],
                vec![],
            ),
            placed: placed_on(&[("a.service", 1)]),
            unplaceable: why(&[]),
        },
        Case {
            // Stability: units never move for balance.
            rule: "no move for balance",
            snapshot: snapshot(
                vec![xunit("a.service", &[]), xunit("b.service", &[])],
                vec![machine(1), machine(2)],
                vec![
                    at(1, &xunit("a.service", &[])),
                    at(1, &xunit("b.service", &[])),
                ],
            ),
            placed: placed_on(&[("a.service", 1), ("b.service", 1)]),
            unplaceable: why(&[]),
        },
    ]);
}

#[test]
fn invalid_requirements_and_no_machine() {
    let bad = xunit(
        "a.service",
        &[
            ("MachineID", "f1ee7001"),
            ("Global", "false"),
            ("Conflicts", "b*"),
        ],
    );
    run(vec![
        Case {
            // Invalid requirements: reported with fleet's error, its placement removed.
            rule: "invalid requirements",
            snapshot: snapshot(
                vec![bad.clone()],
                vec![machine(1)],
                vec![at(1, &xunit("a.service", &[]))],
            ),
            placed: placed_on(&[]),
            unplaceable: why(&[(
                "a.service",
                &["cannot use MachineID together with Conflicts in [X-Fleet]"],
            )]),
        },
        Case {
            rule: "no machine",
            snapshot: snapshot(vec![xunit("a.service", &[])], vec![], vec![]),
            placed: placed_on(&[]),
            unplaceable: why(&[("a.service", &["no machine is registered"])]),
        },
    ]);
}

// ---- properties ----

/// Every rule broken by the placements of `s`, independently of the planner.
fn violations(s: &EngineSnapshot) -> Vec<String> {
    let mut bad = Vec::new();
    let units: BTreeMap<&str, &Unit> = s.units.iter().map(|u| (u.name.as_str(), u)).collect();
    let machines: BTreeMap<&MachineId, &MachineEntry> =
        s.machines.iter().map(|m| (&m.machine.id, m)).collect();
    let req_of = |u: &Unit| {
        Requirements::from_unit(&u.name, &u.file())
            .ok()
            .map(|(r, _)| r)
    };
    // Names of everything running on each machine: placed units and matching global units.
    let mut running: BTreeMap<&MachineId, Vec<(&str, Requirements)>> = BTreeMap::new();
    for g in s
        .units
        .iter()
        .filter(|u| u.is_global() && u.desired_state != JobState::Inactive)
    {
        let Some(req) = req_of(g) else { continue };
        for m in &s.machines {
            if req.metadata_matches(&m.machine.metadata) {
                running
                    .entry(&m.machine.id)
                    .or_default()
                    .push((g.name.as_str(), req.clone()));
            }
        }
    }
    let mut seen: BTreeMap<&str, &MachineId> = BTreeMap::new();
    for (m, p) in &s.placements {
        let name = p.name.as_str();
        if let Some(other) = seen.insert(name, m) {
            bad.push(format!("{name} on two machines: {other} and {m}"));
        }
        let Some(unit) = units.get(name) else {
            bad.push(format!("{name}: placed but unknown"));
            continue;
        };
        if unit.desired_state == JobState::Inactive || unit.is_global() {
            bad.push(format!("{name}: placed but inactive or global"));
        }
        if *p != Placement::for_unit(unit) {
            bad.push(format!("{name}: stale placement"));
        }
        let Some(machine) = machines.get(m) else {
            bad.push(format!("{name}: placed on dead machine {m}"));
            continue;
        };
        let Some(req) = req_of(unit) else {
            bad.push(format!("{name}: placed with invalid requirements"));
            continue;
        };
        if !req.machine_id_matches(m.as_str()) {
            bad.push(format!("{name}: MachineID {:?} on {m}", req.machine_id));
        }
        if !req.metadata_matches(&machine.machine.metadata) {
            bad.push(format!("{name}: metadata on {m}"));
        }
        running.entry(m).or_default().push((name, req));
    }
    for (m, here) in &running {
        for (name, req) in here {
            for leader in &req.machine_of {
                if !here.iter().any(|(n, _)| n == leader)
                    || units.get(leader.as_str()).is_some_and(|u| u.is_global())
                {
                    bad.push(format!("{name}: MachineOf {leader} not on {m}"));
                }
            }
            let global = units.get(name).is_some_and(|u| u.is_global());
            for (other, oreq) in here {
                let other_global = units.get(other).is_some_and(|u| u.is_global());
                // Two global units are the agents' business, not the engine's.
                if other == name || (global && other_global) {
                    continue;
                }
                if req.conflicts_with(other) {
                    bad.push(format!("{name} conflicts with {other} on {m}"));
                }
                // A global unit cannot be pushed away: replacing one is ignored, as in fleet.
                if req.replaces(other) && !oreq.replaces(name) && !other_global {
                    bad.push(format!("{name} replaces {other} on {m}"));
                }
            }
        }
    }
    bad
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const NAMES: [&str; 8] = [
        "a.service",
        "b.service",
        "db.service",
        "web@1.service",
        "web@2.service",
        "web@3.service",
        "x.socket",
        "z.service",
    ];
    const CONFLICTS: [&str; 5] = [
        "web@*.service",
        "a.service",
        "db.*",
        "%p@*.service",
        "*.socket",
    ];
    const METADATA: [&str; 4] = [
        "role=web",
        "role=db",
        "\"role=web\" \"role=db\"",
        "region=eu",
    ];

    /// One unit's rules, as indices into the small sets above.
    #[derive(Debug, Clone)]
    struct Rules {
        state: u8,
        machine_id: Option<(u8, bool)>,
        metadata: Option<usize>,
        conflicts: Option<usize>,
        machine_of: Option<usize>,
        replaces: Option<usize>,
        global: bool,
    }

    fn rules() -> impl Strategy<Value = Rules> {
        (
            0u8..6,
            prop::option::weighted(0.15, (1u8..=6, any::<bool>())),
            prop::option::weighted(0.3, 0..METADATA.len()),
            prop::option::weighted(0.3, 0..CONFLICTS.len()),
            prop::option::weighted(0.2, 0..NAMES.len()),
            prop::option::weighted(0.15, 0..NAMES.len()),
            prop::bool::weighted(0.1),
        )
            .prop_map(
                |(state, machine_id, metadata, conflicts, machine_of, replaces, global)| Rules {
                    state,
                    machine_id,
                    metadata,
                    conflicts,
                    machine_of,
                    replaces,
                    global,
                },
            )
    }

    fn make_unit(i: usize, r: &Rules, version: u8) -> Unit {
        make_named(NAMES[i], i, r, version)
    }

    /// A unit called `name` with rules `r`, as the `i`th of `NAMES` would have them.
    fn make_named(name: &str, i: usize, r: &Rules, version: u8) -> Unit {
        let state = match r.state {
            0 => JobState::Inactive,
            1 | 2 => JobState::Loaded,
            _ => JobState::Launched,
        };
        let mut x: Vec<(&str, String)> = Vec::new();
        if let Some((n, full)) = r.machine_id {
            let id = mid(n).to_string();
            x.push(("MachineID", if full { id } else { id[..8].to_string() }));
        }
        if let Some(k) = r.metadata {
            x.push(("MachineMetadata", METADATA[k].to_string()));
        }
        if let Some(k) = r.conflicts {
            x.push(("Conflicts", CONFLICTS[k].to_string()));
        }
        if let Some(k) = r.machine_of {
            x.push(("MachineOf", NAMES[k].to_string()));
        }
        // Only units later in the list are replaced: fleet forbids circular replacements.
        if let Some(k) = r.replaces.filter(|&k| k > i) {
            x.push(("Replaces", NAMES[k].to_string()));
        }
        if r.global {
            x.push(("Global", "true".to_string()));
        }
        let refs: Vec<(&str, &str)> = x.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut u = xunit(name, &refs);
        u.desired_state = state;
        if version > 0 {
            u.options[0].value.push_str(&format!(" v{version}"));
        }
        u
    }

    fn make_machine(n: u8, role: u8, eu: bool) -> MachineEntry {
        let mut meta = Vec::new();
        match role {
            1 => meta.push(("role", "web")),
            2 => meta.push(("role", "db")),
            _ => {}
        }
        if eu {
            meta.push(("region", "eu"));
        }
        host(n, &meta)
    }

    /// A random cluster: machines 1..=6 (some absent), units from `NAMES`, and placements,
    /// some stale (other content, dead machines, duplicates).
    fn cluster() -> impl Strategy<Value = EngineSnapshot> {
        (
            prop::collection::vec(prop::option::weighted(0.8, (0u8..3, any::<bool>())), 6),
            prop::collection::vec(prop::option::weighted(0.85, rules()), NAMES.len()),
            prop::collection::vec(
                (0..NAMES.len(), 1u8..=7, 0u8..3, prop::option::of(rules())),
                0..10,
            ),
        )
            .prop_map(|(machines, units, placements)| {
                let machines: Vec<MachineEntry> = machines
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| m.map(|(role, eu)| make_machine(i as u8 + 1, role, eu)))
                    .collect();
                let unit_list: Vec<Unit> = units
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.as_ref().map(|r| make_unit(i, r, 0)))
                    .collect();
                let placements: Vec<(MachineId, Placement)> = placements
                    .iter()
                    .map(|(i, m, version, other)| {
                        // The current content, an older version, or other rules.
                        let unit = match (&units[*i], other) {
                            (Some(r), _) if *version == 0 => make_unit(*i, r, 0),
                            (_, Some(o)) => make_unit(*i, o, *version),
                            (Some(r), None) => make_unit(*i, r, *version),
                            (None, None) => xunit(NAMES[*i], &[]),
                        };
                        at(*m, &unit)
                    })
                    .collect();
                // etcd holds one placement per unit and machine.
                let mut seen = std::collections::BTreeSet::new();
                let placements: Vec<(MachineId, Placement)> = placements
                    .into_iter()
                    .filter(|(m, p): &(MachineId, Placement)| {
                        seen.insert((m.clone(), p.name.clone()))
                    })
                    .collect();
                let mut s = snapshot(unit_list, machines, placements);
                s.members = members_of(&s.machines);
                s
            })
    }

    /// A random cluster ([`cluster`]) with fourteen more machines (8 to 21, random metadata,
    /// no units placed on them; machine 7, which [`cluster`] places units on, stays a dead
    /// one): enough for a unit that waits to be refused by more than sixteen, whose reasons
    /// are then given by reason (`refused_by`).
    fn crowded() -> impl Strategy<Value = EngineSnapshot> {
        (
            cluster(),
            prop::collection::vec((0u8..3, any::<bool>()), 14),
        )
            .prop_map(|(mut s, more)| {
                for (i, (role, eu)) in more.into_iter().enumerate() {
                    s.machines.push(make_machine(8 + i as u8, role, eu));
                }
                s.members = members_of(&s.machines);
                s
            })
    }

    /// Names a burst may change beyond `NAMES`: plain ones, and ones that the patterns of
    /// `CONFLICTS` match.
    const MORE: [&str; 4] = ["p1.service", "p2.service", "web@4.service", "q.socket"];

    /// Rules without any rule between units.
    fn plain_rules() -> impl Strategy<Value = Rules> {
        rules().prop_map(|r| Rules {
            conflicts: None,
            machine_of: None,
            replaces: None,
            global: false,
            ..r
        })
    }

    /// Rules whose only rule between units is `Conflicts` (what [`Memo::plan`] decides alone,
    /// with the plain ones).
    fn conflicting_rules() -> impl Strategy<Value = Rules> {
        (rules(), 0..CONFLICTS.len()).prop_map(|(r, c)| Rules {
            conflicts: Some(c),
            machine_of: None,
            replaces: None,
            global: false,
            ..r
        })
    }

    /// One change of a burst: a unit of `NAMES` or `MORE` destroyed (`None`) or written with
    /// these rules and this content version.
    fn change() -> impl Strategy<Value = (usize, Option<(Rules, u8)>)> {
        (
            0..NAMES.len() + MORE.len(),
            prop::option::weighted(
                0.8,
                (
                    prop_oneof![3 => plain_rules(), 2 => conflicting_rules(), 1 => rules()],
                    0u8..3,
                ),
            ),
        )
    }

    /// A machine's records written in a burst: machine `n` (1..=9: some live, some not)
    /// writes its record with this metadata, and registers as a member or not.
    fn machine_change() -> impl Strategy<Value = (u8, u8, bool, bool)> {
        (1u8..=9, 0u8..3, any::<bool>(), prop::bool::weighted(0.8))
    }

    /// Applies machine changes to `s`: the machines they changed.
    fn register(s: &mut EngineSnapshot, changes: &[(u8, u8, bool, bool)]) -> BTreeSet<MachineId> {
        let mut changed = BTreeSet::new();
        for &(n, role, eu, member) in changes {
            let entry = make_machine(n, role, eu);
            s.machines.retain(|e| e.machine.id != mid(n));
            if member && !s.members.iter().any(|e| e.member.machine.id == mid(n)) {
                s.members.push(member_of(&entry));
            }
            s.machines.push(entry);
            changed.insert(mid(n));
        }
        changed
    }

    /// A machine leaving in a burst, by kind: 0, machine `n`'s lease is gone (its machine
    /// record goes, its member record stays); 1, an absent member (the `n`th, if any) is
    /// declared dead (its member record and placements go); 2, machine `n` leaves without a
    /// declaration (both records go, its placements stay); 3, an absent member (the `n`th, if
    /// any) comes back, with this metadata; 4, an absent member's placements go, its member
    /// record stays (a declaration that found it back); 5, the same, and it comes back.
    fn leave() -> impl Strategy<Value = (u8, u8, u8, bool)> {
        (1u8..=9, 0u8..6, 0u8..3, any::<bool>())
    }

    /// Applies machines leaving to `s`: the machines they changed, and the units whose
    /// stopping records a declaration removed.
    fn depart(
        s: &mut EngineSnapshot,
        changes: &[(u8, u8, u8, bool)],
    ) -> (BTreeSet<MachineId>, BTreeSet<UnitName>) {
        let mut changed = BTreeSet::new();
        let mut released = BTreeSet::new();
        for &(n, kind, role, eu) in changes {
            let absent: Vec<MachineId> = absent(s).into_iter().cloned().collect();
            let nth = (!absent.is_empty()).then(|| absent[n as usize % absent.len()].clone());
            match (kind, nth) {
                (0, _) => {
                    s.machines.retain(|e| e.machine.id != mid(n));
                    changed.insert(mid(n));
                }
                (1, Some(id)) => {
                    s.members.retain(|e| e.member.machine.id != id);
                    s.placements.retain(|(m, _)| *m != id);
                    s.stopping.retain(|(m, name)| {
                        if *m == id {
                            released.insert(name.clone());
                        }
                        *m != id
                    });
                    changed.insert(id);
                }
                (2, _) => {
                    s.machines.retain(|e| e.machine.id != mid(n));
                    s.members.retain(|e| e.member.machine.id != mid(n));
                    changed.insert(mid(n));
                }
                (3, Some(id)) => {
                    let mut entry = make_machine(0, role, eu);
                    entry.machine.id = id.clone();
                    s.machines.push(entry);
                    changed.insert(id);
                }
                (4 | 5, Some(id)) => {
                    s.placements.retain(|(m, _)| *m != id);
                    if kind == 5 {
                        let mut entry = make_machine(0, role, eu);
                        entry.machine.id = id.clone();
                        s.machines.push(entry);
                    }
                    changed.insert(id);
                }
                _ => {}
            }
        }
        (changed, released)
    }

    /// Machines done stopping units: each `k` releases the `k`th stopping record, if any
    /// (as the agents release them). The units released.
    fn stop(s: &mut EngineSnapshot, which: &[usize]) -> BTreeSet<UnitName> {
        let mut released = BTreeSet::new();
        for &k in which {
            let Some(record) = s.stopping.iter().nth(k % s.stopping.len().max(1)).cloned() else {
                continue;
            };
            s.stopping.remove(&record);
            released.insert(record.1);
        }
        released
    }

    /// Applies a burst of changes to `s`'s units: the names it changed.
    fn write(s: &mut EngineSnapshot, burst: &[(usize, Option<(Rules, u8)>)]) -> BTreeSet<UnitName> {
        let mut changed = BTreeSet::new();
        for (k, change) in burst {
            let name = NAMES.iter().chain(MORE.iter()).nth(*k).expect("in range");
            let name = UnitName::parse(name).expect("valid");
            s.units.retain(|u| u.name != name);
            if let Some((r, version)) = change {
                s.units.push(make_named(name.as_str(), *k, r, *version));
            }
            changed.insert(name);
        }
        changed
    }

    /// A step of [`machines_joining_while_units_wait_are_the_whole_plan`]: machines joining
    /// (each right after machine `k` in machine order, with this metadata), or a burst of
    /// units written.
    #[derive(Debug, Clone)]
    enum Step {
        Join(Vec<(u8, u8, bool)>),
        Write(Vec<(usize, Option<(Rules, u8)>)>),
    }

    /// A deterministic permutation of `v` driven by `seed`.
    fn shuffle<T>(v: &mut [T], seed: u64) {
        let mut state = seed | 1;
        for i in (1..v.len()).rev() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.swap(i, (state >> 33) as usize % (i + 1));
        }
    }

    proptest! {
        // PROPTEST_CASES overrides the number of cases.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000),
            ..ProptestConfig::default()
        })]

        #[test]
        fn plans_are_valid_stable_and_order_independent(s in cluster(), seed in any::<u64>()) {
            let p = plan(&s);
            let after = apply(s.clone(), &p.ops);
            // (1) no rule broken, (2) no unit on two machines
            let bad = violations(&after);
            prop_assert!(bad.is_empty(), "violations {bad:?}\nops {:?}", p.ops);
            // (3) a unit moved off a machine is not placed elsewhere while the machine stops it,
            // in this pass nor the next
            let started = starts_while_stopping(&s, &p.ops);
            prop_assert!(started.is_empty(), "{started:?}");
            let started = starts_while_stopping(&after, &plan(&after).ops);
            prop_assert!(started.is_empty(), "{started:?}");
            // (4) once the machines have stopped what moved, passes settle (checking (3) at each)
            // in a cluster where no rule is broken
            let (settled, _) = converge(&after);
            let bad = violations(&settled);
            prop_assert!(bad.is_empty(), "violations {bad:?} once settled");
            // (5) the input order does not matter
            let mut shuffled = s.clone();
            shuffle(&mut shuffled.units, seed);
            shuffle(&mut shuffled.machines, seed.rotate_left(17));
            shuffle(&mut shuffled.placements, seed.rotate_left(31));
            prop_assert_eq!(plan(&shuffled), p);
        }

        /// The memo a whole plan leaves, when it leaves one, is the one of the cluster its ops
        /// leave: a plan of that cluster changes nothing (reasons included), and leaves the
        /// same memo.
        #[test]
        fn the_memo_a_plan_leaves_is_the_cluster_its_ops_leave(
            s in prop_oneof![3 => cluster(), 1 => crowded()],
        ) {
            let (p, memo) = plan_and_memo(&s);
            let mut ops = p.ops.clone();
            ops.extend(unplaceable_ops(&s.unplaceable, &p.unplaceable));
            let after = apply(s, &ops);
            let (again, rebuilt) = plan_and_memo(&after);
            if let Some(memo) = memo {
                prop_assert_eq!(again.ops, vec![], "after {:?}", ops);
                prop_assert_eq!(unplaceable_ops(&after.unplaceable, &again.unplaceable), vec![]);
                prop_assert_eq!(Some(memo), rebuilt);
            } else {
                prop_assert!(!p.ops.is_empty() && !p.unplaceable.is_empty());
            }
        }

        /// Bursts planned from the memo of a settled cluster are planned exactly as the whole
        /// plan would: the same ops, the same reasons; the cluster they leave is settled, and
        /// the memo they leave is the one a whole plan of it builds. Bursts write units,
        /// machines join, write their records again, lose their lease (their units held), are
        /// declared dead, leave undeclared, and come back, and machines release what they
        /// stopped.
        #[test]
        fn bursts_planned_from_the_memo_are_the_whole_plan(
            s in prop_oneof![3 => cluster(), 1 => crowded()],
            bursts in prop::collection::vec(
                (
                    prop::collection::vec(change(), 0..4),
                    prop::collection::vec(machine_change(), 0..2),
                    prop::collection::vec(leave(), 0..3),
                    prop::collection::vec(0usize..8, 0..3),
                ),
                1..4,
            ),
            drained in prop::option::weighted(0.3, 1u8..=6),
            unregistered in prop::option::weighted(0.3, 1u8..=6),
        ) {
            // A machine being drained, and a live machine that is no member (declared dead and
            // not yet registered again): the memo leaves the first to the whole plan, and
            // takes units off the second without stopping them first, as the whole plan does.
            let mut s = s;
            s.draining.extend(drained.map(mid));
            if let Some(n) = unregistered {
                s.members.retain(|e| e.member.machine.id != mid(n));
            }
            let mut s = settle(&s);
            let (p, memo) = plan_and_memo(&s);
            prop_assert!(p.ops.is_empty());
            let mut memo = memo.expect("a settled cluster has a memo");
            for (burst, machines, leaving, stopped) in &bursts {
                let mut changed = write(&mut s, burst);
                let mut machines = register(&mut s, machines);
                let (left, released) = depart(&mut s, leaving);
                machines.extend(left);
                changed.extend(released);
                changed.extend(stop(&mut s, stopped));
                let fast = memo.plan(&changed, &machines, &Now(&s));
                let Some(fast) = fast else {
                    // As the engine does: whole plans, applied, until one leaves a memo, the
                    // machines still stopping what they moved (the memo then has units
                    // waiting for them); otherwise, or every third time, the machines stop
                    // what was moved, and the memo of the settled cluster.
                    let mut left = None;
                    for _ in 0..4 {
                        let (whole, after) = plan_and_memo(&s);
                        let mut ops = whole.ops;
                        ops.extend(unplaceable_ops(&s.unplaceable, &whole.unplaceable));
                        s = apply(s, &ops);
                        if after.is_some() {
                            left = after;
                            break;
                        }
                    }
                    memo = match left {
                        Some(after) if !changed.len().is_multiple_of(3) => after,
                        _ => {
                            s = settle(&s);
                            plan_and_memo(&s).1.expect("settled")
                        }
                    };
                    continue;
                };
                s = as_whole(&memo, Some(fast), &s);
            }
        }

        /// Machines joining one burst after another while units wait, planned from the memo,
        /// are planned as the whole plan would: the memo adds the refusals of those that join
        /// to those it kept of the others (or places a unit on one), until a burst of units
        /// drops them.
        #[test]
        fn machines_joining_while_units_wait_are_the_whole_plan(
            s in prop_oneof![1 => cluster(), 2 => crowded()],
            steps in prop::collection::vec(
                prop_oneof![
                    4 => prop::collection::vec((0u8..32, 0u8..3, any::<bool>()), 1..3)
                        .prop_map(Step::Join),
                    1 => prop::collection::vec(change(), 1..3).prop_map(Step::Write),
                ],
                1..8,
            ),
        ) {
            let mut s = settle(&s);
            let mut memo = plan_and_memo(&s).1.expect("a settled cluster has a memo");
            for step in &steps {
                let (changed, machines) = match step {
                    Step::Join(joining) => {
                        let mut machines = BTreeSet::new();
                        for &(k, role, eu) in joining {
                            // Right after machine `k` in machine order, with its short id.
                            let id = format!("f1ee70{k:02x}8{}", "0".repeat(23));
                            let id = MachineId::parse(&id).expect("valid");
                            if s.machines.iter().any(|e| e.machine.id == id) {
                                continue;
                            }
                            let mut entry = make_machine(0, role, eu);
                            entry.machine.id = id.clone();
                            s.members.push(member_of(&entry));
                            s.machines.push(entry);
                            machines.insert(id);
                        }
                        (BTreeSet::new(), machines)
                    }
                    Step::Write(burst) => (write(&mut s, burst), BTreeSet::new()),
                };
                let Some(fast) = memo.plan(&changed, &machines, &Now(&s)) else {
                    // As the engine does: the whole plan, then (here) the machines stop what
                    // it moved, and the memo of the settled cluster.
                    let whole = plan(&s);
                    let mut ops = whole.ops;
                    ops.extend(unplaceable_ops(&s.unplaceable, &whole.unplaceable));
                    s = settle(&apply(s, &ops));
                    memo = plan_and_memo(&s).1.expect("settled");
                    continue;
                };
                s = as_whole(&memo, Some(fast), &s);
            }
        }

        #[test]
        fn unconstrained_units_are_balanced(
            machines in prop::collection::vec((0u8..3, any::<bool>()), 1..6),
            count in 0usize..40,
            globals in prop::collection::vec(prop::option::of(0..METADATA.len()), 0..3),
        ) {
            let machines: Vec<MachineEntry> = machines
                .iter()
                .enumerate()
                .map(|(i, (role, eu))| make_machine(i as u8 + 1, *role, *eu))
                .collect();
            let mut units: Vec<Unit> = (0..count).map(|i| xunit(&format!("u{i}.service"), &[])).collect();
            for (i, g) in globals.iter().enumerate() {
                let meta: Vec<(&str, &str)> = g.iter().map(|&k| ("MachineMetadata", METADATA[k])).collect();
                units.push(xglobal(&format!("g{i}.service"), &meta));
            }
            let s = snapshot(units, machines, vec![]);
            let p = plan(&s);
            prop_assert!(p.unplaceable.is_empty());
            let after = apply(s.clone(), &p.ops);
            prop_assert_eq!(after.placements.len(), count);
            // load = placed units + global units whose metadata matches
            let load: Vec<(usize, usize)> = s
                .machines
                .iter()
                .map(|m| {
                    let placed = after.placements.iter().filter(|(id, _)| *id == m.machine.id).count();
                    let global = s
                        .units
                        .iter()
                        .filter(|u| u.is_global())
                        .filter(|u| {
                            Requirements::from_unit(&u.name, &u.file())
                                .unwrap()
                                .0
                                .metadata_matches(&m.machine.metadata)
                        })
                        .count();
                    (placed, placed + global)
                })
                .collect();
            let min = load.iter().map(|l| l.1).min().unwrap();
            let max = load.iter().map(|l| l.1).max().unwrap();
            if globals.is_empty() {
                prop_assert!(max - min <= 1, "loads {load:?}");
            }
            // A machine that got units is never more than one above the least loaded.
            for (placed, total) in &load {
                prop_assert!(*placed == 0 || *total <= min + 1, "loads {load:?}");
            }
        }
    }
}

// ---- scale ----

/// A cluster of `machines` machines (metadata role web/db/cache, region eu/us) and `units`
/// units with a realistic mix of rules: plain units, instances that conflict with their
/// siblings, metadata, MachineID, MachineOf pairs, Replaces, and five global units.
pub(crate) fn large_snapshot(units: usize, machines: usize) -> EngineSnapshot {
    let id = |i: usize| MachineId::parse(&format!("{i:08x}{}", "a".repeat(24))).unwrap();
    let machines: Vec<MachineEntry> = (0..machines)
        .map(|i| {
            let mut m = host(
                0,
                &[
                    ("role", ["web", "db", "cache"][i % 3]),
                    ("region", ["eu", "us"][i % 2]),
                ],
            );
            m.machine.id = id(i);
            m.lease = i as i64;
            m
        })
        .collect();
    let mut list = vec![
        xglobal("g0.service", &[]),
        xglobal("g1.service", &[("MachineMetadata", "role=db")]),
        xglobal("g2.service", &[("MachineMetadata", "region=eu")]),
        xglobal(
            "g3.service",
            &[("MachineMetadata", "\"role=web\" \"role=cache\"")],
        ),
        xglobal("g4.service", &[("Conflicts", "nothing-*.service")]),
    ];
    let n = units;
    let mut i = 0;
    while list.len() < n + 5 {
        let u = match i % 20 {
            // instances of ten templates, at most one instance of each per machine
            0..=3 => xunit(
                &format!("web{}@{i}.service", i % 10),
                &[("Conflicts", "%p@*.service")],
            ),
            4 | 5 => xunit(
                &format!("meta-{i}.service"),
                &[("MachineMetadata", "\"role=db\" \"role=cache\"")],
            ),
            6 => xunit(&format!("lead-{i}.service"), &[]),
            7 => xunit(
                &format!("follow-{i}.service"),
                &[("MachineOf", &format!("lead-{}.service", i - 1))],
            ),
            8 if i % 40 == 8 => xunit(
                &format!("pin-{i}.service"),
                &[("MachineID", &id(i % machines.len()).to_string()[..8])],
            ),
            9 if i % 100 == 9 => xunit(
                &format!("new-{i}.service"),
                &[("Replaces", &format!("plain-{}.service", i + 1))],
            ),
            _ => xunit(&format!("plain-{i}.service"), &[]),
        };
        list.push(u);
        i += 1;
    }
    snapshot(list, machines, vec![])
}

#[test]
fn places_ten_thousand_units_on_a_thousand_machines() {
    let s = large_snapshot(10_000, 1_000);
    let started = std::time::Instant::now();
    let p = plan(&s);
    eprintln!(
        "plan of 10,000 units on 1,000 machines: {:?}",
        started.elapsed()
    );
    assert_eq!(p.unplaceable, vec![]);
    let after = apply(s.clone(), &p.ops);
    assert_eq!(after.placements.len(), 10_000);
    assert_eq!(violations(&after), Vec::<String>::new());
    assert_eq!(
        plan(&after),
        Plan::default(),
        "a second pass changes nothing"
    );
}

/// Exclusive instances (`Conflicts=%p@*`) outnumbering machines: one per machine, the rest
/// unplaceable with a reason, and a second pass changes nothing.
#[test]
fn more_exclusive_instances_than_machines() {
    let machines: Vec<MachineEntry> = (0..100)
        .map(|i| {
            let mut m = machine(0);
            m.machine.id = MachineId::parse(&format!("{i:08x}{}", "b".repeat(24))).unwrap();
            m
        })
        .collect();
    let units: Vec<Unit> = (0..200)
        .map(|i| {
            xunit(
                &format!("web@{i}.service"),
                &[("Conflicts", "%p@*.service")],
            )
        })
        .collect();
    let s = snapshot(units, machines, vec![]);
    let p = plan(&s);
    assert_eq!(p.unplaceable.len(), 100);
    let after = apply(s, &p.ops);
    let mut per_machine = std::collections::BTreeMap::new();
    for (m, _) in &after.placements {
        *per_machine.entry(m.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_machine.len(), 100);
    assert!(per_machine.values().all(|n| *n == 1));
    assert!(plan(&after).ops.is_empty());
}

// ---- stop-first moves and drains ----

/// The passes of a drain (or any moves): each pass's moves and new placements as
/// `("move"|"put", unit, machine number)`, until nothing changes; each machine stops what was
/// moved off it between passes, and each pass is checked to start nothing still stopping.
/// One pass's moves and new placements: `("move"|"put", unit, machine number)`.
type Step = Vec<(&'static str, String, u8)>;

fn passes(s: &EngineSnapshot) -> (Vec<Step>, EngineSnapshot) {
    let number = |m: &MachineId| u8::from_str_radix(&m.as_str()[6..8], 16).unwrap();
    let mut s = s.clone();
    let mut steps = Vec::new();
    for _ in 0..20 {
        let p = plan(&s);
        // With the records still there, the next pass starts nothing they hold back.
        let held = apply(s.clone(), &p.ops);
        let started = starts_while_stopping(&held, &plan(&held).ops);
        assert!(started.is_empty(), "{started:?}");
        let step: Step = p
            .ops
            .iter()
            .filter_map(|op| match op {
                PlacementOp::Move { machine, name } => {
                    Some(("move", name.to_string(), number(machine)))
                }
                PlacementOp::Put { machine, placement } => {
                    Some(("put", placement.name.to_string(), number(machine)))
                }
                _ => None,
            })
            .collect();
        if p.ops.is_empty() {
            return (steps, s);
        }
        steps.push(step);
        s = apply(s, &p.ops);
        s.stopping.clear();
    }
    panic!("no fixpoint after 20 passes");
}

fn draining(mut s: EngineSnapshot, machines: &[u8]) -> EngineSnapshot {
    s.members = members_of(&s.machines);
    s.draining = machines.iter().map(|&n| mid(n)).collect();
    s
}

fn step(items: &[(&'static str, &str, u8)]) -> Step {
    items
        .iter()
        .map(|(k, u, m)| (*k, u.to_string(), *m))
        .collect()
}

#[test]
fn a_moved_unit_waits_until_its_machine_has_stopped_it() {
    // a's metadata no longer matches machine 1: it moves, stopping there first.
    let a = xunit("a.service", &[("MachineMetadata", "role=web")]);
    let mut s = snapshot(
        vec![a.clone()],
        vec![host(1, &[]), host(2, &[("role", "web")])],
        vec![at(1, &a)],
    );
    s.members = members_of(&s.machines);
    let p = plan(&s);
    assert_eq!(
        p.ops,
        vec![PlacementOp::Move {
            machine: mid(1),
            name: a.name.clone()
        }]
    );
    assert_eq!(
        reasons_of(&p),
        why(&[("a.service", &["stopping on f1ee7001 before it moves"])])
    );
    // While machine 1 has not stopped it, nothing more happens.
    let held = apply(s.clone(), &p.ops);
    assert_eq!(plan(&held).ops, vec![]);
    // A machine declared dead (no member record any more) stops holding it.
    let mut dead = held.clone();
    dead.members.retain(|e| e.member.machine.id != mid(1));
    assert_eq!(puts(&plan(&dead).ops), vec![("a.service".into(), mid(2))]);
    // Once stopped, it is placed.
    let mut stopped = held;
    stopped.stopping.clear();
    assert_eq!(
        puts(&plan(&stopped).ops),
        vec![("a.service".into(), mid(2))]
    );
}

#[test]
fn a_draining_machine_gives_up_its_units_one_at_a_time() {
    let units: Vec<Unit> = ["a", "b", "c"]
        .iter()
        .map(|n| xunit(&format!("{n}.service"), &[]))
        .collect();
    let s = draining(
        snapshot(
            units.clone(),
            vec![machine(1), machine(2), machine(3)],
            vec![at(1, &units[0]), at(1, &units[1]), at(1, &units[2])],
        ),
        &[1],
    );
    let (steps, end) = passes(&s);
    assert_eq!(
        steps,
        vec![
            step(&[("move", "a.service", 1)]),
            step(&[("move", "b.service", 1), ("put", "a.service", 2)]),
            step(&[("move", "c.service", 1), ("put", "b.service", 3)]),
            step(&[("put", "c.service", 2)]),
        ]
    );
    assert!(end.placements.iter().all(|(m, _)| *m != mid(1)));
    // Nothing new goes to a draining machine.
    let mut more = end.clone();
    more.units
        .push(xunit("d.service", &[("MachineID", &mid(1).to_string())]));
    assert_eq!(
        reasons_of(&plan(&more)),
        why(&[(
            "d.service",
            &[
                "f1ee7001: machine is draining",
                "f1ee7002: unit must run on machine f1ee7001000000000000000000000000",
                "f1ee7003: unit must run on machine f1ee7001000000000000000000000000"
            ]
        )])
    );
    // Undrained, it takes units again; those moved away stay where they are.
    more.draining.clear();
    assert_eq!(puts(&plan(&more).ops), vec![("d.service".into(), mid(1))]);
}

#[test]
fn a_drain_moves_a_machine_of_pair_together_and_keeps_conflicts_apart() {
    let leader = xunit("db.service", &[]);
    let follower = xunit("backup.service", &[("MachineOf", "db.service")]);
    let x = xunit("x.service", &[("Conflicts", "y.service")]);
    let y = xunit("y.service", &[]);
    let s = draining(
        snapshot(
            vec![leader.clone(), follower.clone(), x.clone(), y.clone()],
            vec![machine(1), machine(2), machine(3)],
            vec![at(1, &leader), at(1, &follower), at(1, &x), at(2, &y)],
        ),
        &[1],
    );
    let (steps, end) = passes(&s);
    // The leader goes first (dependency order), its follower with it; then x, which refuses
    // y's machine 2 and goes to 3 beside them.
    assert_eq!(
        steps,
        vec![
            step(&[("move", "backup.service", 1), ("move", "db.service", 1)]),
            step(&[
                ("move", "x.service", 1),
                ("put", "db.service", 3),
                ("put", "backup.service", 3)
            ]),
            step(&[("put", "x.service", 3)]),
        ]
    );
    let placed: BTreeMap<String, MachineId> = end
        .placements
        .iter()
        .map(|(m, p)| (p.name.to_string(), m.clone()))
        .collect();
    assert_eq!(placed["db.service"], placed["backup.service"]);
    assert_ne!(placed["x.service"], placed["y.service"]);
    assert!(placed.values().all(|m| *m != mid(1)), "{placed:?}");
}

#[test]
fn max_unavailable_bounds_the_instances_stopping_at_once() {
    let web: Vec<Unit> = (1..=4)
        .map(|i| xunit(&format!("web@{i}.service"), &[("MaxUnavailable", "1")]))
        .collect();
    // Two machines drained at once: one instance of web@ stops at a time across both.
    let s = draining(
        snapshot(
            web.clone(),
            vec![machine(1), machine(2), machine(3)],
            vec![
                at(1, &web[0]),
                at(1, &web[1]),
                at(2, &web[2]),
                at(2, &web[3]),
            ],
        ),
        &[1, 2],
    );
    let (steps, end) = passes(&s);
    for (i, step) in steps.iter().enumerate() {
        let moves = step.iter().filter(|(k, _, _)| *k == "move").count();
        assert!(moves <= 1, "pass {i} stops {moves} instances: {step:?}");
    }
    assert_eq!(
        steps
            .iter()
            .flatten()
            .filter(|(k, _, _)| *k == "move")
            .count(),
        4
    );
    assert!(end.placements.iter().all(|(m, _)| *m == mid(3)));
    // Without the limit, both machines give up one each per pass.
    let free: Vec<Unit> = (1..=4)
        .map(|i| xunit(&format!("web@{i}.service"), &[]))
        .collect();
    let s = draining(
        snapshot(
            free.clone(),
            vec![machine(1), machine(2), machine(3)],
            vec![
                at(1, &free[0]),
                at(1, &free[1]),
                at(2, &free[2]),
                at(2, &free[3]),
            ],
        ),
        &[1, 2],
    );
    let (steps, _) = passes(&s);
    assert_eq!(steps[0].len(), 2, "{:?}", steps[0]);
}

#[test]
fn max_unavailable_counts_instances_a_rolling_update_took_down() {
    let web: Vec<Unit> = (1..=2)
        .map(|i| xunit(&format!("web@{i}.service"), &[("MaxUnavailable", "1")]))
        .collect();
    let mut s = draining(
        snapshot(
            web.clone(),
            vec![machine(1), machine(2)],
            vec![at(1, &web[0]), at(2, &web[1])],
        ),
        &[1],
    );
    // web@2 is being updated: web@1 does not leave the drained machine meanwhile.
    let mut entry = fleet_registry::UpdateUnit::pending(web[1].name.clone(), web[1].hash());
    entry.phase = fleet_registry::Phase::Updating;
    let update = fleet_registry::Update {
        id: "u1".into(),
        created_ms: 0,
        options: web[1].options.clone(),
        max_parallel: 1,
        min_healthy_ms: 1_000,
        healthy_deadline_ms: 10_000,
        auto_revert: false,
        state: fleet_registry::UpdateState::Running,
        reason: None,
        ended_ms: None,
        units: vec![entry],
        previous: vec![],
        stamped_by: 0,
    };
    s.updates.insert(
        "u1".into(),
        fleet_registry::StoredUpdate {
            update: update.clone(),
            revision: 1,
            layout: fleet_registry::Layout::Inline,
            omitted: Default::default(),
        },
    );
    let p = plan(&s);
    assert!(
        !p.ops
            .iter()
            .any(|op| matches!(op, PlacementOp::Move { .. })),
        "{:?}",
        p.ops
    );
    // Without a drain, the update changes no plan (the engine plans its steps from the
    // memo then): a unit written is placed as without it.
    let mut undrained = s.clone();
    undrained.draining.clear();
    undrained.units.push(xunit("other.service", &[]));
    let mut without = undrained.clone();
    without.updates.clear();
    let p = plan(&undrained);
    assert_eq!(p, plan(&without));
    assert_eq!(p.ops.len(), 1, "{:?}", p.ops);
    // Once healthy, it leaves.
    let mut done = update;
    done.units[0].phase = fleet_registry::Phase::Healthy;
    s.updates.get_mut("u1").unwrap().update = done;
    let p = plan(&s);
    assert!(
        p.ops
            .iter()
            .any(|op| matches!(op, PlacementOp::Move { name, .. } if *name == web[0].name)),
        "{:?}",
        p.ops
    );
}

#[test]
fn each_new_placement_says_why_there() {
    let leader = xunit("db.service", &[]);
    let b = xunit("b.service", &[]);
    /// A case: what it shows, the cluster, and each unit placed anew with why there.
    type WhyCase = (
        &'static str,
        EngineSnapshot,
        &'static [(&'static str, &'static str)],
    );
    let cases: Vec<WhyCase> = vec![
        (
            "least loaded, nothing ruled out; kept units are not placed again",
            snapshot(
                vec![xunit("a.service", &[]), b.clone()],
                vec![machine(1), machine(2)],
                vec![at(1, &b)],
            ),
            &[("a.service", "least loaded of 2 machines (load 0)")],
        ),
        (
            "least loaded after less loaded machines its rules rule out",
            snapshot(
                vec![
                    xunit("a.service", &[("MachineMetadata", "role=x")]),
                    b.clone(),
                ],
                vec![host(1, &[]), host(2, &[("role", "x")])],
                vec![at(2, &b)],
            ),
            &[(
                "a.service",
                "least loaded of the machines that pass its rules (load 1; 1 of 2 less loaded \
                 did not)",
            )],
        ),
        (
            "MachineID",
            snapshot(
                vec![xunit("a.service", &[("MachineID", "f1ee7002")])],
                vec![machine(1), machine(2)],
                vec![],
            ),
            &[("a.service", "MachineID=f1ee7002")],
        ),
        (
            "MachineOf, leader placed in the same pass",
            snapshot(
                vec![
                    leader.clone(),
                    xunit("web.service", &[("MachineOf", "db.service")]),
                ],
                vec![machine(1), machine(2)],
                vec![],
            ),
            &[
                ("db.service", "least loaded of 2 machines (load 0)"),
                ("web.service", "MachineOf=db.service"),
            ],
        ),
        (
            "Replaces: the replacer says what it pushed (which stops first, placed later)",
            snapshot(
                vec![
                    xunit(
                        "a.service",
                        &[("Replaces", "b.service"), ("MachineMetadata", "role=x")],
                    ),
                    b.clone(),
                ],
                vec![host(1, &[("role", "x")]), host(2, &[])],
                vec![at(1, &b)],
            ),
            &[(
                "a.service",
                "least loaded of the machines that pass its rules (load 1; 1 of 2 less \
                     loaded did not); replaces b.service there",
            )],
        ),
    ];
    for (case, s, expected) in cases {
        let p = plan(&s);
        let expected: BTreeMap<UnitName, String> = expected
            .iter()
            .map(|(u, why)| (UnitName::parse(u).unwrap(), why.to_string()))
            .collect();
        assert_eq!(p.placed, expected, "{case}");
        // Every reason is for a put of that unit onto a new machine.
        let new: Vec<String> = puts(&p.ops).into_iter().map(|(u, _)| u).collect();
        for unit in p.placed.keys() {
            assert!(new.contains(&unit.to_string()), "{case}: {unit}");
        }
    }
}

#[test]
fn a_destroyed_unit_started_again_waits_for_its_machine_to_stop_it() {
    let a = xunit("a.service", &[]);
    let mut s = snapshot(vec![], vec![machine(1), machine(2)], vec![at(1, &a)]);
    s.members = members_of(&s.machines);
    // Destroyed: taken off machine 1, which is recorded as stopping it.
    let p = plan(&s);
    assert_eq!(
        p.ops,
        vec![PlacementOp::Move {
            machine: mid(1),
            name: a.name.clone()
        }]
    );
    // Submitted and started again before machine 1 has stopped it: it waits.
    let mut again = apply(s, &p.ops);
    again.units.push(a.clone());
    let p = plan(&again);
    assert_eq!(p.ops, vec![]);
    assert_eq!(
        reasons_of(&p),
        why(&[("a.service", &["stopping on f1ee7001 before it moves"])])
    );
    again.stopping.clear();
    assert_eq!(puts(&plan(&again).ops).len(), 1);
}

// ---- planning bursts from the memo ----

/// A snapshot as the memo looks things up in the cluster (the engine's view, by search here).
struct Now<'a>(&'a EngineSnapshot);

impl Cluster for Now<'_> {
    fn unit(&self, name: &UnitName) -> Option<&Unit> {
        self.0.units.iter().find(|u| u.name == *name)
    }

    fn placement(&self, machine: &MachineId, name: &UnitName) -> Option<&Placement> {
        self.0
            .placements
            .iter()
            .find(|(at, p)| at == machine && p.name == *name)
            .map(|(_, p)| p)
    }

    fn machine(&self, id: &MachineId) -> Option<&MachineEntry> {
        self.0.machines.iter().find(|e| e.machine.id == *id)
    }

    fn is_member(&self, id: &MachineId) -> bool {
        self.0.members.iter().any(|e| e.member.machine.id == *id)
    }

    fn is_draining(&self, id: &MachineId) -> bool {
        self.0.draining.contains(id)
    }

    fn is_stopping(&self, machine: &MachineId, name: &UnitName) -> bool {
        self.0.stopping.contains(&(machine.clone(), name.clone()))
    }

    fn reasons(&self, name: &UnitName) -> Option<&[String]> {
        self.0.unplaceable.get(name).map(Vec::as_slice)
    }
}

/// Plans the burst that changed `names` of `s` from `memo`.
fn from_memo(memo: &mut Memo, s: &EngineSnapshot, names: &[&str]) -> Option<Plan> {
    let changed: BTreeSet<UnitName> = names.iter().map(|n| UnitName::parse(n).unwrap()).collect();
    memo.plan(&changed, &BTreeSet::new(), &Now(s))
}

/// A member's record for `entry`, as registering writes it.
fn member_of(entry: &MachineEntry) -> fleet_registry::MemberEntry {
    fleet_registry::MemberEntry {
        member: fleet_registry::Member {
            machine: entry.machine.clone(),
            seen_revision: 1,
            seen_members: 1,
        },
        create_revision: 1,
        mod_revision: 1,
    }
}

/// Machine `n` registers with `metadata`: plans the burst from `memo`.
fn joins(
    memo: &mut Memo,
    s: &mut EngineSnapshot,
    n: u8,
    metadata: &[(&str, &str)],
) -> Option<Plan> {
    let entry = host(n, metadata);
    s.machines.retain(|e| e.machine.id != mid(n));
    s.members.retain(|e| e.member.machine.id != mid(n));
    s.members.push(member_of(&entry));
    s.machines.push(entry);
    memo.plan(&BTreeSet::new(), &[mid(n)].into_iter().collect(), &Now(s))
}

/// Machines joining, or writing their record again (with new metadata or not), are planned
/// from the memo, unless a unit there would move; a unit that waits for a machine is decided
/// again with them.
#[test]
fn the_memo_plans_machines_that_join() {
    let units = vec![
        xunit("a.service", &[]),
        xunit("b.service", &[]),
        xglobal("g.service", &[("MachineMetadata", "role=web")]),
    ];
    let mut s = snapshot(units, vec![machine(1), machine(2)], vec![]);
    s.members = members_of(&s.machines);
    let (s, _) = converge(&s);
    let memo = plan_and_memo(&s).1.expect("settled");

    // A machine joins: nothing moves; then it is the least loaded, global units counted.
    let mut joined = s.clone();
    let mut m = memo.clone();
    assert_eq!(joins(&mut m, &mut joined, 3, &[]), Some(Plan::default()));
    assert_eq!(Some(&m), plan_and_memo(&joined).1.as_ref());
    joined.units.push(xunit("c.service", &[]));
    let fast = from_memo(&mut m, &joined, &["c.service"]).expect("plain");
    assert_eq!(fast, plan(&joined));
    assert!(matches!(&fast.ops[..], [PlacementOp::Put { machine, .. }] if *machine == mid(3)));
    // One that runs the global unit is as loaded as the others.
    let mut web = s.clone();
    let mut m = memo.clone();
    assert!(joins(&mut m, &mut web, 4, &[("role", "web")]).is_some());
    assert_eq!(Some(&m), plan_and_memo(&web).1.as_ref());

    // Written again unchanged (a restart on the same lease): nothing.
    let mut again = s.clone();
    let mut m = memo.clone();
    assert_eq!(joins(&mut m, &mut again, 1, &[]), Some(Plan::default()));
    assert_eq!(m, memo);

    // A live machine that is no member (declared dead, its record written again before it
    // registers): still none; then it registers, and its units stop before they leave it.
    let mut lapsed = s.clone();
    lapsed.members.retain(|e| e.member.machine.id != mid(2));
    let mut m = plan_and_memo(&lapsed).1.expect("settled");
    let rewritten: BTreeSet<MachineId> = [mid(2)].into_iter().collect();
    assert_eq!(
        m.plan(&BTreeSet::new(), &rewritten, &Now(&lapsed)),
        Some(Plan::default())
    );
    assert_eq!(Some(&m), plan_and_memo(&lapsed).1.as_ref());
    assert_eq!(joins(&mut m, &mut lapsed, 2, &[]), Some(Plan::default()));
    assert_eq!(Some(&m), plan_and_memo(&lapsed).1.as_ref());

    // But one whose stopping records would start to count, while units wait, registering:
    // left to the whole plan.
    let mut stopping = s.clone();
    stopping.members.retain(|e| e.member.machine.id != mid(2));
    stopping
        .stopping
        .insert((mid(2), UnitName::parse("gone.service").unwrap()));
    let mut m = plan_and_memo(&stopping).1.expect("settled");
    assert_eq!(joins(&mut m, &mut stopping, 2, &[]), None);

    // While a machine stops a unit that moves (b.service, pinned to the other machine now),
    // the others come and go from the memo: the unit waits for its machine whatever they do.
    let mut moving = s.clone();
    let (from, _) = moving
        .placements
        .iter()
        .find(|(_, p)| p.name.as_str() == "b.service")
        .unwrap();
    let (from, to) = if *from == mid(1) { (1, 2) } else { (2, 1) };
    moving.units.retain(|u| u.name.as_str() != "b.service");
    let pinned = format!("{}", mid(to));
    moving
        .units
        .push(xunit("b.service", &[("MachineID", pinned.as_str())]));
    let whole = plan(&moving);
    let mut ops = whole.ops;
    ops.extend(unplaceable_ops(&moving.unplaceable, &whole.unplaceable));
    let mut moving = apply(moving, &ops);
    let (again, m) = plan_and_memo(&moving);
    assert_eq!(again.ops, vec![]);
    let mut m = m.expect("the unit that moves waits for its machine");
    let waits_for = |s: &EngineSnapshot| {
        s.unplaceable.get("b.service").cloned().unwrap_or_default()
            == vec![format!("stopping on {} before it moves", mid(from).short())]
    };
    assert!(waits_for(&moving), "{:?}", moving.unplaceable);
    let fast = joins(&mut m, &mut moving, 3, &[]);
    let mut moving = as_whole(&m, fast, &moving);
    moving.machines.retain(|e| e.machine.id != mid(to));
    let fast = machine_changed(&mut m, &moving, to);
    let moving = as_whole(&m, fast, &moving);
    assert!(waits_for(&moving), "{:?}", moving.unplaceable);
    // The machine that stops it losing its lease: left to the whole plan; and so is its
    // member record gone while it is absent (its stopping record no longer counts: the whole
    // plan gives the unit other reasons).
    let mut lost = moving.clone();
    lost.machines.retain(|e| e.machine.id != mid(from));
    assert_eq!(machine_changed(&mut m.clone(), &lost, from), None);
    let whole = plan(&lost);
    let mut ops = whole.ops;
    ops.extend(unplaceable_ops(&lost.unplaceable, &whole.unplaceable));
    let lost = apply(lost, &ops);
    assert!(waits_for(&lost), "{:?}", lost.unplaceable);
    let mut m = plan_and_memo(&lost)
        .1
        .expect("settled, b waiting for its machine");
    let mut gone = lost.clone();
    gone.members.retain(|e| e.member.machine.id != mid(from));
    assert_eq!(machine_changed(&mut m, &gone, from), None);
    let whole = plan(&gone);
    let apart = apply(
        gone.clone(),
        &unplaceable_ops(&gone.unplaceable, &whole.unplaceable),
    );
    assert!(!waits_for(&apart), "{:?}", apart.unplaceable);

    // New metadata: nothing moves while its units still match it; a global unit that starts
    // running there counts in its load, so the next unit goes to the other machine.
    let mut web = s.clone();
    let mut m = memo.clone();
    assert_eq!(
        joins(&mut m, &mut web, 1, &[("role", "web")]),
        Some(Plan::default())
    );
    assert_eq!(Some(&m), plan_and_memo(&web).1.as_ref());
    web.units.push(xunit("c.service", &[]));
    let fast = from_memo(&mut m, &web, &["c.service"]);
    assert!(
        matches!(&fast.as_ref().unwrap().ops[..], [PlacementOp::Put { machine, .. }] if *machine == mid(2))
    );
    let mut web = as_whole(&m, fast, &web);
    // And back: it stops running there.
    assert_eq!(joins(&mut m, &mut web, 1, &[]), Some(Plan::default()));
    assert_eq!(Some(&m), plan_and_memo(&web).1.as_ref());

    // Left to the whole plan: new metadata a unit there no longer matches, or with which a
    // global unit that conflicts with a unit there starts running there.
    let mut pinned = snapshot(
        vec![xunit("p.service", &[("MachineMetadata", "role=web")])],
        vec![host(1, &[("role", "web")]), machine(2)],
        vec![],
    );
    pinned.members = members_of(&pinned.machines);
    let (mut pinned, _) = converge(&pinned);
    let mut m = plan_and_memo(&pinned).1.expect("settled");
    assert_eq!(joins(&mut m, &mut pinned, 1, &[("role", "db")]), None);
    let mut conflicting = s.clone();
    conflicting.units.push(xglobal(
        "g2.service",
        &[("MachineMetadata", "role=db"), ("Conflicts", "a.service")],
    ));
    let (mut conflicting, _) = converge(&conflicting);
    let (with_a, _) = conflicting
        .placements
        .iter()
        .find(|(_, p)| p.name.as_str() == "a.service")
        .unwrap();
    let n = (1..=2).find(|&n| mid(n) == *with_a).unwrap();
    let mut m = plan_and_memo(&conflicting).1.expect("settled");
    assert_eq!(joins(&mut m, &mut conflicting, n, &[("role", "db")]), None);
    let mut waits = s.clone();
    waits
        .units
        .push(xunit("w.service", &[("MachineMetadata", "role=db")]));
    let waits = settle(&waits);
    assert_eq!(waits.unplaceable.len(), 1, "w waits");
    let m = plan_and_memo(&waits).1.expect("settled, w waiting");

    // A unit that waits for a machine is decided again with a machine's new metadata, or a
    // machine joining: it goes there, its reasons cleared.
    for n in [1, 3] {
        let mut joined = waits.clone();
        let mut memo = m.clone();
        let fast = joins(&mut memo, &mut joined, n, &[("role", "db")]);
        assert!(fast
            .as_ref()
            .is_some_and(|p| p.placed.contains_key("w.service")));
        as_whole(&memo, fast, &joined);
    }
    // One that still matches no machine gets a reason for the new one.
    let mut joined = waits.clone();
    let mut memo = m.clone();
    let fast = joins(&mut memo, &mut joined, 3, &[("role", "web")]);
    assert!(fast.as_ref().is_some_and(|p| matches!(
        &p.ops[..],
        [PlacementOp::SetUnplaceable { reasons, .. }] if reasons.len() == 3
    )));
    as_whole(&memo, fast, &joined);
}

/// A unit that waits keeps the machines' refusals in the memo, for the next machine that joins,
/// only while it gives few reasons: one that conflicts with a unit on each machine gives one
/// for each, and is decided from every machine when one joins, as the whole plan decides it.
#[test]
fn the_memo_keeps_the_refusals_of_a_unit_that_waits_only_for_a_few_reasons() {
    let n = 70u8;
    let mut units: Vec<Unit> = (1..=n)
        .map(|i| {
            let id = mid(i).to_string();
            xunit(&format!("app@{i}.service"), &[("MachineID", id.as_str())])
        })
        .collect();
    units.push(xunit(
        "w.service",
        &[
            ("MachineMetadata", "role=web"),
            ("Conflicts", "app@*.service"),
        ],
    ));
    units.push(xunit("db.service", &[("MachineMetadata", "role=db")]));
    let machines = (1..=n).map(|i| host(i, &[("role", "web")])).collect();
    let mut s = snapshot(units, machines, vec![]);
    s.members = members_of(&s.machines);
    let mut s = settle(&s);
    assert_eq!(s.unplaceable.len(), 2, "w and db wait: {:?}", s.unplaceable);
    let mut memo = plan_and_memo(&s).1.expect("settled, w and db waiting");
    for k in 1..=3 {
        let fast = joins(&mut memo, &mut s, n + k, &[]);
        s = as_whole(&memo, fast, &s);
        assert!(memo.keeps_refusals_of("db.service"));
        assert!(!memo.keeps_refusals_of("w.service"));
    }
    let w = &s.unplaceable["w.service"];
    assert!(
        w.len() == REASON_LINES && w[REASON_LINES - 1].ends_with(" other reasons"),
        "{w:?}"
    );
}

/// The records of machine `n` changed (or the placements on it): plans the burst from `memo`.
fn machine_changed(memo: &mut Memo, s: &EngineSnapshot, n: u8) -> Option<Plan> {
    memo.plan(&BTreeSet::new(), &[mid(n)].into_iter().collect(), &Now(s))
}

/// Checks that `fast`, planned from `memo`, is the whole plan of `s` (its ops, then the
/// reasons it writes, as the engine writes them), and that `memo` is the one the whole plan
/// of the cluster it leaves builds: that cluster.
fn as_whole(memo: &Memo, fast: Option<Plan>, s: &EngineSnapshot) -> EngineSnapshot {
    let fast = fast.expect("planned from the memo");
    let (whole, _) = plan_and_memo(s);
    let mut ops = whole.ops;
    ops.extend(unplaceable_ops(&s.unplaceable, &whole.unplaceable));
    assert_eq!((&fast.ops, &fast.placed), (&ops, &whole.placed));
    assert!(
        fast.unplaceable.is_empty(),
        "the memo writes reasons as ops"
    );
    let after = apply(s.clone(), &fast.ops);
    let (again, rebuilt) = plan_and_memo(&after);
    assert_eq!(again.ops, vec![]);
    assert_eq!(
        unplaceable_ops(&after.unplaceable, &again.unplaceable),
        vec![]
    );
    assert_eq!(Some(memo), rebuilt.as_ref());
    after
}

/// `s` with `extra` written and settled, then the lease of machine `n` (of `extra`'s machine,
/// when `None`) gone: that cluster, and the memo with the burst planned from it.
fn lease_gone_with(
    s: &EngineSnapshot,
    extra: Unit,
    n: Option<u8>,
) -> (EngineSnapshot, Memo, Option<Plan>) {
    let mut s = s.clone();
    let name = extra.name.clone();
    s.units.push(extra);
    let (mut s, _) = converge(&s);
    let n = n.unwrap_or_else(|| {
        let (at, _) = s.placements.iter().find(|(_, p)| p.name == name).unwrap();
        (1..=3).find(|&i| mid(i) == *at).unwrap()
    });
    let mut memo = plan_and_memo(&s).1.expect("settled");
    s.machines.retain(|e| e.machine.id != mid(n));
    let fast = machine_changed(&mut memo, &s, n);
    (s, memo, fast)
}

/// Machines leaving are planned from the memo: a member whose lease is gone has its units held
/// where they are, placed elsewhere once it is declared dead, or kept when it comes back; a
/// machine leaving undeclared has its units placed elsewhere at once; a unit that waits for a
/// machine is decided again with them.
#[test]
fn the_memo_plans_machines_that_leave() {
    let units: Vec<Unit> = (0..6)
        .map(|i| xunit(&format!("u{i}.service"), &[]))
        .collect();
    let mut s = snapshot(units, vec![machine(1), machine(2), machine(3)], vec![]);
    s.members = members_of(&s.machines);
    let (s, _) = converge(&s);
    let memo = plan_and_memo(&s).1.expect("settled");
    let on_2: Vec<String> = s
        .placements
        .iter()
        .filter(|(m, _)| *m == mid(2))
        .map(|(_, p)| p.name.to_string())
        .collect();
    assert_eq!(on_2.len(), 2);

    // Machine 2's lease is gone: its units are held there, nothing moves.
    let mut lost = s.clone();
    lost.machines.retain(|e| e.machine.id != mid(2));
    let mut m = memo.clone();
    let fast = machine_changed(&mut m, &lost, 2);
    assert_eq!(fast, Some(Plan::default()));
    let lost = as_whole(&m, fast, &lost);
    // A unit written meanwhile goes to machine 1 or 3.
    let mut added = lost.clone();
    added.units.push(xunit("new.service", &[]));
    let mut held = m.clone();
    let fast = from_memo(&mut held, &added, &["new.service"]);
    assert!(
        matches!(&fast.as_ref().unwrap().ops[..], [PlacementOp::Put { machine, .. }] if *machine != mid(2))
    );
    as_whole(&held, fast, &added);

    // Declared dead (its member record and placements gone): its units go to 1 and 3.
    let mut dead = lost.clone();
    dead.members.retain(|e| e.member.machine.id != mid(2));
    dead.placements.retain(|(m, _)| *m != mid(2));
    let mut declared = m.clone();
    let fast = machine_changed(&mut declared, &dead, 2);
    let placed: Vec<String> = puts(&fast.as_ref().unwrap().ops)
        .into_iter()
        .map(|(name, machine)| {
            assert_ne!(machine, mid(2));
            name
        })
        .collect();
    assert_eq!(placed, on_2);
    as_whole(&declared, fast, &dead);

    // Its placements removed by a declaration that found it back: its units are placed on
    // the least loaded machines, as new ones.
    let mut found_back = lost.clone();
    found_back.placements.retain(|(m, _)| *m != mid(2));
    found_back.machines.push(machine(2));
    let mut m2 = m.clone();
    let fast = machine_changed(&mut m2, &found_back, 2);
    assert_eq!(fast.as_ref().map(|p| p.placed.len()), Some(2));
    as_whole(&m2, fast, &found_back);

    // Back before it was declared dead: its units stay there.
    let mut back = lost.clone();
    back.machines.push(machine(2));
    let mut returned = m.clone();
    let fast = machine_changed(&mut returned, &back, 2);
    assert_eq!(fast, Some(Plan::default()));
    as_whole(&returned, fast, &back);
    assert_eq!(returned, memo);

    // Leaving undeclared, no member: its placements go without a stop, its units elsewhere.
    let mut gone = s.clone();
    gone.machines.retain(|e| e.machine.id != mid(2));
    gone.members.retain(|e| e.member.machine.id != mid(2));
    let mut m = memo.clone();
    let fast = machine_changed(&mut m, &gone, 2);
    let ops = &fast.as_ref().unwrap().ops;
    assert_eq!(ops.len(), 4);
    assert!(ops[..2]
        .iter()
        .all(|op| matches!(op, PlacementOp::Delete { machine, .. } if *machine == mid(2))));
    as_whole(&m, fast, &gone);

    // A lease gone while a unit waits for a machine: its reasons no longer name that one.
    let w = xunit("w.service", &[("MachineMetadata", "role=db")]);
    let (waiting, m, fast) = {
        let mut s = s.clone();
        s.unplaceable.insert(
            UnitName::parse("w.service").unwrap(),
            (1..=3)
                .map(|n| format!("{}: metadata role=db not matched", mid(n).short()))
                .collect(),
        );
        lease_gone_with(&s, w, Some(2))
    };
    assert!(fast.as_ref().is_some_and(|p| matches!(
        &p.ops[..],
        [PlacementOp::SetUnplaceable { reasons, .. }] if reasons.len() == 2
    )));
    as_whole(&m, fast, &waiting);

    // Left to the whole plan: a lease gone on a unit with a rule between units, or a held
    // unit written.
    let r = xunit("r.service", &[("Replaces", "nothing.service")]);
    assert_eq!(lease_gone_with(&s, r, None).2, None);
    // (But a unit that follows another is held with it.)
    let f = xunit("f.service", &[("MachineOf", on_2[0].as_str())]);
    let (following, m, fast) = lease_gone_with(&s, f, Some(2));
    assert_eq!(fast, Some(Plan::default()));
    as_whole(&m, fast, &following);
    // (But a unit with `Conflicts` is held: they concern only its own machine.)
    let web = xunit("web@1.service", &[("Conflicts", "web@*.service")]);
    let (conflicting, m, fast) = lease_gone_with(&s, web, None);
    assert_eq!(fast, Some(Plan::default()));
    as_whole(&m, fast, &conflicting);
    let mut rewritten = lost.clone();
    for u in rewritten
        .units
        .iter_mut()
        .filter(|u| u.name.as_str() == on_2[0])
    {
        u.desired_state = JobState::Loaded;
    }
    let mut m = held.clone();
    assert_eq!(from_memo(&mut m, &rewritten, &[&on_2[0]]), None);
    // Whose whole plan leaves a memo: back, the unit is written again in place.
    let (p, m) = plan_and_memo(&rewritten);
    assert_eq!(p, Plan::default());
    let mut m = m.expect("settled, held");
    rewritten.machines.push(machine(2));
    let fast = machine_changed(&mut m, &rewritten, 2);
    assert!(
        matches!(&fast.as_ref().unwrap().ops[..], [PlacementOp::Put { machine, placement }]
        if *machine == mid(2) && placement.desired_state == JobState::Loaded)
    );
    as_whole(&m, fast, &rewritten);
}

/// The bursts the memo decides alone (plain units written, started, stopped, destroyed) and
/// those it leaves to the whole plan (rules between units, a unit that must move).
#[test]
fn the_memo_plans_bursts_of_plain_units_alone() {
    let mut units: Vec<Unit> = (0..6)
        .map(|i| xunit(&format!("u{i}.service"), &[]))
        .collect();
    units.push(xunit("web@1.service", &[("Conflicts", "web@*.service")]));
    let mut s = snapshot(units, vec![machine(1), machine(2), machine(3)], vec![]);
    s.members = members_of(&s.machines);
    let (s, _) = converge(&s);
    let memo = plan_and_memo(&s).1.expect("settled");

    // A new plain unit goes to the least loaded machine, for the reason the whole plan gives.
    let mut added = s.clone();
    added.units.push(xunit("new.service", &[]));
    let mut m = memo.clone();
    let fast = from_memo(&mut m, &added, &["new.service"]).expect("plain");
    assert_eq!(fast, plan(&added));
    assert_eq!(puts(&fast.ops).len(), 1);
    assert!(fast
        .placed
        .contains_key(&UnitName::parse("new.service").unwrap()));

    // Destroyed: stopped on its machine first (a move), as the whole plan does.
    let mut destroyed = s.clone();
    destroyed.units.retain(|u| u.name.as_str() != "u0.service");
    let mut m = memo.clone();
    let fast = from_memo(&mut m, &destroyed, &["u0.service"]).expect("plain");
    assert_eq!(fast, plan(&destroyed));
    assert!(matches!(fast.ops.as_slice(), [PlacementOp::Move { .. }]));
    // Written again before its machine stopped it: it waits, which only the whole plan says.
    let stopping = apply(destroyed, &fast.ops);
    let mut again = stopping.clone();
    again.units.push(xunit("u0.service", &[]));
    assert_eq!(from_memo(&mut m.clone(), &again, &["u0.service"]), None);
    // Its machine stopped it and released the record: nothing more to do.
    let mut released = stopping.clone();
    released.stopping.clear();
    let fast = from_memo(&mut m, &released, &["u0.service"]);
    assert_eq!(fast, Some(Plan::default()));
    assert_eq!(Some(&m), plan_and_memo(&released).1.as_ref());

    // Loaded instead of launched: the placement is rewritten in place.
    let mut loaded = s.clone();
    loaded.units[1].desired_state = JobState::Loaded;
    let mut m = memo.clone();
    let fast = from_memo(&mut m, &loaded, &["u1.service"]).expect("plain");
    assert_eq!(fast, plan(&loaded));
    assert_eq!(fast.ops.len(), 1);

    // Conflicts are checked on each machine: a unit another one's pattern names goes to a
    // machine without that one, as a unit with a pattern of its own does.
    let web_1 = s
        .placements
        .iter()
        .find(|(_, p)| p.name.as_str() == "web@1.service")
        .map(|(m, _)| m.clone())
        .unwrap();
    for extra in [&[][..], &[("Conflicts", "web@*.service")][..]] {
        let mut named = s.clone();
        named.units.push(xunit("web@2.service", extra));
        let mut m = memo.clone();
        let fast = from_memo(&mut m, &named, &["web@2.service"]).expect("conflicts only");
        assert_eq!(fast, plan(&named));
        assert!(matches!(&fast.ops[..], [PlacementOp::Put { machine, .. }] if *machine != web_1));
        let after = apply(named, &fast.ops);
        assert_eq!(Some(&m), plan_and_memo(&after).1.as_ref());
    }

    // A unit that follows another (`MachineOf`) goes to its machine, placed in the order the
    // whole plan places units: after those of the burst that come before its leader by name.
    for (burst, extra) in [
        (&["c.service"][..], &[][..]),
        (&["a.service", "b.service"], &["b.service"][..]),
        (
            &["a.service", "b.service", "v.service"],
            &["b.service", "v.service"],
        ),
    ] {
        let leader = s.placements.iter().find(|(m, _)| *m == mid(1)).unwrap();
        let mut following = s.clone();
        following
            .units
            .push(xunit(burst[0], &[("MachineOf", leader.1.name.as_str())]));
        for name in extra {
            following.units.push(xunit(name, &[]));
        }
        let mut m = memo.clone();
        let fast = from_memo(&mut m, &following, burst);
        let placed = &fast.as_ref().expect("planned from the memo").placed;
        assert_eq!(placed[burst[0]], format!("MachineOf={}", leader.1.name));
        let following = as_whole(&m, fast, &following);
        if extra.is_empty() {
            // Its leader stopped and started again, staying where it is (with it): planned
            // from the memo; destroyed, its follower moves: the whole plan.
            let leader = leader.1.name.as_str();
            let mut stopped = following.clone();
            let at = stopped
                .units
                .iter()
                .position(|u| u.name.as_str() == leader)
                .unwrap();
            stopped.units[at].desired_state = JobState::Loaded;
            let mut m = m.clone();
            let fast = from_memo(&mut m, &stopped, &[leader]);
            assert!(matches!(
                &fast.as_ref().unwrap().ops[..],
                [PlacementOp::Put { .. }]
            ));
            let mut started = as_whole(&m, fast, &stopped);
            started.units[at].desired_state = JobState::Launched;
            let fast = from_memo(&mut m, &started, &[leader]);
            as_whole(&m, fast, &started);
            let mut destroyed = following.clone();
            destroyed.units.retain(|u| u.name.as_str() != leader);
            assert_eq!(from_memo(&mut m, &destroyed, &[leader]), None);
        }
    }

    // A global unit written runs on the machines its metadata matches and counts in their
    // load; destroyed, it no longer does. One that conflicts with a unit where it would run
    // moves that unit: the whole plan.
    let mut global = s.clone();
    global.units.push(xglobal("everywhere.service", &[]));
    let mut m = memo.clone();
    let fast = from_memo(&mut m, &global, &["everywhere.service"]);
    assert_eq!(fast, Some(Plan::default()));
    let mut global = as_whole(&m, fast, &global);
    global
        .units
        .retain(|u| u.name.as_str() != "everywhere.service");
    let fast = from_memo(&mut m, &global, &["everywhere.service"]);
    as_whole(&m, fast, &global);
    let mut conflicting = s.clone();
    conflicting.units.push(xglobal(
        "everywhere.service",
        &[("Conflicts", "u1.service")],
    ));
    assert_eq!(
        from_memo(&mut memo.clone(), &conflicting, &["everywhere.service"]),
        None
    );

    // A unit that conflicts with every machine: no machine takes it, and its reasons are
    // written.
    let mut everywhere = s.clone();
    everywhere
        .units
        .push(xunit("c.service", &[("Conflicts", "u*.service")]));
    let mut m = memo.clone();
    let fast = from_memo(&mut m, &everywhere, &["c.service"]);
    assert!(fast.as_ref().is_some_and(|p| matches!(
        &p.ops[..],
        [PlacementOp::SetUnplaceable { reasons, .. }] if reasons.len() == 3
    )));
    as_whole(&m, fast, &everywhere);

    // Left to the whole plan: a unit with a rule between units, a plain unit that must move
    // to meet its new metadata.
    let mut ruled = s.clone();
    ruled
        .units
        .push(xunit("c.service", &[("Replaces", "u1.service")]));
    assert_eq!(from_memo(&mut memo.clone(), &ruled, &["c.service"]), None);
    let mut moved = s.clone();
    moved.units[2] = xunit("u2.service", &[("MachineMetadata", "role=db")]);
    assert_eq!(from_memo(&mut memo.clone(), &moved, &["u2.service"]), None);
}

/// A unit that waits is decided again only with units it conflicts with, either way: one that
/// cannot be placed at all (invalid rules) does not stop instances that conflict with each
/// other from being planned from the memo, and one that waits for a machine gets the reasons
/// the whole plan gives it.
#[test]
fn a_unit_that_waits_is_decided_again_with_the_units_it_conflicts_with() {
    let units = vec![
        xunit("bad.service", &[("MaxUnavailable", "0")]),
        xunit(
            "w.service",
            &[
                ("MachineMetadata", "role=db"),
                ("Conflicts", "web@*.service"),
            ],
        ),
        xunit("u.service", &[]),
    ];
    let mut s = snapshot(units, vec![machine(1), machine(2)], vec![]);
    s.members = members_of(&s.machines);
    let s = settle(&s);
    assert_eq!(s.unplaceable.len(), 2, "bad and w wait");
    let memo = plan_and_memo(&s).1.expect("settled");

    // An instance that conflicts with its siblings: from the memo, as the whole plan.
    let mut web = s.clone();
    web.units.push(xunit(
        "other@1.service",
        &[("Conflicts", "other@*.service")],
    ));
    let mut m = memo.clone();
    let fast =
        from_memo(&mut m, &web, &["other@1.service"]).expect("conflicts with no waiting unit");
    let whole = plan(&web);
    let mut ops = whole.ops;
    ops.extend(unplaceable_ops(&web.unplaceable, &whole.unplaceable));
    assert_eq!((&fast.ops, &fast.placed), (&ops, &whole.placed));
    let after = apply(web, &fast.ops);
    assert_eq!(Some(&m), plan_and_memo(&after).1.as_ref());

    // One that w's pattern names: w is decided again with it, as the whole plan decides it.
    let mut named = s.clone();
    named.units.push(xunit("web@1.service", &[]));
    let mut m = memo.clone();
    let fast = from_memo(&mut m, &named, &["web@1.service"]);
    as_whole(&m, fast, &named);

    // Three instances that conflict with each other on two machines: the third waits, and
    // takes the place of one destroyed, while bad and w still wait.
    let mut three = s.clone();
    for n in 1..=3 {
        three.units.push(xunit(
            &format!("other@{n}.service"),
            &[("Conflicts", "other@*.service")],
        ));
    }
    let three = settle(&three);
    assert_eq!(three.unplaceable.len(), 3, "bad, w and other@3 wait");
    let mut m = plan_and_memo(&three).1.expect("settled");
    let mut destroyed = three.clone();
    destroyed
        .units
        .retain(|u| u.name.as_str() != "other@1.service");
    let fast = from_memo(&mut m, &destroyed, &["other@1.service"]);
    assert!(fast
        .as_ref()
        .is_some_and(|p| p.placed.contains_key("other@3.service")));
    as_whole(&m, fast, &destroyed);
}

/// A plain unit moved off its machine waits, with its reason recorded, until that machine has
/// stopped it; its release is planned from the memo: placed elsewhere, its reason cleared.
/// While a machine is being drained, a release is left to the whole plan (it can let the
/// drain go on).
#[test]
fn the_memo_places_a_moved_unit_once_its_machine_released_it() {
    let units = vec![
        xunit("a.service", &[("MachineMetadata", "role=web")]),
        xunit("b.service", &[]),
    ];
    let machines = vec![host(1, &[("role", "web")]), host(2, &[("role", "web")])];
    let mut s = snapshot(units, machines, vec![]);
    s.members = members_of(&s.machines);
    let (s, _) = converge(&s);
    let (a_on, _) = s
        .placements
        .iter()
        .find(|(_, p)| p.name.as_str() == "a.service")
        .cloned()
        .unwrap();
    let other = if a_on == mid(1) { mid(2) } else { mid(1) };
    // Its machine is no web machine any more: a moves, the other machine stops it first.
    let mut moved = s.clone();
    for m in moved.machines.iter_mut().filter(|m| m.machine.id == a_on) {
        m.machine.metadata.clear();
    }
    let (p, _) = plan_and_memo(&moved);
    let mut ops = p.ops;
    ops.extend(unplaceable_ops(&moved.unplaceable, &p.unplaceable));
    let moved = apply(moved, &ops);
    assert!(moved
        .stopping
        .contains(&(a_on.clone(), UnitName::parse("a.service").unwrap())));
    assert_eq!(moved.unplaceable.len(), 1);
    let (p, memo) = plan_and_memo(&moved);
    assert_eq!(p.ops, vec![]);
    let memo = memo.expect("settled, a waiting");

    let mut released = moved.clone();
    released.stopping.clear();
    let mut m = memo.clone();
    let fast = from_memo(&mut m, &released, &["a.service"]).expect("plain");
    assert!(matches!(&fast.ops[..], [
        PlacementOp::Put { machine, .. },
        PlacementOp::ClearUnplaceable { .. },
    ] if *machine == other));
    let (whole, _) = plan_and_memo(&released);
    let mut ops = whole.ops;
    ops.extend(unplaceable_ops(&released.unplaceable, &whole.unplaceable));
    assert_eq!(fast.ops, ops);
    let after = apply(released, &fast.ops);
    assert_eq!(Some(&m), plan_and_memo(&after).1.as_ref());

    // The same while a drained machine (its own, here) has nothing left: from the memo.
    let mut drained = moved.clone();
    drained.draining.insert(a_on.clone());
    let mut m = plan_and_memo(&drained).1.expect("settled");
    drained.stopping.clear();
    let fast = from_memo(&mut m, &drained, &["a.service"]).expect("plain");
    let (whole, _) = plan_and_memo(&drained);
    let mut ops = whole.ops;
    ops.extend(unplaceable_ops(&drained.unplaceable, &whole.unplaceable));
    assert_eq!(fast.ops, ops);
    // But while a draining machine has units (the other one, its drain held up by what it
    // is stopping): the whole plan, since a release can let a drain go on.
    let mut draining = moved.clone();
    draining.draining.insert(other.clone());
    let gone = UnitName::parse("gone.service").unwrap();
    draining.stopping.insert((other.clone(), gone.clone()));
    let (p, m) = plan_and_memo(&draining);
    assert_eq!(p.ops, vec![], "the drain waits for gone.service to stop");
    let mut m = m.expect("settled");
    draining
        .stopping
        .remove(&(a_on.clone(), UnitName::parse("a.service").unwrap()));
    assert_eq!(from_memo(&mut m, &draining, &["a.service"]), None);
}

/// A unit placed on two machines (only one of them meets its rules) and pushed off the one it
/// is kept on by a unit that replaces it stops on both before it is placed again: it never
/// runs twice. (Found by the property tests.)
#[test]
fn a_unit_placed_twice_and_pushed_away_stops_on_both_first() {
    let a = xunit(
        "a.service",
        &[("MachineMetadata", "role=db"), ("Replaces", "db.service")],
    );
    let db = xunit(
        "db.service",
        &[("MachineMetadata", "\"role=web\" \"role=db\"")],
    );
    let machines = vec![
        host(2, &[]),
        host(3, &[("role", "db")]),
        host(4, &[("role", "web")]),
    ];
    let placements = vec![at(2, &db), at(3, &db)];
    let mut s = snapshot(vec![a, db], machines, placements);
    s.members = members_of(&s.machines);
    let p = plan(&s);
    assert!(starts_while_stopping(&s, &p.ops).is_empty(), "{:?}", p.ops);
    assert!(
        puts(&p.ops).iter().all(|(name, _)| name != "db.service"),
        "{:?}",
        p.ops
    );
    assert_eq!(
        reasons_of(&p),
        why(&[("db.service", &["stopping on f1ee7002 before it moves"])])
    );
    let (settled, _) = converge(&s);
    assert_eq!(violations(&settled), Vec::<String>::new());
}

/// A unit that must be with a unit it replaces, through another one's `MachineOf`: it cannot
/// be placed, says why, and the others settle instead of pushing each other off machine after
/// machine.
#[test]
fn replacing_a_unit_one_must_be_with_is_unplaceable() {
    let units = vec![
        xunit(
            "a.service",
            &[("MachineOf", "b.service"), ("Replaces", "c.service")],
        ),
        xunit("b.service", &[("MachineOf", "c.service")]),
        xunit("c.service", &[]),
    ];
    let mut s = snapshot(units, vec![machine(1), machine(2)], vec![]);
    s.members = members_of(&s.machines);
    let (settled, last) = converge(&s);
    assert_eq!(
        reasons_of(&last),
        why(&[(
            "a.service",
            &[
                "unresolvable requirements: it must be with c.service (MachineOf, through \
               b.service), which its Replaces pushes away"
            ]
        )])
    );
    let on: Vec<&MachineId> = settled.placements.iter().map(|(m, _)| m).collect();
    assert_eq!(on.len(), 2);
    assert_eq!(on[0], on[1]);
}

/// Bursts the memo once planned wrongly (found by review): a unit that starts following a
/// unit destroyed in the same burst, and a unit that becomes global while the machine that
/// is no member it was placed on leaves. Each is planned as the whole plan plans it.
#[test]
fn a_follower_of_a_unit_destroyed_and_a_unit_become_global_as_its_machine_leaves() {
    let units = vec![xunit("a.service", &[]), xunit("z.service", &[])];
    let mut s = snapshot(units, vec![machine(1)], vec![]);
    s.members = members_of(&s.machines);
    let (s, _) = converge(&s);
    let memo = plan_and_memo(&s).1.expect("settled");
    let mut burst = s.clone();
    burst.units = vec![xunit("a.service", &[("MachineOf", "z.service")])];
    let mut m = memo.clone();
    if let Some(fast) = from_memo(&mut m, &burst, &["a.service", "z.service"]) {
        as_whole(&m, Some(fast), &burst);
    }

    let units: Vec<Unit> = (0..4)
        .map(|i| xunit(&format!("u{i}.service"), &[]))
        .collect();
    let mut s = snapshot(units, vec![machine(1), machine(2)], vec![]);
    s.members = members_of(&s.machines);
    let (mut s, _) = converge(&s);
    // Machine 2 declared dead, its record written again before it registers: no member.
    s.members.retain(|e| e.member.machine.id != mid(2));
    let (s, _) = converge(&s);
    let memo = plan_and_memo(&s).1.expect("settled");
    let (_, on_2) = s
        .placements
        .iter()
        .find(|(m, _)| *m == mid(2))
        .expect("a unit on machine 2")
        .clone();
    let mut burst = s.clone();
    burst.machines.retain(|e| e.machine.id != mid(2));
    for u in burst.units.iter_mut().filter(|u| u.name == on_2.name) {
        *u = xglobal(on_2.name.as_str(), &[]);
    }
    let mut m = memo.clone();
    let changed: BTreeSet<UnitName> = [on_2.name.clone()].into_iter().collect();
    let machines: BTreeSet<MachineId> = [mid(2)].into_iter().collect();
    if let Some(fast) = m.plan(&changed, &machines, &Now(&burst)) {
        as_whole(&m, Some(fast), &burst);
    }
}

/// A leader that stays where it is but follows another unit no longer changes what its
/// followers may do: here a unit whose `Replaces` pushed away a unit it was with through
/// `MachineOf` (transitively), unplaceable, becomes placeable. The memo leaves it to the whole
/// plan.
#[test]
fn a_leader_that_stops_following_is_left_to_the_whole_plan() {
    let units = vec![
        xunit("b.service", &[("MachineOf", "web@3.service")]),
        xunit("z.service", &[("MachineOf", "b.service")]),
        xunit(
            "web@2.service",
            &[("MachineOf", "z.service"), ("Replaces", "web@3.service")],
        ),
        xunit("web@3.service", &[]),
    ];
    let mut s = snapshot(units, vec![machine(1), machine(2)], vec![]);
    s.members = members_of(&s.machines);
    let (s, _) = converge(&s);
    assert!(plan(&s)
        .unplaceable
        .iter()
        .any(|u| u.unit.as_str() == "web@2.service"));
    let memo = plan_and_memo(&s).1.expect("settled");
    let mut rewritten = s.clone();
    rewritten.units[0] = xunit("b.service", &[]);
    assert!(plan(&rewritten)
        .placed
        .contains_key(&UnitName::parse("web@2.service").unwrap()));
    assert_eq!(
        from_memo(&mut memo.clone(), &rewritten, &["b.service"]),
        None
    );
}

/// A unit that waits and is placed in a burst (here a@3, once a@1 is destroyed) can change
/// the reasons of another that waits and conflicts with it (zz, whose reason on a@1's machine
/// now names a@3, first by name): both are decided again, as the whole plan decides them.
#[test]
fn a_unit_that_waits_and_is_placed_gives_others_that_wait_new_reasons() {
    let a = |n: u8| xunit(&format!("a@{n}.service"), &[("Conflicts", "a@*.service")]);
    let units = vec![
        a(1),
        a(2),
        a(3),
        xunit(
            "zz.service",
            &[("Conflicts", "z*.service"), ("Conflicts", "a@3.service")],
        ),
        xunit("z1.service", &[("MachineID", &mid(1).to_string())]),
        xunit("z2.service", &[("MachineID", &mid(2).to_string())]),
    ];
    let mut s = snapshot(units, vec![machine(1), machine(2)], vec![]);
    s.members = members_of(&s.machines);
    let s = settle(&s);
    let waiting: Vec<&str> = s.unplaceable.keys().map(|n| n.as_str()).collect();
    assert_eq!(waiting, ["a@3.service", "zz.service"]);
    let mut m = plan_and_memo(&s).1.expect("settled");
    let (on, _) = s
        .placements
        .iter()
        .find(|(_, p)| p.name.as_str() == "a@1.service")
        .unwrap();
    let n = (1..=2).find(|&n| mid(n) == *on).unwrap();
    let mut destroyed = s.clone();
    destroyed.units.retain(|u| u.name.as_str() != "a@1.service");
    let fast = from_memo(&mut m, &destroyed, &["a@1.service"]);
    let zz_reason = format!("{}: conflicts with a@3.service", mid(n).short());
    assert!(fast
        .as_ref()
        .is_some_and(|p| p.ops.iter().any(|op| matches!(
            op,
            PlacementOp::SetUnplaceable { name, reasons }
                if name.as_str() == "zz.service" && reasons.contains(&zz_reason)
        ))));
    as_whole(&m, fast, &destroyed);
}

/// Up to sixteen machines refusing a unit give a line each; more give a line per reason,
/// naming three of its machines, most machines first, and one line for the reasons past
/// sixteen.
#[test]
fn reasons_past_sixteen_machines_are_given_by_reason() {
    let few: Vec<(String, &str)> = (1..=16).map(|n| (format!("m{n:02}"), "full")).collect();
    let lines = refused_by(few.clone());
    assert_eq!(lines.len(), 16);
    assert_eq!(
        (lines[0].as_str(), lines[15].as_str()),
        ("m01: full", "m16: full")
    );
    let mut seventeen = few;
    seventeen.push(("m17".into(), "full"));
    assert_eq!(refused_by(seventeen), ["m01, m02, m03 and 14 more: full"]);

    let mut many: Vec<(String, String)> = (1..=20)
        .map(|n| {
            (
                format!("m{n:02}"),
                "metadata role=db not matched".to_string(),
            )
        })
        .collect();
    many[4].1 = "conflicts with x.service".into();
    many[9].1 = "conflicts with x.service".into();
    many[7].1 = "machine is draining".into();
    assert_eq!(
        refused_by(many.clone()),
        [
            "m01, m02, m03 and 14 more: metadata role=db not matched",
            "m05, m10: conflicts with x.service",
            "m08: machine is draining",
        ]
    );

    // A reason each: fifteen lines, the rest counted.
    for (n, refusal) in many.iter_mut().enumerate() {
        refusal.1 = format!("conflicts with x{n}.service");
    }
    let lines = refused_by(many);
    assert_eq!(lines.len(), 16);
    assert_eq!(lines[0], "m01: conflicts with x0.service");
    assert_eq!(lines[14], "m15: conflicts with x14.service");
    assert_eq!(lines[15], "5 more machines: 5 other reasons");
}

/// With more than sixteen machines, a unit that waits is given its reasons by reason, by the
/// whole plan and by the memo alike, as machines join.
#[test]
fn a_unit_that_waits_among_many_machines_is_given_its_reasons_by_reason() {
    let mut units: Vec<Unit> = (1..=20)
        .map(|n| {
            xunit(
                &format!("web@{n}.service"),
                &[("Conflicts", "web@*.service")],
            )
        })
        .collect();
    units.push(xunit("w.service", &[("MachineMetadata", "role=db")]));
    units.push(xunit(
        "x.service",
        &[
            ("MachineMetadata", "role=web"),
            ("Conflicts", "web@*.service"),
        ],
    ));
    let machines: Vec<MachineEntry> = (1..=20)
        .map(|n| match n {
            19 | 20 => host(n, &[("role", "web")]),
            _ => machine(n),
        })
        .collect();
    let mut s = snapshot(units, machines, vec![]);
    s.members = members_of(&s.machines);
    let s = settle(&s);
    let w = &s.unplaceable[&UnitName::parse("w.service").unwrap()];
    assert_eq!(
        w,
        &["f1ee7001, f1ee7002, f1ee7003 and 17 more: metadata role=db not matched"]
    );
    let x = &s.unplaceable[&UnitName::parse("x.service").unwrap()];
    assert_eq!(x.len(), 3, "{x:?}");
    assert_eq!(
        x[0],
        "f1ee7001, f1ee7002, f1ee7003 and 15 more: metadata role=web not matched"
    );
    assert!(x[1].starts_with("f1ee7013: conflicts with web@"), "{x:?}");
    assert!(x[2].starts_with("f1ee7014: conflicts with web@"), "{x:?}");
    let m = plan_and_memo(&s).1.expect("settled, w and x waiting");

    // A machine that takes neither: one more machine in w's line.
    let mut joined = s.clone();
    let mut memo = m.clone();
    let fast = joins(&mut memo, &mut joined, 21, &[]);
    assert!(fast.as_ref().is_some_and(|p| p.ops.iter().any(|op| matches!(
        op,
        PlacementOp::SetUnplaceable { name, reasons }
            if name.as_str() == "w.service"
                && reasons == &["f1ee7001, f1ee7002, f1ee7003 and 18 more: metadata role=db not matched"]
    ))));
    let joined = as_whole(&memo, fast, &joined);

    // One that takes w: w goes there, its reasons cleared.
    let mut memo = plan_and_memo(&joined).1.expect("settled");
    let mut with_db = joined.clone();
    let fast = joins(&mut memo, &mut with_db, 22, &[("role", "db")]);
    assert!(fast
        .as_ref()
        .is_some_and(|p| p.placed.contains_key("w.service")));
    let after = as_whole(&memo, fast, &with_db);
    assert!(!after
        .unplaceable
        .contains_key(&UnitName::parse("w.service").unwrap()));
}
