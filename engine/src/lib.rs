//! The engine: one per cluster, elected in etcd, places units on machines.
//!
//! Every fleetd runs [`run`]. The one that wins the leader key reads units, machines, members
//! and placements once and keeps them from a watch's events ([`EngineView`]); the others
//! watch only the leader key. The leader loops on `plan(view) -> placement changes`
//! ([`plan::plan_and_memo`], pure, or from its memo for a burst of changes it can decide
//! alone, [`plan::Memo`]) and writes the changes in batched transactions fenced on its
//! leadership, applying them to its view as etcd accepts them.
//!
//! A member whose lease is gone keeps what was placed on it (**held**: neither moved nor
//! placed again) until the engine declares it dead, which the majority protocol of
//! `fleet-quorum` allows only once a majority of the members renewed their leases on request
//! after the absence was seen, and a wait for the lost machine to have fenced itself has
//! passed ([`fleet_quorum::Verdicts`]): the stop allowance if each member of that majority
//! also says it answered no peer's question lately (the lost machine then holds no
//! confirmation from any of them), else the whole wait.
//!
//! What the leader decided is recorded as events ([`Recorder`]): each unit placed and why
//! there, each unit that cannot be placed when its reasons change, each machine declared
//! dead; only once etcd accepted the change. The leader also trims the events to their bound.

pub mod plan;
pub mod update;
mod updates;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::RandomState;
use std::sync::Arc;
use std::time::Duration;

use fleet_quorum::{Round, Timing, Verdicts};
use fleet_registry::{
    ClusterDigest, EngineView, Event, EventKind, JobState, Leadership, MachineId, PlacementOp,
    PresenceStatus, Recorder, Registry, Renewal, ViewChanges, Witness,
};
use fleet_units::UnitName;
use tokio::sync::watch;
use tokio::time::Instant;

/// Every how many reconcile intervals the leader reads the whole cluster again instead of
/// trusting its view (60 s with the default interval): rare, since a read costs the cluster's
/// size.
pub const FULL_READ_EVERY: u32 = 30;

/// How long the engine waits for its watch to bring a declaration's changes before it reads
/// the cluster again instead.
const DECLARATION_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct EngineConfig {
    /// How often the leader plans again with nothing changed (fleet's
    /// `engine_reconcile_interval`); every [`FULL_READ_EVERY`] of them it reads the cluster
    /// from etcd again, the safety net behind its view's watch.
    pub reconcile_interval: Duration,
    /// The majority protocol's bounds (from the machines' lease TTL).
    pub timing: Timing,
    /// How to ask the members to renew their leases. Without one (for machines that ask no
    /// peers anything, as the simulation's), every member holding a lease counts as renewed
    /// and quiet: a member whose lease is gone is declared dead once the stop allowance has
    /// passed, while a majority of members hold leases.
    pub witness: Option<Arc<dyn Witness>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            reconcile_interval: Duration::from_secs(2),
            timing: Timing::for_ttl(Duration::from_secs(30), Duration::from_secs(1)),
            witness: None,
        }
    }
}

