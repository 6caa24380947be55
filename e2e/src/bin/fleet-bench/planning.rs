//! `fleet-bench plan`: the engine's planning alone, in memory (no etcd, no process), at sizes
//! beyond what the hollow machines reach here: what one event costs the leading engine once
//! its view has it (issue 10: it must not grow with the cluster).
//!
//! For each size, a settled cluster of plain units (no `[X-Fleet]` rules) spread over the
//! machines, and one global unit running on every machine. Timed: the whole plan of it (what
//! every event cost before the memo, and what a change the memo cannot decide still costs);
//! then, planned from the memo, a unit written and placed, a unit that follows it
//! (`MachineOf`) written and placed with it, an instance of a template whose instances
//! conflict with each other (templates of 10 instances) written and placed, a machine joining,
//! and a machine lost (its lease gone, its units held; then declared dead, its units placed
//! elsewhere); then, with a unit written that no machine takes (its metadata), a machine
//! joining while it waits (it is decided again: the machine that joined refuses it too, and
//! its reasons count one more machine).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fleet_engine::plan::{plan, plan_and_memo, Cluster, Memo, Plan};
use fleet_registry::{
    EngineSnapshot, JobState, Machine, MachineEntry, MachineId, Member, MemberEntry, Placement,
    PlacementOp, Unit,
};
use fleet_units::{UnitName, UnitOption};

/// Whole plans timed per size (the median is printed).
const WHOLE_PLANS: usize = 5;
/// Events of each kind timed per size (the median and the slowest are printed).
const EVENTS: usize = 201;

/// The cluster as the memo looks it up: what the engine's view indexes by key.
#[derive(Default)]
struct Indexed {
    units: HashMap<UnitName, Unit>,
    placements: HashMap<(MachineId, UnitName), Placement>,
    machines: HashMap<MachineId, MachineEntry>,
    members: HashSet<MachineId>,
    unplaceable: HashMap<UnitName, Vec<String>>,
}

impl Cluster for Indexed {
    fn unit(&self, name: &UnitName) -> Option<&Unit> {
        self.units.get(name)
    }

    fn placement(&self, machine: &MachineId, name: &UnitName) -> Option<&Placement> {
        self.placements.get(&(machine.clone(), name.clone()))
    }

    fn machine(&self, id: &MachineId) -> Option<&MachineEntry> {
        self.machines.get(id)
    }

    fn is_member(&self, id: &MachineId) -> bool {
        self.members.contains(id)
    }

    fn is_draining(&self, _: &MachineId) -> bool {
        false
    }

    fn is_stopping(&self, _: &MachineId, _: &UnitName) -> bool {
        false
    }

    fn reasons(&self, name: &UnitName) -> Option<&[String]> {
        self.unplaceable.get(name).map(Vec::as_slice)
    }
}

impl Indexed {
    fn apply(&mut self, ops: &[PlacementOp]) -> Result<(), String> {
        for op in ops {
            match op {
                PlacementOp::Put { machine, placement } => {
                    self.placements
                        .insert((machine.clone(), placement.name.clone()), placement.clone());
                }
                PlacementOp::SetUnplaceable { name, reasons } => {
                    self.unplaceable.insert(name.clone(), reasons.clone());
                }
                other => return Err(format!("the memo planned {other:?}, not a placement")),
            }
        }
        Ok(())
    }
}

/// Ids spread as machine ids are (no two share their first 8 digits, fleet's short id, as
/// sequential numbers would).
fn machine_id(i: usize) -> MachineId {
    let spread = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    MachineId::parse(&format!("{spread:016x}{i:016x}")).expect("32 hexadecimal digits")
}

fn machine(i: usize) -> MachineEntry {
    MachineEntry {
        machine: Machine {
            id: machine_id(i),
            public_ip: "10.0.0.1".into(),
            metadata: Default::default(),
            version: "bench".into(),
            peer_address: None,
        },
        lease: i as i64 + 1,
    }
}

fn member(entry: &MachineEntry, members: usize) -> MemberEntry {
    MemberEntry {
        member: Member {
            machine: entry.machine.clone(),
            seen_revision: 1,
            seen_members: members,
        },
        create_revision: 1,
        mod_revision: 1,
    }
}

