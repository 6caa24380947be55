//! Planning one burst of changes without planning the whole cluster again.
//!
//! A [`Memo`] is what a full [`plan`](super::plan) knew at its end, of the cluster as its ops
//! leave it (when it changed no placement, or placed every unit, or the units it left
//! unplaceable have invalid rules or wait for a machine with the reasons the memo finds for
//! them: see [`plan_and_memo`](super::plan_and_memo)): each live machine's load, where each unit is
//! (units held on absent members included), which units and names take part in a `MachineOf`
//! or `Replaces` (and which are global), each unit's `Conflicts` and `MachineOf`, and which
//! units wait (those it moved away among them, until their machines have stopped them).
//!
//! From it, [`Memo::plan`] decides a burst of changes to **plain** units (no `Replaces` nor
//! `Global`, named by no other unit's `Replaces`, and named by another's `MachineOf`, as its
//! leader, only if it stays where it is, following the units it followed) in time that depends
//! on the burst, not on the cluster (but on the machines passed over, for a unit that conflicts
//! with what runs on them or whose metadata they fail): such a unit affects the others only
//! through the load of the one machine it is on, and through the `Conflicts` (its own and
//! theirs) checked against what runs on each machine, as the full plan checks them. A plain
//! unit with a `MachineOf` (a follower) goes to the machine of its leaders when they are placed
//! there and follow nobody themselves, and is placed in the order the full plan places the
//! burst's units (`rank_key`); a follower of a leader of the same burst, if that leader is
//! named by no unit before it. A global unit written, rewritten or destroyed while no unit
//! waits changes the load of the machines its metadata matches (in time that grows with the
//! machines: it runs on each), unless it conflicts with a unit there. So do machines coming and
//! going (but one stopping a unit: its stopping records count only while it is a member), since
//! nothing then moves but their own plain units (and units that wait, below; those that wait
//! for another machine to stop them wait whatever this one does): a machine that joins only
//! becomes the least loaded; a member whose lease is gone has its units held where they are
//! ([`hold`](super::hold)), and placed again elsewhere once it is declared dead (or back on it
//! when it registers again, those whose placement is still there); a machine that leaves
//! without being a member has its units placed elsewhere at once; a machine registering again,
//! or writing its record again, unchanged, changes nothing; and one with new metadata that its
//! units still match changes the load of the global units that start or stop running there
//! (unless one that starts conflicts with its units). A plain unit whose machines have all
//! released it (stopped it) is placed as a new one if it still wants to run, unless a draining
//! machine still has units.
//!
//! A plain unit no machine takes waits, with the reasons the full plan gives (by machine,
//! or one for the unit: its leader not placed, no machine at all). The units that wait for a
//! machine (not for one to stop them) are decided again with the burst's, in the full plan's
//! order: all of them when a machine comes, goes or changes; those a unit of the burst
//! conflicts with, either way, and those that conflict with them, otherwise (unless one is a
//! `MachineOf` leader). That takes time that grows with them and the machines, as their
//! reasons do; but when machines only join, the other machines refuse each as they did, and
//! the memo keeps why (the refusals of its last decision, as far as its reasons say them:
//! [`Refusals`]), so a join adds its own refusal, in time that grows with the units that wait
//! and not with the machines (unless it takes one: that one is decided from every machine).
//! The full plan finds a unit's reasons when it decides it, among the others; the memo
//! answers only when they are also those it finds once all are placed, so that the cluster
//! it leaves is settled.
//!
//! The result is the one the full plan would reach on the same cluster, op for op, reasons
//! written and cleared included (a property test compares them on random clusters); anything
//! it cannot decide that way (a unit with a rule it does not decide, a draining machine, a
//! unit still being stopped by a machine, a machine coming, going or changing its metadata
//! while it is stopping a unit, a global unit changed while a unit waits, a release while a
//! draining machine has units, a machine with new metadata a unit there no longer matches, a
//! unit that waits whose reasons differ once the burst is placed) makes it answer `None`, and
//! the caller plans the whole cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use fleet_registry::{JobState, MachineEntry, MachineId, Placement, PlacementOp, Unit};
use fleet_units::{glob_match, Requirements, UnitName};

use super::{
    host_id_keys, least_loaded, lines_by_reason, Given, Plan, Planner, Unplaceable, MACHINES_NAMED,
    REASON_LINES,
};

/// What the last full plan knew, kept up to date by the bursts planned from it. See the module
/// documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memo {
    /// Live machines by id.
    hosts: BTreeMap<MachineId, Host>,
    /// Live machines by (load, id): the order the least loaded one is looked for in.
    by_load: BTreeSet<(usize, MachineId)>,
    /// Lower-cased full and short machine ids to machines, for `MachineID`.
    host_ids: HashMap<String, Vec<MachineId>>,
    /// Where each non-global unit that should run is, on a live machine.
    placed: HashMap<UnitName, MachineId>,
    /// Units held on members whose lease is gone, and where.
    held: HashMap<UnitName, MachineId>,
    /// The units of `placed` and `held` on each machine.
    on: HashMap<MachineId, BTreeSet<UnitName>>,
    /// Units that should run and have a `Replaces`, or whose rules are invalid, and global
    /// units: a change to one of them needs the whole plan (but a global unit's own, see
    /// `global_changed`).
    ruled: HashSet<UnitName>,
    /// The names `MachineOf` names (of the units that should run, not held), and by how many
    /// units.
    leaders: HashMap<String, usize>,
    /// The `MachineOf` names of each unit that should run and has one (not held), without
    /// repeats, in the order it gives them.
    machine_of: HashMap<UnitName, Vec<String>>,
    /// Every `Replaces` pattern of the units that should run.
    replaces: BTreeSet<String>,
    /// The `Conflicts` patterns of each non-global unit that should run (with valid rules), not
    /// held.
    conflicts: HashMap<UnitName, Vec<String>>,
    /// How many units of `conflicts` have each pattern.
    conflict_patterns: BTreeMap<String, usize>,
    /// Units that should run and have no machine (those that wait for a machine to stop them
    /// among them).
    unplaced: HashSet<UnitName>,
    /// The machines stopping each unit (their `stopping/` records).
    stopping: HashMap<UnitName, BTreeSet<MachineId>>,
    /// How many units each machine of `stopping` is stopping.
    stops_on: HashMap<MachineId, usize>,
    /// Live machines being drained.
    draining: BTreeSet<MachineId>,
    /// The global units (valid ones) and their requirements: they count in the load of every
    /// machine whose metadata they match, and conflict there.
    globals: Vec<(UnitName, Requirements)>,
    /// Why every live machine refuses each plain unit that waits, for those decided by the
    /// last burst (or by those of machines joining since): a machine that joins then adds
    /// its own refusal instead of every machine being asked again. A burst that changes a
    /// unit, or a machine otherwise than joining or writing its record again unchanged, drops
    /// them (a unit written could change why a machine refuses one).
    refusals: Cache<HashMap<UnitName, Refusals>>,
}

