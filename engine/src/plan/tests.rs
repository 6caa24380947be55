//! Tests of [`plan`]: examples per rule, and properties over random clusters.

use super::*;
use std::collections::BTreeMap;

use fleet_registry::{JobState, Machine, MachineEntry, MachineId, Placement, Unit};
use fleet_units::{UnitName, UnitOption};

fn mid(n: u8) -> MachineId {
    MachineId::parse(&format!("{n:02x}{}", "0".repeat(30))).unwrap()
}

fn machine(n: u8) -> MachineEntry {
    MachineEntry {
        machine: Machine {
            id: mid(n),
            public_ip: format!("10.0.0.{n}"),
            metadata: Default::default(),
            version: String::new(),
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
        machines,
        placements,
    }
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
        }
    }
    s
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
                lease: 102,
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
                    lease: 102,
                    placement: Placement::for_unit(&a),
                },
            ],
        ),
        (
            "placed twice: the second is removed",
            snapshot(
                vec![a.clone()],
                vec![machine(1), machine(2)],
                vec![
                    (mid(2), Placement::for_unit(&a)),
                    (mid(1), Placement::for_unit(&a)),
                ],
            ),
            vec![PlacementOp::Delete {
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