/// Campaigns for the engine leadership on this machine's lease and leads while it holds it.
/// Runs until the task is dropped.
pub async fn run(
    registry: Registry,
    machine: MachineId,
    mut presence: watch::Receiver<PresenceStatus>,
    config: EngineConfig,
) {
    let events = Recorder::start(registry.clone(), machine.clone());
    loop {
        let status = *presence.borrow_and_update();
        let lease = match status {
            PresenceStatus::Alive { lease } => lease,
            PresenceStatus::Fenced => {
                let _ = presence.changed().await;
                continue;
            }
        };
        match registry.campaign(&machine, lease).await {
            Ok(Some(leadership)) => {
                tracing::info!(revision = leadership.revision, "leading the engine");
                lead(&registry, leadership, &mut presence, &config, &events).await;
                tracing::info!("no longer leading the engine");
            }
            Ok(None) => follow(&registry, &mut presence, &config).await,
            Err(e) => {
                tracing::warn!(error = %e, "engine cannot campaign");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What `work` gives, and how long it took.
async fn timed<T>(work: impl std::future::Future<Output = T>) -> (T, std::time::Duration) {
    let started = std::time::Instant::now();
    (work.await, started.elapsed())
}

/// Logs a read of the whole cluster: at `info` the first of a leadership (what a new leader
/// waits for), else at `debug` (the periodic reads).
fn log_read(view: &EngineView, took: std::time::Duration, first: bool) {
    let snapshot = view.snapshot();
    let (units, machines, placements) = (
        snapshot.units.len(),
        snapshot.machines.len(),
        snapshot.placements.len(),
    );
    let seconds = took.as_secs_f64();
    if first {
        tracing::info!(units, machines, placements, seconds, "read the cluster");
    } else {
        tracing::debug!(units, machines, placements, seconds, "read the cluster");
    }
}

/// Waits until the leader key changes (or the resync period passes) without leading.
async fn follow(
    registry: &Registry,
    presence: &mut watch::Receiver<PresenceStatus>,
    config: &EngineConfig,
) {
    let mut changes = match registry.leader_changes().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "engine follower cannot watch the leader key");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    tokio::select! {
        _ = changes.next() => {}
        _ = presence.changed() => {}
        _ = tokio::time::sleep(config.reconcile_interval * 5) => {}
    }
}

/// Leads until leadership or the lease is lost. Meanwhile `fleet_engine_leader` is 1; each
/// reconciliation that completes is timed (`fleet_engine_reconcile_seconds`), the placements
/// it writes are counted (`fleet_engine_placements_total`), and so are its plans of the whole
/// cluster (`fleet_engine_whole_plans_total`).
async fn lead(
    registry: &Registry,
    leadership: Leadership,
    presence: &mut watch::Receiver<PresenceStatus>,
    config: &EngineConfig,
    events: &Recorder,
) {
    let _leading = fleet_telemetry::LeaderGuard::new();
    let _trimming = events.trimming();
    let origin = Instant::now();
    // Vanished members are named by their registration and reading: id and the revision their
    // judgement rests on (`EngineSnapshot::judged`).
    let mut verdicts: Verdicts<(MachineId, i64)> = Verdicts::new(config.timing);
    // Whether the last round found no majority (logged when that changes).
    let mut short = false;
    // What the engine decides from: read once, then kept from the watch's events. Dropped to
    // be read again after an error.
    let mut view: Option<EngineView> = None;
    // What the last plan of the whole cluster knew of the cluster its ops leave, while the
    // cluster is as it left it: the bursts of changes to plain units (releases by the
    // machines that stopped them included), and of machines coming and going, since are
    // planned from it alone. Dropped with the view (but kept through a periodic read that
    // finds the cluster as the view had it) and whenever a burst needs the whole plan.
    let mut memo: Option<plan::Memo> = None;
    // Whether the last whole plan changed nothing and the view has not changed since:
    // planning again would give the same nothing. Only useful when such a plan leaves no
    // memo (a unit held on a member whose lease is gone is placed on another machine too): a
    // memo says the same. While a lost machine waits to be declared dead, the engine looks
    // again every half second.
    let mut settled = false;
    // Placements etcd keeps refusing (say it is out of space) are tried again less and less
    // often, up to every few seconds, and logged when the reason changes.
    let mut refused = Backoff::default();
    let mut read_at = Instant::now();
    // The digest of the view a periodic read replaces, with what that view had not reported
    // yet, until the read is done: if it finds the same cluster, the memo (and `settled`)
    // still hold, and what was not reported is still to be planned.
    let keys = RandomState::new();
    let mut previous: Option<(ClusterDigest, ViewChanges)> = None;
    // The first read and whole plan of a leadership are logged with their times: what a
    // new leader takes before it places anything.
    let (mut first_read, mut first_plan) = (true, true);
    loop {
        let started = std::time::Instant::now();
        if read_at.elapsed() >= config.reconcile_interval * FULL_READ_EVERY {
            if let Some(mut old) = view.take() {
                previous = old
                    .catch_up()
                    .is_ok()
                    .then(|| (old.digest(&keys), old.take_changes()));
            }
        }
        let view_now = match view.as_mut() {
            Some(v) => v,
            None => match timed(registry.engine_view()).await {
                (Ok(mut v), took) => {
                    fleet_telemetry::ENGINE_CLUSTER_READS.inc();
                    log_read(&v, took, first_read);
                    first_read = false;
                    read_at = Instant::now();
                    match previous.take() {
                        Some((digest, unreported)) if v.digest(&keys) == digest => {
                            v.carry(unreported);
                        }
                        _ => {
                            memo = None;
                            settled = false;
                        }
                    }
                    view.insert(v)
                }
                (Err(e), _) => {
                    tracing::warn!(error = %e, "engine cannot read the cluster state");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if matches!(*presence.borrow(), PresenceStatus::Fenced) {
                        return;
                    }
                    continue;
                }
            },
        };
        let snapshot = view_now.snapshot();
        if snapshot.leader != Some(leadership) {
            return;
        }
        let absent: BTreeSet<(MachineId, i64)> = view_now
            .absent_members()
            .map(|(id, revision)| (id.clone(), revision))
            .collect();
        verdicts.observe(origin.elapsed(), absent.iter().cloned());
        if verdicts.needs_round() {
            let sent = origin.elapsed();
            let gone: HashSet<&MachineId> = absent.iter().map(|(id, _)| id).collect();
            let live: Vec<_> = snapshot
                .members
                .iter()
                .map(|e| &e.member.machine)
                .filter(|m| !gone.contains(&m.id))
                .cloned()
                .collect();
            let renewed: Vec<Renewal> = match &config.witness {
                Some(w) => w.renew_now(live, config.timing.peer_timeout).await,
                None => live
                    .into_iter()
                    .map(|m| Renewal {
                        machine: m.id,
                        quiet_for: Some(Duration::MAX),
                    })
                    .collect(),
            };
            // A round that took longer than its bound (this task stalled, say) counts for
            // nothing: a renewal later than `peer_timeout` would eat into the stop allowance.
            let in_time = origin.elapsed().saturating_sub(sent) <= config.timing.peer_timeout;
            // By machine, once: each vanished member is judged over all of them.
            let mut quiet_for: HashMap<&MachineId, Option<Duration>> = HashMap::new();
            for r in &renewed {
                quiet_for.entry(&r.machine).or_insert(r.quiet_for);
            }
            // Vanished members that read the members alike are judged alike: once for each
            // reading (a rack lost together read the same).
            let members: &EngineView = view_now;
            let mut by_reading: HashMap<fleet_registry::MemberReading, Round> = HashMap::new();
            let majority = in_time
                && verdicts.round_with(sent, |(id, _)| {
                    let Some(entry) = members.member(id) else {
                        return Round::NoMajority;
                    };
                    let reading = snapshot.judged(entry).reading;
                    *by_reading.entry(reading).or_insert_with(|| {
                        majority_for(
                            &snapshot.members,
                            &reading,
                            &quiet_for,
                            config.timing.quiet_after(),
                        )
                    })
                });
            if !majority && !short {
                tracing::warn!(
                    renewed = renewed.len(),
                    members = snapshot.members.len(),
                    missing = absent.len(),
                    "no majority of the machines reaches etcd: units of lost machines stay where they are"
                );
            } else if majority && short {
                tracing::info!(
                    renewed = renewed.len(),
                    members = snapshot.members.len(),
                    "a majority of the machines reaches etcd again"
                );
            }
            short = !majority;
        }
        // The machines declared dead now, as judged.
        let mut declared = Vec::new();
        for ((machine, judged), round) in verdicts.dead(origin.elapsed()) {
            let units: Vec<UnitName> = view_now.placed_on(&machine).cloned().collect();
            match registry
                .declare_dead(leadership, &machine, judged, &units)
                .await
            {
                Ok(true) => {
                    let which = if round == Round::Quiet {
                        "none of them lately asked by a machine whose renewals failed"
                    } else {
                        "not all of them known to be unasked lately by a machine whose renewals \
                         failed"
                    };
                    // `dead` yields only rounds that found a majority, each with its wait.
                    let wait = config.timing.wait(round).unwrap_or_default();
                    events.record(
                        Event::new(
                            EventKind::DeclaredDead,
                            format!(
                                "its lease is gone; a majority of the machines renewed theirs, \
                                 {which} (waited {:.1} s for it to stop its units): {} units \
                                 released to be placed elsewhere",
                                wait.as_secs_f64(),
                                units.len()
                            ),
                        )
                        .machine(&machine),
                    );
                    declared.push((machine, judged));
                }
                Ok(false) => tracing::info!(
                    machine = %machine,
                    "machine registered again, recorded another reading of the members or was removed by hand: judged again"
                ),
                Err(fleet_registry::Error::NotLeader) => return,
                Err(e) => {
                    tracing::warn!(machine = %machine, error = %e, "cannot declare machine dead yet")
                }
            }
        }
        if !declared.is_empty() {
            // Planned again once the view has the declarations' changes from the watch (the
            // member records gone, nothing placed or stopping on those machines), which takes
            // milliseconds; read again if the watch does not bring them soon. Reading a large
            // cluster again took longer than the rest of a failover's work together.
            let caught_up = tokio::time::timeout(DECLARATION_PATIENCE, async {
                view_now.catch_up()?;
                while !declarations_seen(view_now, &declared) {
                    view_now.changed().await?;
                }
                Ok::<_, fleet_registry::Error>(())
            })
            .await;
            if !matches!(caught_up, Ok(Ok(()))) {
                view = None;
            }
            continue;
        }
        let changes = view_now.take_changes();
        let read = &*view_now;
        let snapshot = read.snapshot();
        // A burst of changes to plain units (written, or released by the machines that
        // stopped them), and machines joining, registering again, losing their lease,
        // declared dead or coming back, on a cluster the last whole plan settled: planned
        // from the memo, in time that does not grow with the cluster.
        let from_memo = match memo.as_mut() {
            // A rolling update's step counts only while a machine drains.
            Some(m) if !(changes.other || (changes.updates && m.drains())) => {
                m.plan(&changes.units, &changes.machines, read)
            }
            _ => None,
        };
        let unchanged = changes.units.is_empty()
            && changes.machines.is_empty()
            && !changes.updates
            && !changes.other;
        if !unchanged {
            settled = false;
        }
        let (ops, why_placed) = match from_memo {
            Some(p) => (p.ops, p.placed),
            None if settled => (Vec::new(), BTreeMap::new()),
            None => {
                fleet_telemetry::ENGINE_WHOLE_PLANS.inc();
                let planning = std::time::Instant::now();
                // Units of members whose lease is gone are held where they are.
                let (whole, after) = plan::plan_and_memo(snapshot);
                if std::mem::take(&mut first_plan) {
                    tracing::info!(
                        seconds = planning.elapsed().as_secs_f64(),
                        changes = whole.ops.len(),
                        "planned the whole cluster"
                    );
                }
                // The cluster once the ops below are applied (if they fail, the view is read
                // again, and the memo dropped with it).
                memo = after;
                for u in &whole.unplaceable {
                    tracing::debug!(unit = %u.unit, reasons = ?u.reasons, "unit cannot be placed");
                }
                let mut ops = whole.ops;
                ops.extend(plan::unplaceable_ops(
                    &snapshot.unplaceable,
                    &whole.unplaceable,
                ));
                settled = ops.is_empty();
                (ops, whole.placed)
            }
        };
        if !ops.is_empty() {
            tracing::debug!(changes = ops.len(), "applying placements");
            match registry.apply_placements(leadership, &ops).await {
                Ok(revisions) => {
                    refused = Backoff::default();
                    view_now.applied(&ops, &revisions);
                    ops.iter()
                        .for_each(|op| report(events, op, &why_placed, view_now));
                    let placed = ops
                        .iter()
                        .filter(|op| matches!(op, PlacementOp::Put { .. }))
                        .count();
                    fleet_telemetry::ENGINE_PLACEMENTS.add(placed as u64);
                }
                Err(fleet_registry::Error::NotLeader) => return,
                Err(e) => {
                    // E.g. etcd out of space, a timeout, or a placement refused because the
                    // unit is placed elsewhere already (`Error::Conflict`: a write of ours
                    // that timed out and was applied late). Some batches may have been
                    // written, and the memo counts on them all: read the cluster again. A
                    // write still on its way cannot run a unit twice: etcd places a unit on
                    // one machine at most (`apply_placements`). (One that writes a unit's
                    // placement again where it was may bring it back there for a while; the
                    // next plan takes it off again.)
                    let pause = refused.failed(&e);
                    tokio::time::sleep(pause).await;
                    view = None;
                    continue;
                }
            }
        }
        fleet_telemetry::ENGINE_RECONCILE.observe_duration(started.elapsed());
        // Rolling updates: a step of each that is not over, looking at its units again soon.
        let snapshot = view_now.snapshot();
        let updating = updates::drive_all(
            registry,
            leadership,
            &snapshot.updates,
            &snapshot.stopping,
            events,
        )
        .await;
        if let Err(fleet_registry::Error::NotLeader) = updating {
            return;
        }
        // Look again when a lost machine is due, or soon while no majority answers.
        let now = origin.elapsed();
        let due = match verdicts.next_due(now) {
            Some(at) => at - now,
            None if verdicts.needs_round() => Duration::from_millis(500),
            None => config.reconcile_interval,
        };
        let due = match updating {
            Ok(true) | Err(_) => due.min(updates::TICK),
            Ok(false) => due,
        };
        tokio::select! {
            result = view_now.changed() => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "engine watch ended; reading the cluster again");
                    view = None;
                }
            }
            _ = presence.changed() => {
                if matches!(*presence.borrow(), PresenceStatus::Fenced) {
                    return;
                }
            }
            _ = tokio::time::sleep(due.min(config.reconcile_interval)) => {}
        }
    }
}