/// What a [`Memo`] keeps to plan sooner, not what it knows of the cluster: two memos are equal
/// whatever their caches hold.
#[derive(Clone, Default)]
struct Cache<T>(T);

impl<T> PartialEq for Cache<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for Cache<T> {}

impl<T> std::fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cache")
    }
}

/// The most reasons by machine a unit that waits may give for the memo to keep its
/// machines' refusals ([`Refusals`]): past that (a unit that conflicts with a unit on each
/// machine, say), each join decides it from every machine, as other changes do, rather than
/// the memo holding a reason for about every machine of every such unit.
const KEPT_REASONS: usize = 64;

/// Why the live machines refuse a plain unit, summed up as far as its lines of reasons say
/// (the whole plan's words, `refused_by`), so that the refusal of a machine that joins can be
/// added to them.
#[derive(Clone, Default)]
struct Refusals {
    /// How many machines refuse it.
    machines: usize,
    /// The first `REASON_LINES` of them, in machine order, and their line.
    each: Vec<(MachineId, String)>,
    /// Each reason, worded: how many machines give it, and the first `MACHINES_NAMED` of
    /// them, in machine order.
    by_reason: HashMap<String, (usize, Vec<MachineId>)>,
}

impl Refusals {
    /// Adds the refusal of machine `id`, which is not among them yet.
    fn add(&mut self, id: &MachineId, reason: String) {
        let at = self.each.partition_point(|(m, _)| m < id);
        debug_assert!(self.each.get(at).is_none_or(|(m, _)| m != id));
        if at < REASON_LINES {
            let line = format!("{}: {reason}", id.short());
            self.each.insert(at, (id.clone(), line));
            self.each.truncate(REASON_LINES);
        }
        let (machines, named) = self.by_reason.entry(reason).or_default();
        *machines += 1;
        name_first(named, id);
        self.machines += 1;
    }

    /// The lines of reasons, as the whole plan words them.
    fn lines(&self) -> Vec<String> {
        worded(self.machines, &self.each, &self.by_reason)
    }
}

/// Adds machine `id` to `named`, the first `MACHINES_NAMED` machines of a reason in machine
/// order, if it is one of them.
fn name_first(named: &mut Vec<MachineId>, id: &MachineId) {
    let at = named.partition_point(|m| m < id);
    if at < MACHINES_NAMED {
        named.insert(at, id.clone());
        named.truncate(MACHINES_NAMED);
    }
}

/// The lines of reasons of a unit `machines` machines refuse, as `refused_by` words them: the
/// lines of `each` (the first `REASON_LINES` machines) when they are all, otherwise a line per
/// reason of `by_reason` (how many machines give it, and the first of them), most machines
/// first, then by their first machine (a machine gives one reason).
fn worded<R: std::fmt::Display>(
    machines: usize,
    each: &[(MachineId, String)],
    by_reason: &HashMap<R, (usize, Vec<MachineId>)>,
) -> Vec<String> {
    if machines <= REASON_LINES {
        return each.iter().map(|(_, line)| line.clone()).collect();
    }
    let mut given: Vec<(&R, &(usize, Vec<MachineId>))> = by_reason.iter().collect();
    given.sort_by_key(|(_, (machines, named))| (std::cmp::Reverse(*machines), named.first()));
    let named: Vec<Vec<&str>> = given
        .iter()
        .map(|(_, (_, named))| named.iter().map(MachineId::short).collect())
        .collect();
    lines_by_reason(
        given
            .iter()
            .zip(&named)
            .map(|((reason, (machines, _)), named)| Given {
                reason: *reason,
                machines: *machines,
                named,
            }),
    )
}

/// A unit no machine takes, as a burst decided it: its requirements, its lines of reasons and
/// its machines' refusals, and how many of the burst's units had been placed before it.
struct Waiting<'a> {
    name: &'a UnitName,
    req: Requirements,
    reasons: Vec<String>,
    refused: Option<Refusals>,
    placed_before: usize,
}

/// Which of the units that wait for a machine a burst's machines have decided again.
enum Redecide {
    None,
    /// Only machines that joined could change their decision.
    Joined(Vec<MachineId>),
    All,
}

impl Redecide {
    fn join(&mut self, id: &MachineId) {
        match self {
            Redecide::None => *self = Redecide::Joined(vec![id.clone()]),
            Redecide::Joined(ids) => ids.push(id.clone()),
            Redecide::All => {}
        }
    }
}

/// The cluster as it is now, as [`Memo::plan`] looks things up in it (the engine's view).
pub trait Cluster {
    fn unit(&self, name: &UnitName) -> Option<&Unit>;
    /// The placement of `name` on `machine`, if there is one.
    fn placement(&self, machine: &MachineId, name: &UnitName) -> Option<&Placement>;
    /// The live machine `id`'s record, if it has one.
    fn machine(&self, id: &MachineId) -> Option<&MachineEntry>;
    /// Whether `id` is registered and not declared dead.
    fn is_member(&self, id: &MachineId) -> bool;
    fn is_draining(&self, id: &MachineId) -> bool;
    /// Whether `machine` has a `stopping/` record of `name`: it is stopping it.
    fn is_stopping(&self, machine: &MachineId, name: &UnitName) -> bool;
    /// The reasons recorded why `name` cannot be placed, if any.
    fn reasons(&self, name: &UnitName) -> Option<&[String]>;
}

/// Why the full plan refuses a plain unit a machine: `Planner::check`'s reasons, in its words
/// (found in its order by [`Memo::refusal`]). Two refusals of one unit are equal exactly when
/// they are worded alike (its accepted values of a key are one list, unit names hold no
/// space), so grouping its machines by refusal groups them as the whole plan groups its words
/// (`refused_by`).
#[derive(PartialEq, Eq, Hash)]
enum Refusal<'a> {
    Draining,
    MachineId(&'a str),
    Metadata(&'a str, &'a [String]),
    NotWithLeader(&'a str),
    ConflictsWithGlobal(&'a UnitName),
    ConflictsWith(&'a UnitName),
}

impl std::fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Draining => f.write_str("machine is draining"),
            Refusal::MachineId(id) => write!(f, "unit must run on machine {id}"),
            Refusal::Metadata(key, values) => {
                write!(f, "metadata {key}={} not matched", values.join("|"))
            }
            Refusal::NotWithLeader(leader) => write!(f, "not the machine of {leader} (MachineOf)"),
            Refusal::ConflictsWithGlobal(global) => {
                write!(f, "conflicts with global unit {global}")
            }
            Refusal::ConflictsWith(unit) => write!(f, "conflicts with {unit}"),
        }
    }
}

