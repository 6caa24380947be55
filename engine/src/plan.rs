//! The engine's decision: which unit goes to which machine. Pure: no IO, no clock.
//!
//! [`plan`] follows fleet v1.0's least-loaded scheduler and its `[X-Fleet]` rules
//! (`agent/state.go` `AbleToRun`, `engine/reconciler.go`), in one deterministic pass:
//!
//! 1. **Keep.** Every existing placement that still holds is kept: its unit wants to run, its
//!    machine is alive, and on that machine the unit meets its `MachineID`, `MachineMetadata`
//!    and `MachineOf`, conflicts (both ways) with no global unit running there nor with a unit
//!    kept there before it, and is not replaced (`Replaces`) by a unit kept there. Placements
//!    whose content did not change are kept first, so when a re-submitted unit starts to
//!    conflict with a neighbour, the re-submitted one moves.
//! 2. **Place.** Every other unit that should run goes, in dependency order (`MachineOf`
//!    leaders before their followers) then name order, to the least loaded machine that passes
//!    every rule, ties by machine id. A unit placed next to one it replaces pushes that one
//!    (and its followers) away, to be placed again in the same pass.
//! 3. **Diff.** The result is compared with the existing placements: stale ones are deleted,
//!    kept ones whose content or desired state changed are rewritten in place, new ones put.
//!    All deletes come before the new placements.
//!
//! **Moves stop first.** A unit that still wants to run but loses its place on a live machine
//! (a rule stopped holding, a `Replaces` pushed it, a drain) is not placed elsewhere in the same
//! pass: its removal is a [`PlacementOp::Move`], which records that the machine is stopping it,
//! and the unit waits, unplaceable "stopping on <machine>", until that machine's agent has
//! stopped it (the record is gone) or the machine was declared dead. So it never runs twice.
//!
//! **Drains.** A draining machine takes no new unit, and gives up its non-global units one at a
//! time (with the units that follow it by `MachineOf`): the next one only once nothing taken
//! off it is still stopping. Leaders first, then name order. An instance of a template whose
//! `MaxUnavailable` is N is taken off only while fewer than N instances of that template are
//! down: stopping, or taken down by a rolling update (updating, failed or reverting).
//!
//! A machine's load is the number of non-global units placed there plus the global units whose
//! metadata it matches. Global units are never placed by the engine; they run on every machine
//! whose metadata they match and count there for load and conflicts.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use fleet_registry::{EngineSnapshot, JobState, MachineEntry, Placement, PlacementOp, Unit};
use fleet_units::{glob_match, Requirements, UnitName};

/// What the engine should do, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The placement changes, deletes first.
    pub ops: Vec<PlacementOp>,
    /// Units that should run but have no machine after this plan, in name order.
    pub unplaceable: Vec<Unplaceable>,
    /// Why each unit this plan puts on a new machine goes there (`MachineOf=<leader>`,
    /// `MachineID=<id>`, least loaded, what it replaces there), for its `placed` event.
    pub placed: BTreeMap<UnitName, String>,
}

/// A unit that should run and cannot be placed now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaceable {
    pub unit: UnitName,
    /// The reason on each machine (`refused_by`: `"<short id>: <reason>"`, machines in id
    /// order; past `REASON_LINES` machines, a line per reason, most machines first, at most
    /// `REASON_LINES` lines), or one reason
    /// for the unit as a whole (invalid requirements, a `MachineOf` leader not placed, no
    /// machine at all).
    pub reasons: Vec<String>,
}

/// Works out the placement changes that bring `snapshot` to what its units ask for. See the
/// module documentation for the rules. The result does not depend on the order of the
/// snapshot's lists.
pub fn plan(snapshot: &EngineSnapshot) -> Plan {
    let mut planner = Planner::new(snapshot);
    planner.keep(snapshot);
    planner.place();
    planner.finish(snapshot)
}

/// [`plan`] of the cluster with the units of absent members **held** ([`hold`]), and the
/// [`Memo`] of the cluster once that plan's ops are applied, to plan the next bursts of
/// changes from without planning the whole cluster: what the planner holds at its end is the
/// cluster as those ops leave it. Only when a plan of that cluster would change nothing,
/// reasons included (a property test checks it, and that it builds the same memo): when the
/// plan changes no placement, or places every unit, or each unit it leaves unplaceable has
/// invalid rules or is a plain unit waiting for a machine (not for one to stop it) that gets
/// the same reasons from the memo once all are placed (their reasons are found while the
/// others are being placed: `Planner::reasons_settled`); and no unit held is placed on a
/// second machine (which the memo cannot tell).
///
/// This is the engine's whole plan: a member whose lease is gone may still run what was placed
/// on it, so that stays where it is, neither moved nor placed again, until the machine is
/// declared dead (or comes back).
pub fn plan_and_memo(snapshot: &EngineSnapshot) -> (Plan, Option<Memo>) {
    let (held_snapshot, held) = hold(snapshot);
    // A unit held is placed on one machine (etcd allows no other, see `apply_placements`),
    // which the memo counts on.
    let doubled = snapshot
        .placements
        .iter()
        .filter(|(_, p)| held.contains_key(&p.name))
        .count()
        != held.len();
    let snapshot = held_snapshot.as_ref().unwrap_or(snapshot);
    let mut planner = Planner::new(snapshot);
    planner.keep(snapshot);
    planner.place();
    let plan = planner.finish(snapshot);
    let settles = plan.ops.is_empty() || plan.unplaceable.is_empty();
    let memo = (!doubled)
        .then(|| {
            // Units it takes off live machines wait for them to stop them (a destroyed one,
            // say).
            let mut stopping = snapshot.stopping.clone();
            for op in &plan.ops {
                if let PlacementOp::Move { machine, name } = op {
                    stopping.insert((machine.clone(), name.clone()));
                }
            }
            planner.memo(&stopping, held)
        })
        .filter(|memo| settles || planner.reasons_settled(memo, &plan.unplaceable));
    (plan, memo)
}