/// The memo looks the cluster up in the view.
impl plan::Cluster for EngineView {
    fn unit(&self, name: &UnitName) -> Option<&fleet_registry::Unit> {
        EngineView::unit(self, name)
    }

    fn placement(
        &self,
        machine: &MachineId,
        name: &UnitName,
    ) -> Option<&fleet_registry::Placement> {
        EngineView::placement(self, machine, name)
    }

    fn machine(&self, id: &MachineId) -> Option<&fleet_registry::MachineEntry> {
        EngineView::machine(self, id)
    }

    fn is_member(&self, id: &MachineId) -> bool {
        EngineView::is_member(self, id)
    }

    fn is_draining(&self, id: &MachineId) -> bool {
        self.snapshot().draining.contains(id)
    }

    fn is_stopping(&self, machine: &MachineId, name: &UnitName) -> bool {
        self.snapshot()
            .stopping
            .contains(&(machine.clone(), name.clone()))
    }

    fn reasons(&self, name: &UnitName) -> Option<&[String]> {
        self.snapshot().unplaceable.get(name).map(Vec::as_slice)
    }
}

/// What [`declarations_seen`] looks up: the engine's view.
trait Declarations {
    /// The revision member `id`'s record was last written at, if it is a member.
    fn record_revision(&self, id: &MachineId) -> Option<i64>;
    /// Whether a unit is placed on `id`.
    fn has_placements(&self, id: &MachineId) -> bool;
    fn stopping(&self) -> &BTreeSet<(MachineId, UnitName)>;
}