/// Where [`Memo::decide`] puts a unit: on a machine, and why there; or nowhere, and why not
/// on each machine (or at all): its lines of reasons, and the machines' refusals when it has
/// one by machine.
enum Decision {
    Place(MachineId, String),
    Wait(Vec<String>, Option<Refusals>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    metadata: BTreeMap<String, String>,
    load: usize,
    draining: bool,
    /// Registered and not declared dead: a unit leaves it only once stopped there.
    member: bool,
}

impl Planner<'_> {
    /// What this pass knows at its end, once every unit is placed or found unplaceable, with
    /// the units it was given held (left out of its snapshot) and where.
    pub(super) fn memo(
        &self,
        stopping: &BTreeSet<(MachineId, UnitName)>,
        held: HashMap<UnitName, MachineId>,
    ) -> Memo {
        let hosts = self
            .hosts
            .iter()
            .map(|h| {
                let id = h.entry.machine.id.clone();
                let host = Host {
                    metadata: h.entry.machine.metadata.clone(),
                    load: h.load(),
                    draining: h.draining,
                    member: self.members.contains(&id),
                };
                (id, host)
            })
            .collect();
        let by_load = self
            .by_load
            .iter()
            .map(|&(load, m)| (load, self.hosts[m].entry.machine.id.clone()))
            .collect();
        let host_ids = self
            .host_ids
            .iter()
            .map(|(key, ms)| {
                let ids = ms
                    .iter()
                    .map(|&m| self.hosts[m].entry.machine.id.clone())
                    .collect();
                (key.clone(), ids)
            })
            .collect();
        let mut memo = Memo {
            hosts,
            by_load,
            host_ids,
            placed: HashMap::new(),
            held: HashMap::new(),
            on: HashMap::new(),
            ruled: self.globals.iter().map(|g| g.name.clone()).collect(),
            leaders: HashMap::new(),
            machine_of: HashMap::new(),
            replaces: BTreeSet::new(),
            conflicts: HashMap::new(),
            conflict_patterns: BTreeMap::new(),
            unplaced: HashSet::new(),
            stopping: HashMap::new(),
            stops_on: HashMap::new(),
            refusals: Cache::default(),
            draining: self
                .hosts
                .iter()
                .filter(|h| h.draining)
                .map(|h| h.entry.machine.id.clone())
                .collect(),
            globals: self
                .globals
                .iter()
                .map(|g| (g.name.clone(), g.req.clone()))
                .collect(),
        };
        for (u, w) in self.units.iter().enumerate() {
            let name = &w.unit.name;
            if let Some(m) = self.at[u] {
                memo.put(name, &self.hosts[m].entry.machine.id);
            }
            if self.unplaceable[u].is_some() {
                memo.unplaced.insert(name.clone());
            }
            match &w.req {
                Ok(req) => {
                    if !plain(req) {
                        memo.ruled.insert(name.clone());
                    }
                    memo.replaces.extend(req.replaces.iter().cloned());
                    memo.set_conflicts(name, &req.conflicts);
                }
                Err(_) => {
                    memo.ruled.insert(name.clone());
                }
            }
            let names: Vec<String> = w.leaders.iter().map(|(name, _)| name.clone()).collect();
            memo.set_machine_of(name, &names);
        }
        for (machine, name) in stopping {
            memo.stop_on(machine, name);
        }
        for (name, machine) in held {
            memo.on
                .entry(machine.clone())
                .or_default()
                .insert(name.clone());
            memo.held.insert(name, machine);
        }
        memo
    }
}

impl Planner<'_> {
    /// Whether the units this pass left `unplaceable` would get the same reasons from the
    /// next plan, as `memo` (this pass's) finds them: those whose rules are invalid, and those
    /// that wait for a machine (plain ones, not waiting for a machine to stop them) when the
    /// memo gives them the same reasons once every unit is placed. Their reasons were found
    /// where this pass decided them, among the others.
    pub(super) fn reasons_settled(&self, memo: &Memo, unplaceable: &[Unplaceable]) -> bool {
        unplaceable.iter().all(|waiting| {
            // Every unit it leaves unplaceable is one it planned.
            let Some(&u) = self.by_name.get(waiting.unit.as_str()) else {
                return false;
            };
            match &self.units[u].req {
                Err(_) => true,
                Ok(req) => {
                    plain(req)
                        && !memo.stopping.contains_key(&waiting.unit)
                        && !any_matches(&memo.replaces, &waiting.unit)
                        && matches!(
                            memo.decide(&waiting.unit, req),
                            Some(Decision::Wait(reasons, _)) if reasons == waiting.reasons
                        )
                }
            }
        })
    }
}

/// Whether one of `patterns` matches `name`.
fn any_matches<'p>(patterns: impl IntoIterator<Item = &'p String>, name: &UnitName) -> bool {
    patterns.into_iter().any(|p| glob_match(p, name.as_str()))
}

/// `patterns` without repeats.
fn distinct(patterns: &[String]) -> BTreeSet<&String> {
    patterns.iter().collect()
}

/// Whether a unit's rules are decided on each machine alone: nothing but `MachineID`,
/// `MachineMetadata`, `Conflicts` (checked against what runs there), `MachineOf` (the machine
/// of units placed already) and the rules that do not concern placement.
fn plain(req: &Requirements) -> bool {
    !req.global && req.replaces.is_empty()
}

/// `names` without repeats, in their order, as the full plan reads `MachineOf`.
fn first_of_each(names: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect()
}

/// Where the full plan places a unit among others of one burst: in dependency order (a
/// `MachineOf` leader before its followers) then name order. For a unit whose leaders have
/// no leaders themselves (the only followers the memo places), that order is the name order
/// but for a follower that comes before its last leader by name, which comes right after that
/// leader: the full plan ranks units in name order, each as soon as its leaders are ranked.
fn rank_key<'n>(name: &'n UnitName, leaders: &'n [String]) -> (&'n str, bool, &'n str) {
    let last = leaders.iter().map(String::as_str).max().unwrap_or("");
    let slot = last.max(name.as_str());
    (slot, slot != name.as_str(), name.as_str())
}