/// The members whose lease is gone: registered and not declared dead, without a live
/// machine record.
pub fn absent(snapshot: &EngineSnapshot) -> BTreeSet<&fleet_registry::MachineId> {
    let live: HashSet<&fleet_registry::MachineId> =
        snapshot.machines.iter().map(|m| &m.machine.id).collect();
    snapshot
        .members
        .iter()
        .map(|e| &e.member.machine.id)
        .filter(|id| !live.contains(id))
        .collect()
}

/// A copy of `snapshot` without the units placed on absent members ([`absent`]) and those
/// placements, so that a plan neither moves nor removes them: such a machine may still run
/// them. Units there that no longer want to run stay in, so their placements are removed.
/// With the units held and where; `None` for the copy when none is.
pub fn hold(
    snapshot: &EngineSnapshot,
) -> (
    Option<EngineSnapshot>,
    HashMap<UnitName, fleet_registry::MachineId>,
) {
    let absent = absent(snapshot);
    if absent.is_empty() {
        return (None, HashMap::new());
    }
    // A unit that became global meanwhile is no placement's: it runs everywhere.
    let wanted: HashSet<&UnitName> = snapshot
        .units
        .iter()
        .filter(|u| u.desired_state != JobState::Inactive && !u.is_global())
        .map(|u| &u.name)
        .collect();
    let held: HashMap<UnitName, fleet_registry::MachineId> = snapshot
        .placements
        .iter()
        .filter(|(m, p)| absent.contains(m) && wanted.contains(&p.name))
        .map(|(m, p)| (p.name.clone(), m.clone()))
        .collect();
    if held.is_empty() {
        return (None, held);
    }
    let mut copy = snapshot.clone();
    copy.placements.retain(|(_, p)| !held.contains_key(&p.name));
    copy.units.retain(|u| !held.contains_key(&u.name));
    (Some(copy), held)
}

/// Index of a unit that should be placed (in `Planner::units`, name order).
type U = usize;
/// Index of a machine (in `Planner::hosts`, id order).
type M = usize;

/// Bound on the pushes (`Replaces`) in one pass, per unit to place: only a circular chain of
/// replacements, which fleet forbids, can need more.
const PUSHES_PER_UNIT: usize = 4;

struct Wanted<'a> {
    unit: &'a Unit,
    /// Parsed once; the error's text otherwise.
    req: Result<Requirements, String>,
    /// `Conflicts` and `Replaces` patterns, interned in `Globs`.
    conflicts: Vec<u32>,
    replaces: Vec<u32>,
    /// `MachineOf` names, with the wanted unit each names (if any).
    leaders: Vec<(String, Option<U>)>,
    /// Units whose `MachineOf` names this one.
    followers: Vec<U>,
    /// Position in dependency-then-name order.
    rank: usize,
}

impl Wanted<'_> {
    fn name(&self) -> &str {
        self.unit.name.as_str()
    }

    /// Whether other units must be checked against this one's patterns.
    fn patterned(&self) -> bool {
        self.req
            .as_ref()
            .is_ok_and(|r| !r.conflicts.is_empty() || !r.replaces.is_empty())
    }
}

struct GlobalUnit<'a> {
    name: &'a UnitName,
    req: Requirements,
    conflicts: Vec<u32>,
}

/// The `Conflicts` and `Replaces` patterns, interned, with their results against unit names
/// remembered: one plan tests the same pairs many times. Names are numbered as units are
/// (`U`), then global units after them.
#[derive(Default)]
struct Globs {
    patterns: Vec<String>,
    ids: HashMap<String, u32>,
    memo: RefCell<HashMap<(u32, u32), bool>>,
}

impl Globs {
    fn intern(&mut self, patterns: &[String]) -> Vec<u32> {
        patterns
            .iter()
            .map(|p| match self.ids.get(p) {
                Some(&id) => id,
                None => {
                    let id = self.patterns.len() as u32;
                    self.patterns.push(p.clone());
                    self.ids.insert(p.clone(), id);
                    id
                }
            })
            .collect()
    }

    /// Whether one of `patterns` matches the unit numbered `name_id`, called `name`.
    fn any_matches(&self, patterns: &[u32], name_id: usize, name: &str) -> bool {
        patterns.iter().any(|&p| {
            *self
                .memo
                .borrow_mut()
                .entry((p, name_id as u32))
                .or_insert_with(|| glob_match(&self.patterns[p as usize], name))
        })
    }
}

struct Host<'a> {
    entry: &'a MachineEntry,
    /// Being drained: nothing new goes here, and what is here moves away.
    draining: bool,
    /// Units taken off this machine that it has not yet stopped.
    stopping: usize,
    /// Global units that run here (`Planner::globals` indices).
    globals: Vec<usize>,
    /// Those of `globals` with `Conflicts` patterns.
    conflicting_globals: Vec<usize>,
    /// Non-global units placed here, in name (index) order.
    units: Vec<U>,
    /// Those of `units` with `Conflicts` or `Replaces` patterns.
    patterned: Vec<U>,
}