impl Declarations for EngineView {
    fn record_revision(&self, id: &MachineId) -> Option<i64> {
        self.member(id).map(|e| e.mod_revision)
    }

    fn has_placements(&self, id: &MachineId) -> bool {
        self.placed_on(id).next().is_some()
    }

    fn stopping(&self) -> &BTreeSet<(MachineId, UnitName)> {
        &self.snapshot().stopping
    }
}

/// Whether `view` shows every one of these machines declared dead: its member record (as
/// judged: written no later than the judgement's revision) gone, and nothing placed or
/// stopping on it. (Its reading goes with the record, but the watch may bring one before the
/// other.) In time that grows with the machines
/// declared and the stopping records, not with the cluster (a rack declared at once).
fn declarations_seen(view: &impl Declarations, declared: &[(MachineId, i64)]) -> bool {
    let stopping: HashSet<&MachineId> = view.stopping().iter().map(|(m, _)| m).collect();
    declared.iter().all(|(machine, judged)| {
        view.record_revision(machine).is_none_or(|r| r > *judged)
            && !view.has_placements(machine)
            && !stopping.contains(machine)
    })
}

/// Whether the members that renewed on request (`renewed`: for how long each had been
/// quiet, if it knows) make a majority for the vanished member `judged`, and whether the
/// quiet ones among them do (those that had answered no peer's question for `quiet_after`):
/// of the members it counts over (as it last recorded reading them), counting only members
/// that were members then (created no later than that reading).
fn majority_for(
    members: &[fleet_registry::MemberEntry],
    judged: &fleet_registry::MemberReading,
    renewed: &HashMap<&MachineId, Option<Duration>>,
    quiet_after: Duration,
) -> Round {
    let counted: Vec<Option<Duration>> = members
        .iter()
        .filter(|e| e.create_revision <= judged.seen_revision)
        .filter_map(|e| renewed.get(&e.member.machine.id).copied())
        .collect();
    let quiet = counted
        .iter()
        .filter(|q| q.is_some_and(|q| q >= quiet_after))
        .count();
    let majority = fleet_quorum::majority(judged.seen_members);
    if quiet >= majority {
        Round::Quiet
    } else if counted.len() >= majority {
        Round::Renewed
    } else {
        Round::NoMajority
    }
}