impl Memo {
    /// The plan for a burst that changed exactly the units `changed` (written, deleted, or
    /// released by a machine that stopped them: their `stopping/` records removed), and
    /// the machine and member records of `machines` (written or deleted, and created) and the
    /// placements on those of them that are not live, given the cluster as it is now; and the
    /// memo updated to the cluster once that plan is applied. Its ops are the placement
    /// changes, then the reasons it records for units no machine takes, then the recorded
    /// reasons it clears (as the engine writes a whole plan's reasons after its ops). `None`
    /// when the burst needs the whole plan: the memo is then stale and must be dropped.
    pub fn plan(
        &mut self,
        changed: &BTreeSet<UnitName>,
        machines: &BTreeSet<MachineId>,
        cluster: &impl Cluster,
    ) -> Option<Plan> {
        // The stopping records released first (by the machines that stopped the units, or by
        // a declaration): a unit no machine stops any more waits no longer.
        for name in changed {
            let Some(machines) = self.stopping.get_mut(name) else {
                continue;
            };
            machines.retain(|m| {
                let stops = cluster.is_stopping(m, name);
                if !stops {
                    if let Some(n) = self.stops_on.get_mut(m) {
                        *n -= 1;
                        if *n == 0 {
                            self.stops_on.remove(m);
                        }
                    }
                }
                stops
            });
            if machines.is_empty() {
                // Done stopping: a drain could take the next unit off its machine.
                if self.draining.iter().any(|id| self.on.contains_key(id)) {
                    return None;
                }
                self.stopping.remove(name);
                // A unit that waited to move is placed as a new one (below).
                self.unplaced.remove(name);
            }
        }
        // Then the machines: the units of the burst are placed on the machines as they are
        // now. The units of machines that came back or left for good are looked at with them.
        let mut again: BTreeMap<UnitName, Option<MachineId>> = BTreeMap::new();
        // Whether the units that wait for a machine are all decided again with the burst's (a
        // machine changed: only joined, or otherwise), and which of them otherwise (a unit
        // they conflict with changed).
        let mut redecide = Redecide::None;
        let mut touched: BTreeSet<UnitName> = BTreeSet::new();
        for id in machines {
            self.machine_changed(id, cluster, &mut again, &mut redecide)?;
        }
        // Only machines that joined: what the others refuse stays refused, and why. Any other
        // burst could change that.
        let only_machines = changed.is_empty() && again.is_empty();
        // Whether all the units that wait for a machine are decided again.
        let all_again = !matches!(redecide, Redecide::None);
        let joined = match redecide {
            Redecide::Joined(ids) if only_machines => Some(ids),
            Redecide::None if only_machines => None,
            _ => {
                self.refusals.0.clear();
                None
            }
        };
        let unit = |name: &UnitName| cluster.unit(name);
        let placement = |machine: &MachineId, name: &UnitName| cluster.placement(machine, name);
        let mut plan = Plan::default();
        let mut to_place: Vec<(&Unit, Requirements)> = Vec::new();
        // Units that stay where they are, to check against their neighbours once all of the
        // burst's are known.
        let mut stay: Vec<(&UnitName, MachineId)> = Vec::new();
        // First what becomes of the existing placements, in name order as the full plan lists
        // them; then the new ones, in the order it places them (`rank_key`), on the loads
        // after the removals.
        let names: BTreeSet<&UnitName> = changed.iter().chain(again.keys()).collect();
        // Leaders named before the burst by a unit's `MachineOf`: they may only stay where
        // they are, with their followers (a follower of the burst is placed after its
        // leaders of the burst, as new ones are, below).
        let leading: HashSet<&UnitName> = names
            .iter()
            .copied()
            .filter(|n| self.leaders.contains_key(n.as_str()))
            .collect();
        // Units whose reasons for not being placed are recorded: cleared unless they still
        // wait once the burst is placed.
        let mut cleared: BTreeSet<UnitName> = BTreeSet::new();
        for name in names {
            if self.global_changed(name, again.contains_key(name), cluster)? {
                continue;
            }
            if self.ruled.contains(name)
                || self.stopping.contains_key(name)
                || self.held.contains_key(name)
                || any_matches(&self.replaces, name)
            {
                return None;
            }
            // One that waited for a machine is decided again, as a new one.
            self.unplaced.remove(name);
            // A leader that does not stay where it is moves its followers.
            let stays_only = leading.contains(name);
            let wanted = unit(name).filter(|u| u.desired_state != JobState::Inactive);
            let req = match wanted {
                Some(u) => Some(self.plain_requirements(u)?),
                None => None,
            };
            let patterns = req.as_ref().map_or(&[][..], |r| &r.conflicts[..]);
            // A unit that waits can give other reasons (the first unit it conflicts with, by
            // name), or go somewhere, when one it conflicts with (either way) comes, goes or
            // changes.
            if !all_again
                && !self.unplaced.is_empty()
                && (self.conflicts.contains_key(name)
                    || !patterns.is_empty()
                    || self.conflict_named(name))
            {
                touched.extend(self.unplaced_conflicting(name, patterns));
            }
            self.set_conflicts(name, patterns);
            let leaders = req
                .as_ref()
                .map_or_else(Vec::new, |r| first_of_each(&r.machine_of));
            // A leader that follows other units since the burst, or no longer: its followers
            // rank otherwise in the full plan, and their rules may no longer hold together
            // (or hold again: one whose `Replaces` pushes away a unit it is with through
            // `MachineOf`, transitively).
            if stays_only
                && wanted.is_some()
                && self.machine_of.get(name).map_or(&[][..], |l| &l[..]) != &leaders[..]
            {
                return None;
            }
            self.set_machine_of(name, &leaders);
            if cluster.reasons(name).is_some() {
                cleared.insert(name.clone());
            }
            if let Some(Some(gone)) = again.get(name) {
                if stays_only {
                    return None;
                }
                // Its machine is no member: the placement goes without a stop.
                if placement(gone, name).is_some() {
                    if cluster.is_member(gone) {
                        return None;
                    }
                    plan.ops.push(PlacementOp::Delete {
                        machine: gone.clone(),
                        name: name.clone(),
                    });
                }
                if let (Some(u), Some(req)) = (wanted, req) {
                    to_place.push((u, req));
                }
                continue;
            }
            let Some(machine) = self.placed.get(name).cloned() else {
                if stays_only {
                    return None;
                }
                if let (Some(u), Some(req)) = (wanted, req) {
                    to_place.push((u, req));
                }
                continue;
            };
            let host = self.hosts.get(&machine)?;
            if host.draining {
                return None;
            }
            match (wanted, req) {
                (Some(u), Some(req)) => {
                    if !(req.machine_id_matches(machine.as_str())
                        && req.metadata_matches(&host.metadata)
                        && leaders.iter().all(|l| {
                            l != name.as_str() && self.placed.get(l.as_str()) == Some(&machine)
                        }))
                    {
                        // It moves: the full plan stops it first.
                        return None;
                    }
                    let target = Placement::for_unit(u);
                    if placement(&machine, name) != Some(&target) {
                        plan.ops.push(PlacementOp::Put {
                            machine: machine.clone(),
                            placement: target,
                        });
                    }
                    stay.push((name, machine));
                }
                _ => {
                    if stays_only {
                        return None;
                    }
                    let op = if host.member {
                        self.stop_on(&machine, name);
                        PlacementOp::Move {
                            machine: machine.clone(),
                            name: name.clone(),
                        }
                    } else {
                        PlacementOp::Delete {
                            machine: machine.clone(),
                            name: name.clone(),
                        }
                    };
                    plan.ops.push(op);
                    self.unput(name);
                    self.add_load(&machine, -1);
                }
            }
        }
        // A unit that conflicts with a neighbour moves (the full plan stops it first), and so
        // does one whose leader left its machine in the burst (a leader it names since the
        // burst, or again since it came back, was not known to stay only).
        for (name, machine) in stay {
            let patterns = self.conflicts.get(name).map_or(&[][..], |p| &p[..]);
            let with_leaders = self
                .machine_of
                .get(name)
                .into_iter()
                .flatten()
                .all(|l| self.placed.get(l.as_str()) == Some(&machine));
            if !with_leaders || self.conflicts_on(name, patterns, &machine) {
                return None;
            }
        }
        // The units that wait for a machine (not for one to stop them) are decided again with
        // the burst's, as the full plan decides every unit it does not keep: those whose
        // decision or reasons the burst could change. All of them when a machine changed.
        // Otherwise those a unit of the burst conflicts with, either way, and those that
        // conflict with them, as they could be placed; unless one of them is a `MachineOf`
        // leader (its followers could be placed with it).
        let waiting: Vec<UnitName> = if all_again {
            self.unplaced
                .iter()
                .filter(|name| !self.stopping.contains_key(*name))
                .cloned()
                .collect()
        } else {
            let mut closure: BTreeSet<UnitName> = BTreeSet::new();
            let mut next: Vec<UnitName> = touched
                .into_iter()
                .filter(|name| self.unplaced.contains(name))
                .collect();
            while let Some(name) = next.pop() {
                if self.leaders.contains_key(name.as_str()) {
                    return None;
                }
                let patterns = self.conflicts.get(&name).cloned().unwrap_or_default();
                next.extend(
                    self.unplaced_conflicting(&name, &patterns)
                        .filter(|other| !closure.contains(other)),
                );
                closure.insert(name);
            }
            closure.into_iter().collect()
        };
        for name in waiting {
            let u = unit(&name).filter(|u| u.desired_state != JobState::Inactive)?;
            match Requirements::from_unit(&u.name, &u.file()) {
                // Its reason is its rules' error, wherever the others are.
                Err(_) => continue,
                Ok((req, _)) if plain(&req) && !any_matches(&self.replaces, &name) => {
                    self.unplaced.remove(&name);
                    if cluster.reasons(&name).is_some() {
                        cleared.insert(name);
                    }
                    to_place.push((u, req));
                }
                Ok(_) => return None,
            }
        }
        // In the order the full plan places them: leaders (those of the burst) first.
        to_place.sort_by(|(a, ra), (b, rb)| {
            rank_key(&a.name, &ra.machine_of).cmp(&rank_key(&b.name, &rb.machine_of))
        });
        // Units no machine takes, with their requirements, their reasons, and how many units
        // had been placed before them.
        let mut unplaceable: Vec<Waiting<'_>> = Vec::new();
        let mut placed = 0;
        for (u, req) in to_place {
            let refused = joined
                .as_ref()
                .and_then(|_| self.refusals.0.remove(&u.name));
            let decision = match (&joined, refused) {
                (Some(joined), Some(refused)) => self.decide_joined(&u.name, &req, joined, refused),
                _ => self.decide(&u.name, &req),
            };
            match decision? {
                Decision::Place(machine, why) => {
                    placed += 1;
                    self.put(&u.name, &machine);
                    self.add_load(&machine, 1);
                    plan.placed.insert(u.name.clone(), why);
                    plan.ops.push(PlacementOp::Put {
                        machine,
                        placement: Placement::for_unit(u),
                    });
                }
                Decision::Wait(reasons, refused) => {
                    self.unplaced.insert(u.name.clone());
                    unplaceable.push(Waiting {
                        name: &u.name,
                        req,
                        reasons,
                        refused,
                        placed_before: placed,
                    });
                }
            }
        }
        // The reasons of a unit no machine takes are found where the full plan decides it,
        // among the others; the next plan finds them once all are placed. Only when they are
        // the same is the cluster this plan leaves settled.
        // The machines' refusals are kept as they are once all are placed.
        unplaceable.sort_by(|a, b| a.name.cmp(b.name));
        for waiting in unplaceable {
            let Waiting {
                name,
                req,
                reasons,
                mut refused,
                placed_before,
            } = waiting;
            if placed > placed_before {
                match self.decide(name, &req)? {
                    Decision::Wait(again, now) if again == reasons => refused = now,
                    _ => return None,
                }
            }
            if let Some(refused) = refused {
                self.refusals.0.insert(name.clone(), refused);
            }
            cleared.remove(name);
            if cluster.reasons(name) != Some(&reasons[..]) {
                plan.ops.push(PlacementOp::SetUnplaceable {
                    name: name.clone(),
                    reasons,
                });
            }
        }
        // After the placements, as the engine writes the reasons of a whole plan.
        plan.ops.extend(
            cleared
                .into_iter()
                .map(|name| PlacementOp::ClearUnplaceable { name }),
        );
        Some(plan)
    }