impl Host<'_> {
    fn load(&self) -> usize {
        self.units.len() + self.globals.len()
    }

    fn short(&self) -> &str {
        self.entry.machine.id.short()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Checking existing placements: `MachineOf` leaders count where they are placed now.
    Keep,
    /// Placing: `MachineOf` leaders count where this pass has put them.
    Place,
}

struct Planner<'a> {
    units: Vec<Wanted<'a>>,
    globs: Globs,
    by_name: HashMap<&'a str, U>,
    globals: Vec<GlobalUnit<'a>>,
    hosts: Vec<Host<'a>>,
    /// Lower-cased full and short machine ids to machines, for `MachineID`.
    host_ids: HashMap<String, Vec<M>>,
    /// The existing placement considered for each unit (the first by machine id that meets the
    /// unit's own rules on a live machine).
    candidate: Vec<Option<M>>,
    /// Where each unit is in this pass.
    at: Vec<Option<M>>,
    /// Machines by (load, index): index order is id order.
    by_load: BTreeSet<(usize, M)>,
    /// Placement decisions in the order they were taken; only each unit's last one stands.
    decisions: Vec<(U, M)>,
    last_decision: Vec<Option<usize>>,
    /// Why each unit's last decision chose its machine.
    why: Vec<Option<String>>,
    /// Units waiting to be placed, by (rank, index).
    queue: BTreeSet<(usize, U)>,
    unplaceable: Vec<Option<Vec<String>>>,
    pushes_left: usize,
    pushed: bool,
    /// The live machine each unit has an existing placement on, if any (the first by id).
    placed_on: Vec<Option<M>>,
    /// Why a unit may not be placed in this pass: a machine is stopping it.
    waits: Vec<Option<String>>,
    /// Instances of each template that are stopping (for `MaxUnavailable`).
    down: HashMap<UnitName, usize>,
    /// The members: machines registered and not declared dead, live or not.
    members: HashSet<fleet_registry::MachineId>,
}

impl<'a> Planner<'a> {
    fn new(snapshot: &'a EngineSnapshot) -> Planner<'a> {
        let mut all: Vec<&Unit> = snapshot
            .units
            .iter()
            .filter(|u| u.desired_state != JobState::Inactive)
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.dedup_by(|a, b| a.name == b.name);

        let mut globs = Globs::default();
        let mut globals = Vec::new();
        let mut units = Vec::new();
        for unit in all {
            // The same test as the registry's and the agent's, so that the engine never places a
            // unit that they run everywhere.
            if unit.is_global() {
                // A global unit with invalid requirements runs nowhere as far as placement goes.
                if let Ok((req, _)) = Requirements::from_unit(&unit.name, &unit.file()) {
                    globals.push(GlobalUnit {
                        name: &unit.name,
                        conflicts: globs.intern(&req.conflicts),
                        req,
                    });
                }
                continue;
            }
            let req = Requirements::from_unit(&unit.name, &unit.file())
                .map(|(req, _)| req)
                .map_err(|e| e.to_string());
            let (conflicts, replaces) = match &req {
                Ok(req) => (globs.intern(&req.conflicts), globs.intern(&req.replaces)),
                Err(_) => (Vec::new(), Vec::new()),
            };
            units.push(Wanted {
                unit,
                req,
                conflicts,
                replaces,
                leaders: Vec::new(),
                followers: Vec::new(),
                rank: 0,
            });
        }
        let by_name: HashMap<&str, U> = units
            .iter()
            .enumerate()
            .map(|(i, w)| (w.unit.name.as_str(), i))
            .collect();
        for u in 0..units.len() {
            let names = match &units[u].req {
                Ok(req) => req.machine_of.clone(),
                Err(_) => Vec::new(),
            };
            let mut leaders: Vec<(String, Option<U>)> = Vec::new();
            for name in names {
                if leaders.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                let leader = by_name.get(name.as_str()).copied().filter(|&l| l != u);
                if let Some(l) = leader {
                    units[l].followers.push(u);
                }
                leaders.push((name, leader));
            }
            units[u].leaders = leaders;
        }
        for u in 0..units.len() {
            if let Some(e) = replaced_leader(&units, &globs, u) {
                units[u].req = Err(e);
            }
        }
        rank_by_dependencies(&mut units);

        let mut machines: Vec<&MachineEntry> = snapshot.machines.iter().collect();
        machines.sort_by(|a, b| a.machine.id.cmp(&b.machine.id));
        machines.dedup_by(|a, b| a.machine.id == b.machine.id);
        let mut host_ids: HashMap<String, Vec<M>> = HashMap::new();
        let hosts: Vec<Host> = machines
            .into_iter()
            .enumerate()
            .map(|(m, entry)| {
                for key in host_id_keys(&entry.machine.id) {
                    host_ids.entry(key).or_default().push(m);
                }
                let running: Vec<usize> = globals
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.req.metadata_matches(&entry.machine.metadata))
                    .map(|(i, _)| i)
                    .collect();
                Host {
                    entry,
                    draining: false,
                    stopping: 0,
                    conflicting_globals: running
                        .iter()
                        .copied()
                        .filter(|&g| !globals[g].conflicts.is_empty())
                        .collect(),
                    globals: running,
                    units: Vec::new(),
                    patterned: Vec::new(),
                }
            })
            .collect();
        let by_load = hosts
            .iter()
            .enumerate()
            .map(|(m, h)| (h.load(), m))
            .collect();
        let n = units.len();
        let mut hosts = hosts;
        for id in &snapshot.draining {
            if let Ok(m) = hosts.binary_search_by(|h| h.entry.machine.id.cmp(id)) {
                hosts[m].draining = true;
            }
        }
        // What machines are stopping: only members' records count (a machine declared dead
        // runs nothing), whether their lease is live or not.
        let members: HashSet<fleet_registry::MachineId> = snapshot
            .members
            .iter()
            .map(|e| e.member.machine.id.clone())
            .collect();
        let mut waits: Vec<Option<String>> = vec![None; n];
        let mut down: HashMap<UnitName, usize> = HashMap::new();
        for (machine, name) in &snapshot.stopping {
            if !members.contains(machine) {
                continue;
            }
            if let Ok(m) = hosts.binary_search_by(|h| h.entry.machine.id.cmp(machine)) {
                hosts[m].stopping += 1;
            }
            if let Some(template) = name.template() {
                *down.entry(template).or_default() += 1;
            }
            if let Some(&u) = by_name.get(name.as_str()) {
                waits[u] = Some(stopping_reason(machine.short()));
            }
        }
        // And what rolling updates have taken down: one bound for drains and updates alike.
        for stored in snapshot.updates.values() {
            if stored.update.state.is_final() {
                continue;
            }
            for unit in stored
                .update
                .units
                .iter()
                .filter(|u| crate::update::is_down(u))
            {
                if let Some(template) = unit.name.template() {
                    *down.entry(template).or_default() += 1;
                }
            }
        }
        Planner {
            globs,
            by_name,
            globals,
            hosts,
            host_ids,
            candidate: vec![None; n],
            at: vec![None; n],
            by_load,
            decisions: Vec::new(),
            last_decision: vec![None; n],
            why: vec![None; n],
            queue: BTreeSet::new(),
            unplaceable: vec![None; n],
            pushes_left: PUSHES_PER_UNIT * n + 16,
            pushed: false,
            placed_on: vec![None; n],
            waits,
            down,
            members,
            units,
        }
    }