/// Reports a decision etcd accepted: a unit placed on a new machine (with why there, from
/// `placed`) and a unit's new reasons for not being placed as events, the rest as one line
/// each, with the unit and the machine as fields (journal fields `FLEET_UNIT`,
/// `FLEET_MACHINE` under systemd). Why a unit was taken off a machine is read from `view`:
/// applying placements changes neither its units nor its drains.
fn report(
    events: &Recorder,
    op: &PlacementOp,
    placed: &BTreeMap<UnitName, String>,
    view: &EngineView,
) {
    match op {
        PlacementOp::Put {
            machine, placement, ..
        } => match placed.get(&placement.name) {
            Some(why) => events.record(
                Event::new(EventKind::Placed, why.as_str())
                    .unit(&placement.name)
                    .machine(machine),
            ),
            None => tracing::info!(
                unit = %placement.name,
                machine = %machine,
                desired_state = %placement.desired_state,
                "placement updated"
            ),
        },
        PlacementOp::Delete { machine, name } => {
            tracing::info!(unit = %name, machine = %machine, "removed from machine")
        }
        PlacementOp::Move { machine, name } => {
            // No longer to run anywhere (destroyed, or unloaded), or to run elsewhere.
            let unwanted = view
                .unit(name)
                .is_none_or(|u| u.desired_state == JobState::Inactive);
            let message = if unwanted {
                "taken off this machine (destroyed or unloaded): stopped here".to_string()
            } else {
                let why = if view.snapshot().draining.contains(machine) {
                    "the machine is draining"
                } else {
                    "its rules no longer hold here"
                };
                format!("taken off this machine ({why}): placed again once stopped here")
            };
            events.record(
                Event::new(EventKind::Moved, message)
                    .unit(name)
                    .machine(machine),
            )
        }
        PlacementOp::SetUnplaceable { name, reasons } => {
            events.record(Event::new(EventKind::Unplaceable, reasons.join("; ")).unit(name))
        }
        PlacementOp::ClearUnplaceable { name } => {
            tracing::debug!(unit = %name, "unit no longer unplaceable")
        }
    }
}