    /// Takes in that machine `id`'s records changed (or the placements on it, when it is not
    /// live): `None` unless the whole plan would move nothing for it but its own units. Adds
    /// to `again` the units to be looked at again as those of the burst are: those placed on
    /// it again (with `None`), and those to be placed elsewhere, with the machine they leave.
    fn machine_changed(
        &mut self,
        id: &MachineId,
        cluster: &impl Cluster,
        again: &mut BTreeMap<UnitName, Option<MachineId>>,
        redecide: &mut Redecide,
    ) -> Option<()> {
        let member = cluster.is_member(id);
        // Units that wait for a machine to take them could go to this one, or give other
        // reasons (by machine): they are decided again with the burst's units. Units that
        // wait for this machine to stop them are left to the whole plan: its stopping
        // records count only while it is a member, and name it in their reasons. Those
        // that wait for another machine wait for it whatever this one does.
        let stops = self.stops_on.contains_key(id);
        let waits = !self.unplaced.is_empty();
        // Its units whose placement there is gone (a declaration removes them before the
        // member record, which it leaves if the machine came back meanwhile): placed
        // elsewhere as new ones, as the whole plan does.
        let gone: Vec<UnitName> = self
            .on
            .get(id)
            .into_iter()
            .flatten()
            .filter(|name| cluster.placement(id, name).is_none())
            .cloned()
            .collect();
        if !gone.is_empty() {
            if stops {
                return None;
            }
            if waits {
                *redecide = Redecide::All;
            }
        }
        for name in gone {
            if self.placed.contains_key(&name) {
                self.add_load(id, -1);
            }
            self.unput(&name);
            again.insert(name, Some(id.clone()));
        }
        match (self.hosts.get_mut(id), cluster.machine(id)) {
            // Written again (a restart on the same lease, with new metadata, say), or
            // registered again: only whether its units stop before they leave it may change,
            // and its metadata.
            (Some(host), Some(entry)) => {
                if cluster.is_draining(id) {
                    return None;
                }
                // Its stopping records count only while it is a member: units waiting could
                // wait for another reason.
                if member != host.member && stops {
                    return None;
                }
                host.member = member;
                if entry.machine.metadata != host.metadata {
                    if stops {
                        return None;
                    }
                    if waits {
                        *redecide = Redecide::All;
                    }
                    self.metadata_changed(id, entry.machine.metadata.clone(), cluster)?;
                }
            }
            // Joined, or back before it was declared dead. Units that wait could go there (or
            // give other reasons).
            (None, Some(entry)) => {
                if stops || cluster.is_draining(id) {
                    return None;
                }
                // (With units back, the refusals the memo kept are dropped: they are placed
                // there again.)
                if waits {
                    redecide.join(id);
                }
                let metadata = entry.machine.metadata.clone();
                // The units held there are placed there again, and looked at as the units
                // of the burst are: whether they still may run there, in this content.
                let back: Vec<UnitName> = self.on.get(id).into_iter().flatten().cloned().collect();
                if !back.is_empty() && !member {
                    return None;
                }
                for name in &back {
                    self.held.remove(name);
                    self.placed.insert(name.clone(), id.clone());
                    again.insert(name.clone(), None);
                }
                let load = back.len()
                    + self
                        .globals
                        .iter()
                        .filter(|(_, g)| g.metadata_matches(&metadata))
                        .count();
                for key in host_id_keys(id) {
                    let ids = self.host_ids.entry(key).or_default();
                    let at = ids.partition_point(|other| other < id);
                    ids.insert(at, id.clone());
                }
                self.by_load.insert((load, id.clone()));
                self.hosts.insert(
                    id.clone(),
                    Host {
                        metadata,
                        load,
                        draining: false,
                        member,
                    },
                );
            }
            // Gone: its lease, or the machine for good. The units that wait could give other
            // reasons (by machine).
            (Some(_), None) => {
                if stops {
                    return None;
                }
                if waits {
                    *redecide = Redecide::All;
                }
                let host = self.hosts.remove(id)?;
                self.by_load.remove(&(host.load, id.clone()));
                self.draining.remove(id);
                for key in host_id_keys(id) {
                    if let Some(ids) = self.host_ids.get_mut(&key) {
                        ids.retain(|other| other != id);
                        if ids.is_empty() {
                            self.host_ids.remove(&key);
                        }
                    }
                }
                let units: Vec<UnitName> = self.on.get(id).into_iter().flatten().cloned().collect();
                for name in units {
                    if member {
                        // Held where it is, out of every rule: a unit in a rule between
                        // units would change what the others may do. Its `Conflicts` only
                        // concerned its own machine: they are taken in again from the unit
                        // when it is placed again.
                        if self.ruled.contains(&name) {
                            return None;
                        }
                        self.set_conflicts(&name, &[]);
                        self.set_machine_of(&name, &[]);
                        self.placed.remove(&name);
                        self.held.insert(name, id.clone());
                    } else {
                        self.unput(&name);
                        again.insert(name, Some(id.clone()));
                    }
                }
            }
            // Not live before nor now. The units held there are placed elsewhere once it is
            // declared dead (no member); so are those it was stopping.
            (None, None) => {
                if stops {
                    return None;
                }
                let held: Vec<UnitName> = if member {
                    Vec::new()
                } else {
                    self.on.get(id).into_iter().flatten().cloned().collect()
                };
                if !held.is_empty() && waits {
                    *redecide = Redecide::All;
                }
                for name in held {
                    self.unput(&name);
                    again.insert(name, Some(id.clone()));
                }
            }
        }
        Some(())
    }