    fn req(&self, u: U) -> &Requirements {
        self.units[u]
            .req
            .as_ref()
            .expect("only units with valid requirements are placed or checked")
    }

    fn host_of(&self, id: &fleet_registry::MachineId) -> Option<M> {
        self.hosts
            .binary_search_by(|h| h.entry.machine.id.cmp(id))
            .ok()
    }

    /// `a` replaces `b` and not the other way round (fleet ignores circular replacements).
    fn replaces_one_way(&self, a: U, b: U) -> bool {
        let (wa, wb) = (&self.units[a], &self.units[b]);
        self.globs.any_matches(&wa.replaces, b, wb.name())
            && !self.globs.any_matches(&wb.replaces, a, wa.name())
    }

    /// Whether a `Conflicts` pattern of unit `a` matches unit `b`.
    fn conflicts(&self, a: U, b: U) -> bool {
        self.globs
            .any_matches(&self.units[a].conflicts, b, self.units[b].name())
    }

    /// Why `u` may not be on machine `m` given everything else on `m`, if it may not.
    fn check(&self, u: U, m: M, phase: Phase) -> Result<(), String> {
        let w = &self.units[u];
        let req = self.req(u);
        let host = &self.hosts[m];
        let machine = &host.entry.machine;
        if phase == Phase::Place && host.draining {
            return Err("machine is draining".to_string());
        }
        if let Some(id) = &req.machine_id {
            if !req.machine_id_matches(machine.id.as_str()) {
                return Err(format!("unit must run on machine {id}"));
            }
        }
        if let Some((key, values)) = req.unmatched_metadata(&machine.metadata) {
            return Err(format!("metadata {key}={} not matched", values.join("|")));
        }
        for (name, leader) in &w.leaders {
            let there = leader.is_some_and(|l| match phase {
                Phase::Keep => self.candidate[l] == Some(m),
                Phase::Place => self.at[l] == Some(m),
            });
            if !there {
                return Err(format!("not the machine of {name} (MachineOf)"));
            }
        }
        if !w.conflicts.is_empty() {
            for &g in &host.globals {
                let global = &self.globals[g];
                if self
                    .globs
                    .any_matches(&w.conflicts, self.units.len() + g, global.name.as_str())
                {
                    return Err(format!(
                        "conflicts with global unit {}",
                        self.globals[g].name
                    ));
                }
            }
            for &x in &host.units {
                if x != u && self.conflicts(u, x) {
                    return Err(format!("conflicts with {}", self.units[x].name()));
                }
            }
        }
        for &g in &host.conflicting_globals {
            if self
                .globs
                .any_matches(&self.globals[g].conflicts, u, w.name())
            {
                return Err(format!(
                    "conflicts with global unit {}",
                    self.globals[g].name
                ));
            }
        }
        for &x in &host.patterned {
            if x == u {
                continue;
            }
            if self.conflicts(x, u) {
                return Err(format!("conflicts with {}", self.units[x].name()));
            }
            if self.replaces_one_way(x, u) {
                return Err(format!("replaced by {} (Replaces)", self.units[x].name()));
            }
        }
        if phase == Phase::Place && !w.replaces.is_empty() && self.pushes_left == 0 {
            for &x in &host.units {
                if x != u && self.replaces_one_way(u, x) {
                    return Err(format!(
                        "cannot push {} away: too many replacements in one pass",
                        self.units[x].name()
                    ));
                }
            }
        }
        Ok(())
    }