/// How long the engine waits before planning again after etcd refused its placements: 200 ms,
/// doubling with each refusal in a row up to 5 s. A refusal is logged when its reason is new.
#[derive(Default)]
struct Backoff {
    refusals: u32,
    last: Option<String>,
}

impl Backoff {
    fn failed(&mut self, error: &fleet_registry::Error) -> Duration {
        let reason = error.to_string();
        if self.last.as_deref() != Some(reason.as_str()) {
            tracing::warn!(error = %reason, "placements not applied; planning again");
            self.last = Some(reason);
        }
        let pause = Duration::from_millis(200) * 2u32.saturating_pow(self.refusals.min(5));
        self.refusals = self.refusals.saturating_add(1);
        pause.min(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_five_seconds() {
        let mut backoff = Backoff::default();
        let e = fleet_registry::Error::Protocol("refused".into());
        let pauses: Vec<u64> = (0..8)
            .map(|_| backoff.failed(&e).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}

#[cfg(test)]
mod declaration_tests {
    use fleet_registry::{EngineSnapshot, JobState, Machine, Member, MemberEntry, Placement};
    use fleet_units::UnitName;

    use super::*;

    /// The snapshot looked up as the view does, by walking it.
    impl Declarations for EngineSnapshot {
        fn record_revision(&self, id: &MachineId) -> Option<i64> {
            self.members
                .iter()
                .find(|e| e.member.machine.id == *id)
                .map(|e| e.mod_revision)
        }

        fn has_placements(&self, id: &MachineId) -> bool {
            self.placements.iter().any(|(m, _)| m == id)
        }

        fn stopping(&self) -> &BTreeSet<(MachineId, UnitName)> {
            &self.stopping
        }
    }

    fn id(n: u8) -> MachineId {
        MachineId::parse(&format!("{n:032x}")).unwrap()
    }

    fn member(n: u8, revision: i64) -> MemberEntry {
        MemberEntry {
            member: Member {
                machine: Machine {
                    id: id(n),
                    public_ip: format!("10.0.0.{n}"),
                    metadata: Default::default(),
                    version: String::new(),
                    peer_address: None,
                },
                seen_revision: 1,
                seen_members: 2,
            },
            create_revision: revision,
            mod_revision: revision,
        }
    }

    #[test]
    fn a_declaration_is_seen_once_the_member_and_everything_on_the_machine_are_gone() {
        let web = UnitName::parse("web.service").unwrap();
        let placement = Placement {
            name: web.clone(),
            options: Vec::new(),
            desired_state: JobState::Launched,
        };
        // Judged at 8: its record written at 7, its reading at 8 (gone first, say: the record
        // still there is not seen gone).
        let declared = [(id(2), 8)];
        let mut snapshot = EngineSnapshot {
            members: vec![member(1, 5), member(2, 7)],
            placements: vec![(id(1), placement.clone()), (id(2), placement)],
            stopping: [(id(2), web.clone())].into(),
            ..EngineSnapshot::default()
        };
        assert!(!declarations_seen(&snapshot, &declared));
        snapshot.members.retain(|e| e.member.machine.id != id(2));
        assert!(
            !declarations_seen(&snapshot, &declared),
            "still placed there"
        );
        snapshot.placements.retain(|(m, _)| *m != id(2));
        assert!(
            !declarations_seen(&snapshot, &declared),
            "still stopping there"
        );
        snapshot.stopping.clear();
        assert!(declarations_seen(&snapshot, &declared));
        // Registered again meanwhile: another member record, not the one judged.
        snapshot.members.push(member(2, 9));
        assert!(declarations_seen(&snapshot, &declared));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: usize) -> MachineId {
        MachineId::parse(&format!("{i:032x}")).expect("32 hexadecimal digits")
    }

    /// Member `i`, created at revision `created`, having last read `seen` members at
    /// revision 10.
    fn member(i: usize, created: i64, seen: usize) -> fleet_registry::MemberEntry {
        fleet_registry::MemberEntry {
            member: fleet_registry::Member {
                machine: fleet_registry::Machine {
                    id: id(i),
                    public_ip: "10.0.0.1".into(),
                    metadata: Default::default(),
                    version: "test".into(),
                    peer_address: None,
                },
                seen_revision: 10,
                seen_members: seen,
            },
            create_revision: created,
            mod_revision: created,
        }
    }

    /// A vanished member is judged over the members it last read: a majority of them renewed
    /// (quiet or not) or not, members created after its reading not counted, whatever others
    /// renewed.
    #[test]
    fn a_vanished_member_is_judged_over_the_members_it_read() {
        let quiet_after = Duration::from_secs(3);
        let quiet = Some(Duration::from_secs(5));
        let loud = Some(Duration::from_secs(1));
        // Members 1..=5 as member 1 read them; 6 and 7 joined after.
        let members: Vec<_> = (1..=5)
            .map(|i| member(i, 5, 5))
            .chain((6..=7).map(|i| member(i, 20, 7)))
            .collect();
        let judge = |renewed: &[(usize, Option<Duration>)]| {
            let by_id: Vec<(MachineId, Option<Duration>)> =
                renewed.iter().map(|&(i, q)| (id(i), q)).collect();
            let renewed: HashMap<&MachineId, Option<Duration>> =
                by_id.iter().map(|(m, q)| (m, *q)).collect();
            majority_for(
                &members,
                &members[0].member.reading(),
                &renewed,
                quiet_after,
            )
        };
        assert_eq!(judge(&[(2, quiet), (3, quiet), (4, quiet)]), Round::Quiet);
        assert_eq!(judge(&[(2, quiet), (3, quiet), (4, loud)]), Round::Renewed);
        assert_eq!(judge(&[(2, quiet), (3, None), (4, loud)]), Round::Renewed);
        assert_eq!(judge(&[(2, quiet), (3, quiet)]), Round::NoMajority);
        // Those that joined after its reading do not count.
        assert_eq!(
            judge(&[(2, quiet), (3, quiet), (6, quiet), (7, quiet)]),
            Round::NoMajority
        );
        // Nor does a machine that is no member.
        assert_eq!(
            judge(&[(2, quiet), (3, quiet), (9, quiet)]),
            Round::NoMajority
        );
    }

    /// A member's reading (`readings/<id>`) is what it is judged over, unless its record was
    /// written since, and the revision its judgement rests on is the later of its record's
    /// and its reading's. The record alone of a member that keeps its readings apart (written
    /// with `seen_revision` 0 when it registers) judges it over no one: an engine that reads
    /// readings from the record (an older fleetd) can never declare it dead. An unreadable
    /// record is judged by itself, whatever its reading says.
    #[test]
    fn a_member_is_judged_over_its_reading() {
        let quiet = Some(Duration::from_secs(5));
        let mut record = member(1, 5, 5);
        record.member.seen_revision = 0;
        let members: Vec<_> = std::iter::once(record.clone())
            .chain((2..=5).map(|i| member(i, 5, 5)))
            .collect();
        let renewed: Vec<(MachineId, Option<Duration>)> = (2..=5).map(|i| (id(i), quiet)).collect();
        let renewed: HashMap<&MachineId, Option<Duration>> =
            renewed.iter().map(|(m, q)| (m, *q)).collect();
        let mut snapshot = fleet_registry::EngineSnapshot {
            members: members.clone(),
            ..Default::default()
        };
        let judged = snapshot.judged(&record);
        assert_eq!(judged.revision, 5);
        let round = |reading| majority_for(&members, &reading, &renewed, Duration::from_secs(3));
        assert_eq!(round(judged.reading), Round::NoMajority);
        let reading = fleet_registry::MemberReading {
            seen_revision: 10,
            seen_members: 5,
        };
        snapshot.readings.insert(
            id(1),
            fleet_registry::ReadingEntry {
                reading,
                mod_revision: 12,
            },
        );
        let judged = snapshot.judged(&record);
        assert_eq!((judged.reading, judged.revision), (reading, 12));
        assert_eq!(round(judged.reading), Round::Quiet);
        // The record written since (an older fleetd, which records its readings there):
        // judged over the record's.
        let mut older = member(1, 5, 4);
        older.mod_revision = 14;
        let judged = snapshot.judged(&older);
        assert_eq!(
            (judged.reading, judged.revision),
            (older.member.reading(), 14)
        );
        // A record that cannot be read (as `member_entry_of` gives it).
        record.member.seen_members = usize::MAX;
        let judged = snapshot.judged(&record);
        assert_eq!(judged.reading.seen_members, usize::MAX);
        assert_eq!(round(judged.reading), Round::NoMajority);
    }
}