    /// Takes in a global unit written, rewritten or destroyed (while no unit waits): it
    /// counts in the load of the live machines its metadata matches, and a unit there that
    /// conflicts with it, either way, would move (`None`). `Some(false)` when `name` is no
    /// global unit, before or after; `None` also for a unit that becomes global or stops
    /// being one (`moving`: it was placed on a machine that changed in the burst).
    fn global_changed(
        &mut self,
        name: &UnitName,
        moving: bool,
        cluster: &impl Cluster,
    ) -> Option<bool> {
        let was = self.globals.iter().position(|(g, _)| g == name);
        let wanted = cluster
            .unit(name)
            .filter(|u| u.desired_state != JobState::Inactive);
        let now = wanted.filter(|u| u.is_global());
        if was.is_none() && now.is_none() {
            return Some(false);
        }
        let tracked = moving || self.placed.contains_key(name) || self.held.contains_key(name);
        let stops_being_one = was.is_some() && wanted.is_some() && now.is_none();
        if tracked || stops_being_one || self.any_waits() || cluster.reasons(name).is_some() {
            return None;
        }
        // One with invalid rules runs nowhere as far as placement goes.
        let req = now.and_then(|u| Requirements::from_unit(&u.name, &u.file()).ok());
        if let Some(i) = was {
            let (_, old) = self.globals.remove(i);
            self.ruled.remove(name);
            for id in self.running(&old) {
                self.add_load(&id, -1);
            }
        }
        if let Some((req, _)) = req {
            let hosts = self.running(&req);
            for id in &hosts {
                let conflicts = self.on.get(id).into_iter().flatten().any(|unit| {
                    any_matches(&req.conflicts, unit) || self.conflicts_with(unit, name)
                });
                if conflicts {
                    return None;
                }
            }
            for id in &hosts {
                self.add_load(id, 1);
            }
            let at = self.globals.partition_point(|(g, _)| g < name);
            self.globals.insert(at, (name.clone(), req));
            self.ruled.insert(name.clone());
        }
        Some(true)
    }