    fn assign(&mut self, u: U, m: M) {
        debug_assert!(self.at[u].is_none());
        let host = &mut self.hosts[m];
        self.by_load.remove(&(host.load(), m));
        // Kept in name order, so that a reason names the first culprit by name.
        let i = host.units.partition_point(|&x| x < u);
        host.units.insert(i, u);
        if self.units[u].patterned() {
            let i = host.patterned.partition_point(|&x| x < u);
            host.patterned.insert(i, u);
        }
        self.by_load.insert((host.load(), m));
        self.at[u] = Some(m);
    }

    fn unassign(&mut self, u: U) {
        let Some(m) = self.at[u].take() else {
            return;
        };
        let host = &mut self.hosts[m];
        self.by_load.remove(&(host.load(), m));
        host.units.retain(|&x| x != u);
        host.patterned.retain(|&x| x != u);
        self.by_load.insert((host.load(), m));
    }

    /// Step 1: keeps the existing placements that still hold.
    fn keep(&mut self, snapshot: &EngineSnapshot) {
        // The candidate placement of each unit: the first, by machine id, on a live machine
        // where the unit's own rules hold (leaders and neighbours are checked below).
        let mut existing: Vec<(U, M, bool)> = Vec::new();
        for (machine, placement) in &snapshot.placements {
            let (Some(&u), Some(m)) = (
                self.by_name.get(placement.name.as_str()),
                self.host_of(machine),
            ) else {
                continue;
            };
            if self.units[u].req.is_err() {
                continue;
            }
            let changed = placement.options != self.units[u].unit.options;
            existing.push((u, m, changed));
        }
        existing.sort();
        existing.dedup_by_key(|(u, m, _)| (*u, *m));
        for &(u, m, _) in &existing {
            self.placed_on[u].get_or_insert(m);
        }
        let mut changed = vec![false; self.units.len()];
        for &(u, m, content_changed) in &existing {
            if self.candidate[u].is_some() {
                continue;
            }
            let req = self.req(u);
            let machine = &self.hosts[m].entry.machine;
            if req.machine_id_matches(machine.id.as_str())
                && req.metadata_matches(&machine.metadata)
            {
                self.candidate[u] = Some(m);
                changed[u] = content_changed;
            }
        }

        // Unchanged placements first, then dependency and name order: a unit kept earlier wins
        // over a later one it conflicts with.
        let mut order: Vec<U> = (0..self.units.len())
            .filter(|&u| self.candidate[u].is_some())
            .collect();
        order.sort_by_key(|&u| (changed[u], self.units[u].rank, u));
        for u in order {
            let m = self.candidate[u].expect("filtered");
            if self.check(u, m, Phase::Keep).is_err() {
                continue;
            }
            self.assign(u, m);
            // A unit kept next to units it replaces pushes them away.
            if !self.req(u).replaces.is_empty() {
                let pushed: Vec<U> = self.hosts[m]
                    .units
                    .iter()
                    .copied()
                    .filter(|&x| x != u && self.replaces_one_way(u, x))
                    .collect();
                for x in pushed {
                    self.unassign(x);
                }
            }
        }

        self.drain();

        // Followers stay only with all their leaders.
        loop {
            let mut changed = false;
            for u in 0..self.units.len() {
                let Some(m) = self.at[u] else { continue };
                let with_leaders = self.units[u]
                    .leaders
                    .iter()
                    .all(|(_, l)| l.is_some_and(|l| self.at[l] == Some(m)));
                if !with_leaders {
                    self.unassign(u);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Takes the next unit (with its followers, by the loop after this) off each draining
    /// machine that is not stopping one already, as `MaxUnavailable` allows.
    fn drain(&mut self) {
        for m in 0..self.hosts.len() {
            if !self.hosts[m].draining || self.hosts[m].stopping > 0 {
                continue;
            }
            let next = self.hosts[m]
                .units
                .iter()
                .copied()
                // A follower goes with its leader.
                .filter(|&u| {
                    self.units[u]
                        .leaders
                        .iter()
                        .all(|(_, l)| l.is_none_or(|l| self.at[l] != Some(m)))
                })
                .filter(|&u| self.may_go_down(&self.group_on(u, m)))
                .min_by_key(|&u| (self.units[u].rank, u));
            if let Some(u) = next {
                for x in self.group_on(u, m) {
                    self.went_down(x);
                }
                self.unassign(u);
            }
        }
    }

    /// `u` and the units on `m` that follow it there (transitively): what leaves with it.
    fn group_on(&self, u: U, m: M) -> Vec<U> {
        let mut group = vec![u];
        let mut i = 0;
        while i < group.len() {
            for &f in &self.units[group[i]].followers {
                if self.at[f] == Some(m) && !group.contains(&f) {
                    group.push(f);
                }
            }
            i += 1;
        }
        group
    }

    /// Whether all of `group` may stop at once, by their templates' `MaxUnavailable`.
    fn may_go_down(&self, group: &[U]) -> bool {
        let mut more: HashMap<UnitName, usize> = HashMap::new();
        group.iter().all(|&u| {
            let limit = self.req(u).max_unavailable;
            match (limit, self.units[u].unit.name.template()) {
                (Some(limit), Some(template)) => {
                    let down = self.down.get(&template).copied().unwrap_or_default();
                    let extra = more.entry(template).or_default();
                    *extra += 1;
                    down + *extra <= limit as usize
                }
                _ => true,
            }
        })
    }

    fn went_down(&mut self, u: U) {
        if let Some(template) = self.units[u].unit.name.template() {
            *self.down.entry(template).or_default() += 1;
        }
    }

    /// Step 2: places every unit not kept, except those that must stop first.
    fn place(&mut self) {
        for u in 0..self.units.len() {
            if let Err(e) = &self.units[u].req {
                self.unplaceable[u] = Some(vec![e.clone()]);
            } else if self.at[u].is_none() {
                // Taken off a live machine in this pass: it stops there first.
                if let (None, Some(m)) = (&self.waits[u], self.placed_on[u]) {
                    self.waits[u] = Some(stopping_reason(self.hosts[m].short()));
                }
                match &self.waits[u] {
                    Some(reason) => self.unplaceable[u] = Some(vec![reason.clone()]),
                    None => {
                        self.queue.insert((self.units[u].rank, u));
                    }
                }
            }
        }
        loop {
            self.pushed = false;
            while let Some((_, u)) = self.queue.pop_first() {
                match self.decide(u) {
                    Ok((m, why)) => {
                        self.unplaceable[u] = None;
                        self.why[u] = Some(why);
                        self.put(u, m);
                    }
                    Err(reasons) => self.unplaceable[u] = Some(reasons),
                }
            }
            // Units pushed away may have made room for units found unplaceable before.
            if !self.pushed {
                break;
            }
            for u in 0..self.units.len() {
                if self.unplaceable[u].is_some()
                    && self.units[u].req.is_ok()
                    && self.waits[u].is_none()
                {
                    self.queue.insert((self.units[u].rank, u));
                }
            }
        }
    }

    /// The machine for `u` and why that one, or why there is none.
    fn decide(&self, u: U) -> Result<(M, String), Vec<String>> {
        if self.hosts.is_empty() {
            return Err(vec!["no machine is registered".to_string()]);
        }
        let w = &self.units[u];
        let mut leader_machine: Option<(M, &str)> = None;
        for (name, leader) in &w.leaders {
            let Some(m) = leader.and_then(|l| self.at[l]) else {
                return Err(vec![format!("waiting for {name} (MachineOf) to be placed")]);
            };
            match leader_machine {
                Some((other, other_name)) if other != m => {
                    return Err(vec![format!(
                        "MachineOf units {other_name} and {name} are on different machines ({} and {})",
                        self.hosts[other].short(),
                        self.hosts[m].short()
                    )]);
                }
                _ => leader_machine = Some((m, name)),
            }
        }
        let req = self.req(u);
        let found = if let Some((m, leader)) = leader_machine {
            Some(m)
                .filter(|&m| self.check(u, m, Phase::Place).is_ok())
                .map(|m| (m, format!("MachineOf={leader}")))
        } else if let Some(id) = &req.machine_id {
            let mut targets: Vec<M> = self
                .host_ids
                .get(&id.trim().to_ascii_lowercase())
                .cloned()
                .unwrap_or_default();
            targets.sort_by_key(|&m| (self.hosts[m].load(), m));
            targets
                .into_iter()
                .find(|&m| self.check(u, m, Phase::Place).is_ok())
                .map(|m| (m, format!("MachineID={id}")))
        } else {
            // Less loaded machines its rules (or its neighbours') ruled out, for the reason.
            let mut ruled_out = 0;
            self.by_load
                .iter()
                .find(|&&(_, m)| {
                    let fits = self.check(u, m, Phase::Place).is_ok();
                    ruled_out += usize::from(!fits);
                    fits
                })
                .map(|&(load, m)| (m, least_loaded(load, ruled_out, self.hosts.len())))
        };
        found.ok_or_else(|| {
            refused_by((0..self.hosts.len()).filter_map(|m| {
                self.check(u, m, Phase::Place)
                    .err()
                    .map(|reason| (self.hosts[m].short(), reason))
            }))
        })
    }

    /// Places `u` on `m`, pushing away the units there that it replaces.
    fn put(&mut self, u: U, m: M) {
        self.assign(u, m);
        self.last_decision[u] = Some(self.decisions.len());
        self.decisions.push((u, m));
        if self.req(u).replaces.is_empty() {
            return;
        }
        let pushed: Vec<U> = self.hosts[m]
            .units
            .iter()
            .copied()
            .filter(|&x| x != u && self.replaces_one_way(u, x))
            .collect();
        if !pushed.is_empty() {
            let names: Vec<&str> = pushed.iter().map(|&x| self.units[x].name()).collect();
            let replaced = format!("; replaces {} there", names.join(", "));
            if let Some(why) = &mut self.why[u] {
                why.push_str(&replaced);
            }
        }
        for x in pushed {
            self.pushes_left = self.pushes_left.saturating_sub(1);
            self.pushed = true;
            self.evict(x);
        }
    }

    /// Takes `u` and its followers (transitively) off their machine and queues them again; a
    /// unit placed on a live machine before this pass stops there first (a unit placed twice
    /// then stops on both).
    fn evict(&mut self, u: U) {
        let Some(m) = self.at[u] else { return };
        self.unassign(u);
        if let Some(before) = self.placed_on[u] {
            let reason = stopping_reason(self.hosts[before].short());
            self.unplaceable[u] = Some(vec![reason.clone()]);
            self.waits[u] = Some(reason);
        } else {
            self.queue.insert((self.units[u].rank, u));
        }
        for f in self.units[u].followers.clone() {
            if self.at[f] == Some(m) {
                self.evict(f);
            }
        }
    }

    /// Step 3: the placement changes and the units left without a machine.
    fn finish(&self, snapshot: &EngineSnapshot) -> Plan {
        let mut ops = Vec::new();
        let mut existing: Vec<(&str, &fleet_registry::MachineId, &Placement)> = snapshot
            .placements
            .iter()
            .map(|(m, p)| (p.name.as_str(), m, p))
            .collect();
        existing.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        // One key per unit and machine in etcd: a repeated pair is the same placement.
        existing.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
        let mut stays: HashSet<(U, M)> = HashSet::new();
        for (name, machine, placement) in existing {
            let u = self.by_name.get(name).copied();
            let m = self.host_of(machine);
            match (u, m) {
                (Some(u), Some(m)) if self.at[u] == Some(m) && stays.insert((u, m)) => {
                    let target = Placement::for_unit(self.units[u].unit);
                    if *placement != target {
                        ops.push(PlacementOp::Put {
                            machine: machine.clone(),
                            placement: target,
                        });
                    }
                }
                // A unit leaves a member machine (live or not: an absent one may still run it)
                // only once stopped there, whether it is to run elsewhere or was destroyed or
                // unloaded: it could be started again at once.
                _ if self.members.contains(machine) => ops.push(PlacementOp::Move {
                    machine: machine.clone(),
                    name: placement.name.clone(),
                }),
                _ => ops.push(PlacementOp::Delete {
                    machine: machine.clone(),
                    name: placement.name.clone(),
                }),
            }
        }
        // Keep deletes ahead of every put that places a unit somewhere new.
        let mut placed = BTreeMap::new();
        for (i, &(u, m)) in self.decisions.iter().enumerate() {
            if self.last_decision[u] != Some(i) || self.at[u] != Some(m) || stays.contains(&(u, m))
            {
                continue;
            }
            if let Some(why) = &self.why[u] {
                placed.insert(self.units[u].unit.name.clone(), why.clone());
            }
            ops.push(PlacementOp::Put {
                machine: self.hosts[m].entry.machine.id.clone(),
                placement: Placement::for_unit(self.units[u].unit),
            });
        }
        let unplaceable = self
            .unplaceable
            .iter()
            .enumerate()
            .filter_map(|(u, reasons)| {
                reasons.as_ref().map(|reasons| Unplaceable {
                    unit: self.units[u].unit.name.clone(),
                    reasons: reasons.clone(),
                })
            })
            .collect();
        Plan {
            ops,
            unplaceable,
            placed,
        }
    }
}

/// The keys `MachineID=` finds a machine by: its full id and its short one (8 digits),
/// lower-cased.
fn host_id_keys(id: &fleet_registry::MachineId) -> [String; 2] {
    let full = id.as_str().to_ascii_lowercase();
    [full[..8].to_string(), full]
}

/// Why the least loaded machine: its load, and how many less loaded ones (or as loaded, with
/// a smaller id) could not take the unit.
fn least_loaded(load: usize, ruled_out: usize, machines: usize) -> String {
    match ruled_out {
        0 if machines == 1 => format!("the only machine (load {load})"),
        0 => format!("least loaded of {machines} machines (load {load})"),
        _ => format!(
            "least loaded of the machines that pass its rules (load {load}; {ruled_out} of \
             {machines} less loaded did not)"
        ),
    }
}

/// The most lines of reasons a unit no machine takes is given. Up to this many machines refusing
/// it, a line each (`f1ee7001: metadata role=db not matched`); past that, a line per reason,
/// naming a few of its machines, most machines first, and past this many reasons one line
/// counting the machines of the rest. So the `unplaceable/` record, the API's unit and the
/// `unplaceable` event stay small however many machines there are: at 10,000 machines, a line
/// each came to 400 KB for every such unit.
const REASON_LINES: usize = 16;

/// How many machines a line of reasons names when it stands for many.
const MACHINES_NAMED: usize = 3;

/// Why no machine takes a unit, from each refusing machine's short id and reason, in machine
/// order: the whole plan's words (the memo words its refusals alike, `memo::worded`), bounded
/// by [`REASON_LINES`]. Reasons are told apart as values, and worded only for the lines
/// written.
fn refused_by<S, R>(refusals: impl IntoIterator<Item = (S, R)>) -> Vec<String>
where
    S: std::fmt::Display,
    R: std::fmt::Display + Eq + std::hash::Hash,
{
    struct Group<S> {
        first: usize,
        machines: usize,
        named: Vec<S>,
    }
    let mut each = Vec::new();
    let mut groups: HashMap<R, Group<S>> = HashMap::new();
    let mut machines = 0;
    for (machine, reason) in refusals {
        if machines < REASON_LINES {
            each.push(format!("{machine}: {reason}"));
        }
        let group = groups.entry(reason).or_insert_with(|| Group {
            first: machines,
            machines: 0,
            named: Vec::new(),
        });
        group.machines += 1;
        if group.named.len() < MACHINES_NAMED {
            group.named.push(machine);
        }
        machines += 1;
    }
    if machines <= REASON_LINES {
        return each;
    }
    // Most machines first; reasons as many machines give in the order of their first machine.
    let mut groups: Vec<(R, Group<S>)> = groups.into_iter().collect();
    groups.sort_by_key(|(_, g)| (std::cmp::Reverse(g.machines), g.first));
    lines_by_reason(groups.iter().map(|(reason, g)| Given {
        reason,
        machines: g.machines,
        named: &g.named,
    }))
}

/// A reason some of the machines that refuse a unit give: how many, and the first
/// [`MACHINES_NAMED`] of them (short ids), in machine order.
struct Given<'a, S, R> {
    reason: &'a R,
    machines: usize,
    named: &'a [S],
}

/// The lines of reasons of a unit more than [`REASON_LINES`] machines refuse, from the reasons
/// they give, in the order given (most machines first, then by their first machine): a line
/// per reason, naming a few of its machines, and past [`REASON_LINES`] reasons one line
/// counting the machines of the rest.
fn lines_by_reason<'a, S, R>(given: impl ExactSizeIterator<Item = Given<'a, S, R>>) -> Vec<String>
where
    S: std::fmt::Display + 'a,
    R: std::fmt::Display + 'a,
{
    let shown = if given.len() > REASON_LINES {
        REASON_LINES - 1
    } else {
        given.len()
    };
    let mut lines = Vec::with_capacity(shown + 1);
    let (mut rest, mut rest_machines) = (0, 0);
    for (i, g) in given.enumerate() {
        if i >= shown {
            rest += 1;
            rest_machines += g.machines;
            continue;
        }
        let named = g
            .named
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        lines.push(match g.machines - g.named.len() {
            0 => format!("{named}: {}", g.reason),
            more => format!("{named} and {more} more: {}", g.reason),
        });
    }
    if rest > 0 {
        lines.push(format!(
            "{rest_machines} more machines: {rest} other reasons"
        ));
    }
    lines
}

/// Why a unit waits: the machine called `short` is stopping it before it moves.
fn stopping_reason(short: &str) -> String {
    format!("stopping on {short} before it moves")
}

/// Why unit `u`'s rules cannot hold together with its leaders': one of the units it must be
/// with through `MachineOf` (transitively) is one its `Replaces` pushes away. The units' own
/// check ([`Requirements`]) refuses this with the leader named directly; through another unit
/// only the plan sees it. Without this, the two would push each other off machine after
/// machine.
fn replaced_leader(units: &[Wanted], globs: &Globs, u: U) -> Option<String> {
    if units[u].replaces.is_empty() {
        return None;
    }
    let mut chain = vec![u];
    let mut i = 0;
    while i < chain.len() {
        for &(_, leader) in &units[chain[i]].leaders {
            let Some(l) = leader.filter(|l| !chain.contains(l)) else {
                continue;
            };
            if globs.any_matches(&units[u].replaces, l, units[l].name()) {
                return Some(format!(
                    "unresolvable requirements: it must be with {} (MachineOf, through {}), \
                     which its Replaces pushes away",
                    units[l].name(),
                    units[chain[i]].name()
                ));
            }
            chain.push(l);
        }
        i += 1;
    }
    None
}

/// Ranks units so that every `MachineOf` leader comes before its followers, otherwise by name;
/// units caught in a `MachineOf` cycle come last, by name.
fn rank_by_dependencies(units: &mut [Wanted]) {
    let mut waiting: Vec<usize> = units
        .iter()
        .map(|w| w.leaders.iter().filter(|(_, l)| l.is_some()).count())
        .collect();
    let mut ready: BTreeSet<U> = (0..units.len()).filter(|&u| waiting[u] == 0).collect();
    let mut ranked = vec![false; units.len()];
    let mut rank = 0;
    while let Some(u) = ready.pop_first() {
        units[u].rank = rank;
        ranked[u] = true;
        rank += 1;
        for i in 0..units[u].followers.len() {
            let f = units[u].followers[i];
            waiting[f] -= 1;
            if waiting[f] == 0 {
                ready.insert(f);
            }
        }
    }
    for (u, w) in units.iter_mut().enumerate() {
        if !ranked[u] {
            w.rank = rank;
            rank += 1;
        }
    }
}

/// The writes that make the recorded reasons (`current`) say what `now` says: set the new or
/// changed ones, clear those of units that are placed or gone.
pub fn unplaceable_ops(
    current: &std::collections::BTreeMap<UnitName, Vec<String>>,
    now: &[Unplaceable],
) -> Vec<PlacementOp> {
    let mut ops: Vec<PlacementOp> = now
        .iter()
        .filter(|u| current.get(&u.unit) != Some(&u.reasons))
        .map(|u| PlacementOp::SetUnplaceable {
            name: u.unit.clone(),
            reasons: u.reasons.clone(),
        })
        .collect();
    let still: BTreeSet<&UnitName> = now.iter().map(|u| &u.unit).collect();
    ops.extend(
        current
            .keys()
            .filter(|name| !still.contains(name))
            .map(|name| PlacementOp::ClearUnplaceable { name: name.clone() }),
    );
    ops
}

mod memo;
pub use memo::{Cluster, Memo};

#[cfg(test)]
mod tests;