fn plain_unit(name: &str) -> Unit {
    Unit {
        name: UnitName::parse(name).expect("a valid unit name"),
        options: vec![UnitOption::new(
            "Service",
            "ExecStart",
            "/bin/sleep infinity",
        )],
        desired_state: JobState::Launched,
    }
}

/// `machines` machines and `units` plain units placed as the engine places them, and one
/// global unit: settled.
fn settled(machines: usize, units: usize) -> Result<EngineSnapshot, String> {
    let entries: Vec<MachineEntry> = (0..machines).map(machine).collect();
    let mut all: Vec<Unit> = (0..units)
        .map(|i| plain_unit(&format!("u{i}.service")))
        .collect();
    let mut global = plain_unit("everywhere.service");
    global
        .options
        .push(UnitOption::new("X-Fleet", "Global", "true"));
    all.push(global);
    let mut s = EngineSnapshot {
        members: entries.iter().map(|e| member(e, machines)).collect(),
        machines: entries,
        units: all,
        ..EngineSnapshot::default()
    };
    let first = plan(&s);
    for op in first.ops {
        match op {
            PlacementOp::Put { machine, placement } => s.placements.push((machine, placement)),
            other => return Err(format!("placing a new cluster planned {other:?}")),
        }
    }
    Ok(s)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The median and the slowest of an event's times.
struct Spread {
    median: Duration,
    slowest: Duration,
}

impl Spread {
    fn of(times: Vec<Duration>) -> Spread {
        Spread {
            slowest: times.iter().copied().max().unwrap_or_default(),
            median: median(times),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", ms(self.median), ms(self.slowest))
    }
}

struct Row {
    machines: usize,
    units: usize,
    whole: Duration,
    unit: Spread,
    follower: Spread,
    conflict: Spread,
    join: Spread,
    lost: Spread,
    waiting_join: Spread,
}

/// Writes `unit` and plans it from `memo`, the plan timed into `times`: the plan, or an error
/// naming `what` when the memo leaves it to the whole plan.
fn write_and_plan(
    memo: &mut Memo,
    now: &mut Indexed,
    unit: Unit,
    times: &mut Vec<Duration>,
    what: &str,
) -> Result<Plan, String> {
    let changed: BTreeSet<UnitName> = [unit.name.clone()].into_iter().collect();
    let no_machine: BTreeSet<MachineId> = BTreeSet::new();
    now.units.insert(unit.name.clone(), unit);
    let started = Instant::now();
    let planned = memo.plan(&changed, &no_machine, now);
    times.push(started.elapsed());
    planned.ok_or_else(|| format!("the memo left {what} to the whole plan"))
}

/// Machine `i` joins, and the join is planned from `memo`, the plan timed into `times`.
fn join_and_plan(
    memo: &mut Memo,
    now: &mut Indexed,
    i: usize,
    times: &mut Vec<Duration>,
) -> Option<Plan> {
    let entry = machine(i);
    let id = entry.machine.id.clone();
    now.machines.insert(id.clone(), entry);
    now.members.insert(id.clone());
    let joined: BTreeSet<MachineId> = [id].into_iter().collect();
    let no_unit: BTreeSet<UnitName> = BTreeSet::new();
    let started = Instant::now();
    let planned = memo.plan(&no_unit, &joined, now);
    times.push(started.elapsed());
    planned
}

fn measure(machines: usize, units: usize) -> Result<Row, String> {
    let s = settled(machines, units)?;
    let mut whole = Vec::new();
    let mut memo: Option<Memo> = None;
    for _ in 0..WHOLE_PLANS {
        let started = Instant::now();
        let (p, m) = plan_and_memo(&s);
        whole.push(started.elapsed());
        if !p.ops.is_empty() {
            return Err(format!("a settled cluster planned {} ops", p.ops.len()));
        }
        memo = m;
    }
    let mut memo = memo.ok_or("a settled cluster left no memo")?;
    let mut now = Indexed {
        units: s
            .units
            .iter()
            .map(|u| (u.name.clone(), u.clone()))
            .collect(),
        placements: s
            .placements
            .iter()
            .map(|(m, p)| ((m.clone(), p.name.clone()), p.clone()))
            .collect(),
        machines: s
            .machines
            .iter()
            .map(|e| (e.machine.id.clone(), e.clone()))
            .collect(),
        members: s.machines.iter().map(|e| e.machine.id.clone()).collect(),
        unplaceable: HashMap::new(),
    };
    drop(s);
    let no_unit: BTreeSet<UnitName> = BTreeSet::new();
    let mut unit_times = Vec::with_capacity(EVENTS);
    let mut follower_times = Vec::with_capacity(EVENTS);
    let mut join_times = Vec::with_capacity(EVENTS);
    let mut lost_times = Vec::with_capacity(EVENTS);
    let mut conflict_times = Vec::with_capacity(EVENTS);
    // The machines each template's instances went to.
    let mut instances_on: HashMap<usize, HashSet<MachineId>> = HashMap::new();
    for i in 0..EVENTS {
        // A unit written: placed on the least loaded machine.
        let unit = plain_unit(&format!("new{i}.service"));
        let leader = unit.name.clone();
        let planned = write_and_plan(&mut memo, &mut now, unit, &mut unit_times, "a plain unit")?;
        let [PlacementOp::Put { machine: there, .. }] = &planned.ops[..] else {
            return Err(format!("a new unit planned {:?}", planned.ops));
        };
        let there = there.clone();
        now.apply(&planned.ops)?;

        // A unit that follows it: placed on its machine.
        let mut follower = plain_unit(&format!("new{i}-log.service"));
        follower
            .options
            .push(UnitOption::new("X-Fleet", "MachineOf", leader.as_str()));
        let planned = write_and_plan(
            &mut memo,
            &mut now,
            follower,
            &mut follower_times,
            "a unit that follows another",
        )?;
        match &planned.ops[..] {
            [PlacementOp::Put { machine, .. }] if *machine == there => {}
            other => return Err(format!("a unit that follows another planned {other:?}")),
        }
        now.apply(&planned.ops)?;

        // An instance that conflicts with the others of its template: placed on the least
        // loaded machine without one.
        let template = i / 10;
        let mut instance = plain_unit(&format!("web{template}@{}.service", i % 10));
        instance.options.push(UnitOption::new(
            "X-Fleet",
            "Conflicts",
            format!("web{template}@*.service"),
        ));
        let planned = write_and_plan(
            &mut memo,
            &mut now,
            instance,
            &mut conflict_times,
            "an instance that conflicts",
        )?;
        match &planned.ops[..] {
            [PlacementOp::Put { machine, .. }]
                if instances_on
                    .entry(template)
                    .or_default()
                    .insert(machine.clone()) => {}
            other => return Err(format!("an instance that conflicts planned {other:?}")),
        }
        now.apply(&planned.ops)?;

        // A machine joining: nothing moves.
        match join_and_plan(&mut memo, &mut now, machines + i, &mut join_times) {
            Some(p) if p.ops.is_empty() => {}
            Some(p) => return Err(format!("a machine joining planned {:?}", p.ops)),
            None => return Err("the memo left a machine joining to the whole plan".into()),
        }

        // A machine lost (machine i, one of the first or one that joined): its lease gone,
        // then declared dead, which removes its placements.
        let id = machine_id(i);
        let lost: BTreeSet<MachineId> = [id.clone()].into_iter().collect();
        let on: Vec<(MachineId, UnitName)> = now
            .placements
            .keys()
            .filter(|(m, _)| *m == id)
            .cloned()
            .collect();
        now.machines.remove(&id);
        let started = Instant::now();
        let held = memo.plan(&no_unit, &lost, &now);
        let mut elapsed = started.elapsed();
        match held {
            Some(p) if p.ops.is_empty() => {}
            Some(p) => return Err(format!("a lease gone planned {:?}", p.ops)),
            None => return Err("the memo left a lease gone to the whole plan".into()),
        }
        now.members.remove(&id);
        for key in &on {
            now.placements.remove(key);
        }
        let started = Instant::now();
        let declared = memo.plan(&no_unit, &lost, &now);
        elapsed += started.elapsed();
        lost_times.push(elapsed);
        let declared = declared.ok_or("the memo left a machine declared dead to the whole plan")?;
        if declared.ops.len() != on.len() {
            return Err(format!(
                "a machine declared dead with {} units planned {:?}",
                on.len(),
                declared.ops
            ));
        }
        now.apply(&declared.ops)?;
    }

    // A unit whose metadata no machine has: it waits, refused by every machine for one reason
    // (a line each up to 16 machines, else one line that names three and counts the others).
    let refused_by_all = |reasons: &[String], machines: usize| match machines {
        0..=16 => {
            reasons.len() == machines
                && reasons
                    .iter()
                    .all(|r| r.ends_with(": metadata role=nowhere not matched"))
        }
        _ => matches!(reasons, [line] if line.ends_with(
            &format!(" and {} more: metadata role=nowhere not matched", machines - 3))),
    };
    let mut nowhere = plain_unit("nowhere.service");
    nowhere.options.push(UnitOption::new(
        "X-Fleet",
        "MachineMetadata",
        "role=nowhere",
    ));
    let planned = write_and_plan(
        &mut memo,
        &mut now,
        nowhere,
        &mut Vec::new(),
        "a unit no machine takes",
    )?;
    match &planned.ops[..] {
        [PlacementOp::SetUnplaceable { reasons, .. }]
            if refused_by_all(reasons, now.machines.len()) => {}
        other => return Err(format!("a unit no machine takes planned {other:?}")),
    }
    now.apply(&planned.ops)?;
    // Machines joining while it waits: it is decided again, one more machine counted each time.
    let mut waiting_join_times = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let planned = join_and_plan(
            &mut memo,
            &mut now,
            machines + EVENTS + i,
            &mut waiting_join_times,
        )
        .ok_or("the memo left a machine joining while a unit waits to the whole plan")?;
        match &planned.ops[..] {
            [PlacementOp::SetUnplaceable { reasons, .. }]
                if refused_by_all(reasons, now.machines.len()) => {}
            other => {
                return Err(format!(
                    "a machine joining while a unit waits planned {other:?}"
                ))
            }
        }
        now.apply(&planned.ops)?;
    }
    Ok(Row {
        machines,
        units,
        whole: median(whole),
        unit: Spread::of(unit_times),
        follower: Spread::of(follower_times),
        conflict: Spread::of(conflict_times),
        join: Spread::of(join_times),
        lost: Spread::of(lost_times),
        waiting_join: Spread::of(waiting_join_times),
    })
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

pub fn plan_bench(sizes: &[u32], units_per_machine: u32) -> ExitCode {
    println!(
        "plan: the engine's planning alone, in memory (no etcd): a settled cluster of plain units \
         and one global unit; target (issue 10): the cost of one event does not grow with the \
         cluster"
    );
    println!(
        "| machines | units | whole plan (median of {WHOLE_PLANS}) | a unit written, from the memo \
         (median; slowest of {EVENTS}) | a unit that follows it (MachineOf) written, from the memo \
         (median; slowest) | an instance that conflicts with the others written, from the memo \
         (median; slowest) | a machine joining, from the memo (median; slowest) | a \
         machine lost, from the memo: lease gone, then declared dead (median; slowest) | a \
         machine joining while a unit waits, from the memo (median; slowest) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    for &machines in sizes {
        let machines = machines as usize;
        let units = machines * units_per_machine as usize;
        match measure(machines, units) {
            Ok(row) => println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.machines,
                row.units,
                ms(row.whole),
                row.unit,
                row.follower,
                row.conflict,
                row.join,
                row.lost,
                row.waiting_join
            ),
            Err(e) => {
                eprintln!("fleet-bench: plan at {machines} machines: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's events are planned from the memo, each as the whole plan would: a new
    /// unit to one machine, its follower to the same, an instance to a machine without another
    /// of its template, a join to nothing, a lease gone to nothing, a declaration to a
    /// placement for each unit of the machine, and a join while a unit waits to its reasons,
    /// every machine refusing it for one reason (`measure` fails otherwise).
    #[test]
    fn a_small_cluster_is_measured_from_the_memo() {
        // At 10 machines, the waiting unit's reasons are a line per machine until the joins
        // bring them past 16.
        for (machines, units) in [(20, 100), (10, 50)] {
            let row = measure(machines, units).expect("measured");
            assert_eq!((row.machines, row.units), (machines, units));
            for spread in [
                &row.unit,
                &row.follower,
                &row.conflict,
                &row.join,
                &row.lost,
                &row.waiting_join,
            ] {
                assert!(spread.median <= spread.slowest);
            }
        }
    }
}