    /// The live machines a global unit with these requirements runs on.
    fn running(&self, global: &Requirements) -> Vec<MachineId> {
        self.hosts
            .iter()
            .filter(|(_, h)| global.metadata_matches(&h.metadata))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Takes in that the live machine `id` has new `metadata`: `None` unless nothing moves
    /// for it. Its units (those that still want to run: the others are the burst's) must
    /// still match it, and no global unit that starts running there may conflict with them;
    /// its load counts the global units that run there now.
    fn metadata_changed(
        &mut self,
        id: &MachineId,
        metadata: BTreeMap<String, String>,
        cluster: &impl Cluster,
    ) -> Option<()> {
        let units = self.on.get(id);
        for name in units.into_iter().flatten() {
            let Some(unit) = cluster
                .unit(name)
                .filter(|u| u.desired_state != JobState::Inactive)
            else {
                continue;
            };
            let (req, _) = Requirements::from_unit(&unit.name, &unit.file()).ok()?;
            if !req.metadata_matches(&metadata) {
                return None;
            }
        }
        let before = &self.hosts.get(id)?.metadata;
        let mut delta: isize = 0;
        for (global, g) in &self.globals {
            match (g.metadata_matches(before), g.metadata_matches(&metadata)) {
                (false, true) => {
                    let conflicts = units.into_iter().flatten().any(|name| {
                        any_matches(&g.conflicts, name) || self.conflicts_with(name, global)
                    });
                    if conflicts {
                        return None;
                    }
                    delta += 1;
                }
                (true, false) => delta -= 1,
                _ => {}
            }
        }
        self.hosts.get_mut(id)?.metadata = metadata;
        self.add_load(id, delta);
        Some(())
    }

    /// Whether the memo keeps the machines' refusals of `name`, a unit that waits.
    #[cfg(test)]
    pub(super) fn keeps_refusals_of(&self, name: &str) -> bool {
        self.refusals.0.keys().any(|n| n.as_str() == name)
    }

    /// Whether a live machine is being drained: only then do rolling updates count in a plan
    /// (the instances they take down bound what a drain may take down).
    pub fn drains(&self) -> bool {
        !self.draining.is_empty()
    }

    /// Whether any unit waits.
    fn any_waits(&self) -> bool {
        !self.unplaced.is_empty() || !self.stopping.is_empty()
    }

    /// Whether a `Conflicts` pattern of some unit, or of a global unit, matches this one.
    fn conflict_named(&self, name: &UnitName) -> bool {
        let globals = self.globals.iter().flat_map(|(_, g)| g.conflicts.iter());
        any_matches(self.conflict_patterns.keys().chain(globals), name)
    }

    /// The units that wait for a machine (not for one to stop them) that `name`, with its
    /// `Conflicts` before (recorded) or after (`patterns`) the burst, conflicts with, either
    /// way.
    fn unplaced_conflicting<'a>(
        &'a self,
        name: &'a UnitName,
        patterns: &'a [String],
    ) -> impl Iterator<Item = UnitName> + 'a {
        let before = self.conflicts.get(name).map_or(&[][..], |p| &p[..]);
        self.unplaced
            .iter()
            .filter(move |waiting| {
                *waiting != name
                    && !self.stopping.contains_key(*waiting)
                    && (any_matches(before, waiting)
                        || any_matches(patterns, waiting)
                        || self.conflicts_with(waiting, name))
            })
            .cloned()
    }

    /// Records that `machine` is stopping `name`.
    fn stop_on(&mut self, machine: &MachineId, name: &UnitName) {
        let new = self
            .stopping
            .entry(name.clone())
            .or_default()
            .insert(machine.clone());
        if new {
            *self.stops_on.entry(machine.clone()).or_default() += 1;
        }
    }

    /// Records `patterns` as the `Conflicts` of `name` (none: it has none, or should not run).
    fn set_conflicts(&mut self, name: &UnitName, patterns: &[String]) {
        if let Some(old) = self.conflicts.remove(name) {
            for p in distinct(&old) {
                if let Some(n) = self.conflict_patterns.get_mut(p) {
                    *n -= 1;
                    if *n == 0 {
                        self.conflict_patterns.remove(p);
                    }
                }
            }
        }
        if patterns.is_empty() {
            return;
        }
        for p in distinct(patterns) {
            *self.conflict_patterns.entry(p.clone()).or_default() += 1;
        }
        self.conflicts.insert(name.clone(), patterns.to_vec());
    }

    /// Records `names` as the `MachineOf` of `name` (none: it has none, or should not run).
    fn set_machine_of(&mut self, name: &UnitName, names: &[String]) {
        if let Some(old) = self.machine_of.remove(name) {
            for leader in old {
                if let Some(n) = self.leaders.get_mut(&leader) {
                    *n -= 1;
                    if *n == 0 {
                        self.leaders.remove(&leader);
                    }
                }
            }
        }
        if names.is_empty() {
            return;
        }
        for leader in names {
            *self.leaders.entry(leader.clone()).or_default() += 1;
        }
        self.machine_of.insert(name.clone(), names.to_vec());
    }

    /// Whether `name`, with these `Conflicts` patterns, conflicts with what runs on the live
    /// machine `id` (global units included), either way, as the full plan checks it.
    fn conflicts_on(&self, name: &UnitName, patterns: &[String], id: &MachineId) -> bool {
        let metadata = &self.hosts[id].metadata;
        let global = self.globals.iter().any(|(global, g)| {
            g.metadata_matches(metadata)
                && (any_matches(patterns, global) || any_matches(&g.conflicts, name))
        });
        global
            || self.on.get(id).into_iter().flatten().any(|other| {
                other != name && (any_matches(patterns, other) || self.conflicts_with(other, name))
            })
    }

    /// Whether a recorded `Conflicts` pattern of `unit` matches `name`.
    fn conflicts_with(&self, unit: &UnitName, name: &UnitName) -> bool {
        self.conflicts
            .get(unit)
            .is_some_and(|patterns| any_matches(patterns, name))
    }

    /// A unit's requirements if they are plain.
    fn plain_requirements(&self, unit: &Unit) -> Option<Requirements> {
        if unit.is_global() {
            return None;
        }
        let (req, _) = Requirements::from_unit(&unit.name, &unit.file()).ok()?;
        plain(&req).then_some(req)
    }

    /// The machine for a plain unit, as the full plan chooses it, and why there; or why no
    /// machine takes it, as the full plan says it. `None` when the full plan would rank its
    /// leaders otherwise (a leader that follows a unit itself) or they are apart.
    fn decide(&self, name: &UnitName, req: &Requirements) -> Option<Decision> {
        if self.hosts.is_empty() {
            return Some(Decision::Wait(
                vec!["no machine is registered".to_string()],
                None,
            ));
        }
        let leaders = first_of_each(&req.machine_of);
        let fits = |id: &MachineId| self.refusal(name, req, &leaders, id).is_none();
        let found = if let Some(last) = leaders.last() {
            // With its leaders, all placed on one machine and following no unit themselves
            // (otherwise the full plan ranks them and their followers differently).
            let mut with: Option<&MachineId> = None;
            for leader in &leaders {
                if self.machine_of.contains_key(leader.as_str()) {
                    return None;
                }
                let Some(at) = self.placed.get(leader.as_str()) else {
                    return Some(Decision::Wait(
                        vec![format!("waiting for {leader} (MachineOf) to be placed")],
                        None,
                    ));
                };
                if with.is_some_and(|w| w != at) {
                    return None;
                }
                with = Some(at);
            }
            with.filter(|m| fits(m))
                .map(|m| (m.clone(), format!("MachineOf={last}")))
        } else if let Some(id) = &req.machine_id {
            let mut targets: Vec<&MachineId> = self
                .host_ids
                .get(&id.trim().to_ascii_lowercase())
                .map(|ids| ids.iter().collect())
                .unwrap_or_default();
            targets.sort_by_key(|&m| (self.hosts[m].load, m));
            targets
                .into_iter()
                .find(|m| fits(m))
                .map(|m| (m.clone(), format!("MachineID={id}")))
        } else {
            let mut ruled_out = 0;
            self.by_load
                .iter()
                .find(|(_, m)| {
                    let ok = fits(m);
                    ruled_out += usize::from(!ok);
                    ok
                })
                .map(|(load, m)| {
                    let why = least_loaded(*load, ruled_out, self.hosts.len());
                    (m.clone(), why)
                })
        };
        Some(match found {
            Some((machine, why)) => Decision::Place(machine, why),
            None => {
                let (lines, refused) = self.refused(name, req, &leaders);
                Decision::Wait(lines, refused)
            }
        })
    }

    /// What [`decide`](Self::decide) decides for a plain unit that every live machine refused
    /// as `refused` says, once the machines `joined` have joined and nothing else changed:
    /// the others still refuse it as they did, so it waits, with the refusals of those that
    /// joined added, unless one of them takes it.
    fn decide_joined(
        &self,
        name: &UnitName,
        req: &Requirements,
        joined: &[MachineId],
        mut refused: Refusals,
    ) -> Option<Decision> {
        let leaders = first_of_each(&req.machine_of);
        let mut theirs = Vec::with_capacity(joined.len());
        for id in joined {
            match self.refusal(name, req, &leaders, id) {
                Some(reason) => theirs.push((id, reason.to_string())),
                None => return self.decide(name, req),
            }
        }
        for (id, reason) in theirs {
            refused.add(id, reason);
        }
        let lines = refused.lines();
        let kept = refused.by_reason.len() <= KEPT_REASONS;
        Some(Decision::Wait(lines, kept.then_some(refused)))
    }

    /// Why the live machines that refuse the plain unit `name` (with these requirements and
    /// `MachineOf` leaders) refuse it: its lines of reasons, and the refusals summed up as far
    /// as they say them, unless it gives more than [`KEPT_REASONS`] reasons. Reasons are told
    /// apart as values, and worded only for the lines, and for the refusals kept.
    fn refused(
        &self,
        name: &UnitName,
        req: &Requirements,
        leaders: &[String],
    ) -> (Vec<String>, Option<Refusals>) {
        let mut each = Vec::new();
        let mut by_reason: HashMap<Refusal<'_>, (usize, Vec<MachineId>)> = HashMap::new();
        let mut machines = 0;
        for id in self.hosts.keys() {
            let Some(reason) = self.refusal(name, req, leaders, id) else {
                continue;
            };
            if machines < REASON_LINES {
                each.push((id.clone(), format!("{}: {reason}", id.short())));
            }
            let (n, named) = by_reason.entry(reason).or_default();
            *n += 1;
            if named.len() < MACHINES_NAMED {
                named.push(id.clone());
            }
            machines += 1;
        }
        let lines = worded(machines, &each, &by_reason);
        if by_reason.len() > KEPT_REASONS {
            return (lines, None);
        }
        // Two refusals worded alike are one reason (as they are one value, see `Refusal`).
        let mut kept: HashMap<String, (usize, Vec<MachineId>)> = HashMap::new();
        for (reason, (n, named)) in by_reason {
            let (all, first) = kept.entry(reason.to_string()).or_default();
            *all += n;
            for id in &named {
                name_first(first, id);
            }
        }
        let refused = Refusals {
            machines,
            each,
            by_reason: kept,
        };
        (lines, Some(refused))
    }

    /// Why the plain unit `name` (with these requirements and `MachineOf` leaders) may not be
    /// placed on the live machine `id`, if it may not: the full plan's first reason there.
    fn refusal<'a>(
        &'a self,
        name: &UnitName,
        req: &'a Requirements,
        leaders: &'a [String],
        id: &MachineId,
    ) -> Option<Refusal<'a>> {
        let host = &self.hosts[id];
        if host.draining {
            return Some(Refusal::Draining);
        }
        if let Some(wanted) = &req.machine_id {
            if !req.machine_id_matches(id.as_str()) {
                return Some(Refusal::MachineId(wanted));
            }
        }
        if let Some((key, values)) = req.unmatched_metadata(&host.metadata) {
            return Some(Refusal::Metadata(key, values));
        }
        if let Some(leader) = leaders
            .iter()
            .find(|l| self.placed.get(l.as_str()) != Some(id))
        {
            return Some(Refusal::NotWithLeader(leader));
        }
        let running = || {
            self.globals
                .iter()
                .filter(|(_, g)| g.metadata_matches(&host.metadata))
        };
        let units = || self.on.get(id).into_iter().flatten().filter(|x| *x != name);
        if !req.conflicts.is_empty() {
            if let Some((global, _)) = running().find(|(g, _)| any_matches(&req.conflicts, g)) {
                return Some(Refusal::ConflictsWithGlobal(global));
            }
            if let Some(x) = units().find(|x| any_matches(&req.conflicts, x)) {
                return Some(Refusal::ConflictsWith(x));
            }
        }
        if let Some((global, _)) = running().find(|(_, g)| any_matches(&g.conflicts, name)) {
            return Some(Refusal::ConflictsWithGlobal(global));
        }
        units()
            .find(|x| self.conflicts_with(x, name))
            .map(Refusal::ConflictsWith)
    }

    /// Records `name` as placed on the live machine `machine`.
    fn put(&mut self, name: &UnitName, machine: &MachineId) {
        self.placed.insert(name.clone(), machine.clone());
        self.on
            .entry(machine.clone())
            .or_default()
            .insert(name.clone());
    }

    /// Forgets where `name` is (placed or held).
    fn unput(&mut self, name: &UnitName) {
        let Some(machine) = self.placed.remove(name).or_else(|| self.held.remove(name)) else {
            return;
        };
        if let Some(units) = self.on.get_mut(&machine) {
            units.remove(name);
            if units.is_empty() {
                self.on.remove(&machine);
            }
        }
    }

    fn add_load(&mut self, machine: &MachineId, delta: isize) {
        let Some(host) = self.hosts.get_mut(machine) else {
            return;
        };
        self.by_load.remove(&(host.load, machine.clone()));
        host.load = host.load.saturating_add_signed(delta);
        self.by_load.insert((host.load, machine.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::refused_by;
    use proptest::prelude::*;

    proptest! {
        /// Refusals added one machine at a time, in any order, give the lines the whole plan
        /// words from all of them in machine order: a line each up to `REASON_LINES` machines,
        /// then a line per reason (most machines first, the first few named), then one for
        /// the reasons past `REASON_LINES`.
        #[test]
        fn refusals_added_in_any_order_are_worded_as_the_whole_plan_words_them(
            refusals in prop::collection::btree_map(any::<u16>(), 0u8..24, 0..60),
            seed in any::<u64>(),
        ) {
            let id = |n: u16| {
                // Machines that share a short id, too.
                MachineId::parse(&format!("{:08x}{:024x}", n / 4, n)).expect("valid id")
            };
            let reason = |k: u8| format!("reason {k}");
            let whole = refused_by(
                refusals.iter().map(|(&n, &k)| (id(n).short().to_string(), reason(k))),
            );
            let mut shuffled: Vec<(&u16, &u8)> = refusals.iter().collect();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            let mut added = Refusals::default();
            for (&n, &k) in shuffled {
                added.add(&id(n), reason(k));
            }
            prop_assert_eq!(added.lines(), whole);
        }
    }
}
