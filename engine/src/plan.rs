//! The engine's decision: which unit goes to which machine. Pure: no IO, no clock.

use std::collections::{BTreeMap, BTreeSet};

use fleet_registry::{EngineSnapshot, JobState, MachineId, Placement, PlacementOp, Unit};

/// Works out the placement changes that bring `snapshot` to what its units ask for.
///
/// - A placement whose unit is gone, inactive or global, or whose machine is gone, is removed.
/// - A unit placed on several machines keeps only the first (by machine id).
/// - A kept placement whose content or desired state differs from its unit is rewritten in place.
/// - Every other unit that should run is placed on the machine with the fewest units (global
///   units count), ties broken by machine id, counting each decision before the next.
///
/// Units are considered in name order, so the result does not depend on input order.
pub fn plan(snapshot: &EngineSnapshot) -> Vec<PlacementOp> {
    let leases: BTreeMap<&MachineId, i64> = snapshot
        .machines
        .iter()
        .map(|m| (&m.machine.id, m.lease))
        .collect();
    let wanted: BTreeMap<&str, &Unit> = snapshot
        .units
        .iter()
        .filter(|u| u.desired_state != JobState::Inactive && !u.is_global())
        .map(|u| (u.name.as_str(), u))
        .collect();
    let global_count = snapshot
        .units
        .iter()
        .filter(|u| u.desired_state != JobState::Inactive && u.is_global())
        .count();

    let mut ops = Vec::new();
    let mut load: BTreeMap<&MachineId, usize> = leases.keys().map(|m| (*m, global_count)).collect();
    let mut placed: BTreeSet<&str> = BTreeSet::new();

    let mut existing: Vec<&(MachineId, Placement)> = snapshot.placements.iter().collect();
    existing.sort_by(|a, b| (a.1.name.as_str(), &a.0).cmp(&(b.1.name.as_str(), &b.0)));
    for (machine, placement) in existing {
        let name = placement.name.as_str();
        let unit = wanted.get(name);
        let lease = leases.get(machine);
        match (unit, lease) {
            (Some(unit), Some(&lease)) if !placed.contains(name) => {
                placed.insert(name);
                *load.entry(machine).or_default() += 1;
                let target = Placement::for_unit(unit);
                if *placement != target {
                    ops.push(PlacementOp::Put {
                        machine: machine.clone(),
                        lease,
                        placement: target,
                    });
                }
            }
            _ => ops.push(PlacementOp::Delete {
                machine: machine.clone(),
                name: placement.name.clone(),
            }),
        }
    }

    for (name, unit) in &wanted {
        if placed.contains(name) {
            continue;
        }
        let Some((&machine, _)) = load.iter().min_by_key(|(m, n)| (**n, **m)) else {
            continue; // no machine at all: the unit waits
        };
        let Some(&lease) = leases.get(machine) else {
            continue;
        };
        *load.entry(machine).or_default() += 1;
        ops.push(PlacementOp::Put {
            machine: machine.clone(),
            lease,
            placement: Placement::for_unit(unit),
        });
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_registry::{Machine, MachineEntry};
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
            unplaceable: Default::default(),
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
                PlacementOp::SetUnplaceable { .. } | PlacementOp::ClearUnplaceable { .. } => {}
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
        let got = puts(&plan(&s));
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
        let ops = plan(&s);
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
            assert_eq!(plan(&s), want, "{what}");
        }
    }

    #[test]
    fn global_units_count_toward_load_equally() {
        let s = snapshot(
            vec![global("g.service"), unit("a.service", JobState::Launched)],
            vec![machine(2), machine(1)],
            vec![],
        );
        assert_eq!(puts(&plan(&s)), vec![("a.service".into(), mid(1))]);
    }

    #[test]
    fn plan_is_idempotent_and_order_independent() {
        let units: Vec<Unit> = (0..40)
            .map(|i| unit(&format!("u{i:02}.service"), JobState::Launched))
            .collect();
        let machines: Vec<MachineEntry> = (1..=7).map(machine).collect();
        let s = snapshot(units.clone(), machines.clone(), vec![]);
        let ops = plan(&s);
        let mut reversed = snapshot(
            units.into_iter().rev().collect(),
            machines.into_iter().rev().collect(),
            vec![],
        );
        assert_eq!(plan(&reversed), ops);
        reversed = apply(s, &ops);
        assert_eq!(plan(&reversed), vec![], "a second pass changes nothing");
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
}
