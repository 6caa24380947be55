//! Views kept up to date from a watch: what the engine and an agent decide from, read once and
//! then changed event by event, instead of read again on every wake-up.
//!
//! A view opens a watch of its prefixes from now (waiting until etcd has created it), then is
//! read in one linearizable transaction at revision R, and applies the watch's changes after
//! R (those up to R are in the read): each change is applied to the one item its key names, in
//! O(1). Watching from R + 1 after the read would do the same, but etcd must catch such a
//! watch up from its history under the lock its writes take (`watch.rs`). The items are
//! the lists of an [`EngineSnapshot`] or [`AgentSnapshot`], kept in no particular order (their
//! readers do not depend on it), each with an index from key to position.
//!
//! Changes under one prefix arrive in the order etcd made them; changes under different
//! prefixes may arrive out of order between them, so a view is not a cut at one revision.
//! Nothing depends on that: every write that needs a condition carries it in its transaction
//! (the leadership, a machine's absence), as with a re-read, which was stale the moment it
//! was answered.
//!
//! The engine applies its own writes to its view as soon as etcd accepted them
//! ([`EngineView::applied`]), so that it does not plan again from a view without them. The
//! watch reports the same writes later; a key written here remembers the revision of the
//! write until the watch catches up with it, and anything older the watch reports for that key
//! meanwhile is ignored.
//!
//! An error (the watch ended, etcd unreachable, history compacted, a record that cannot be
//! decoded) leaves a view unusable: read a new one. An agent's view is also read again
//! periodically, keeping its watch (`AgentView::refresh`), and a failed read again leaves it
//! as its watch keeps it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use etcd_client::KeyValue;
use fleet_units::UnitName;

use crate::update::{Lists, Machines};
use crate::watch::{Change, Changes};
use crate::{
    decode, key_machine_id, member_entry, placement_machine, AgentSnapshot, EngineSnapshot, Error,
    LayoutError, Leadership, Machine, MachineEntry, MachineId, MemberEntry, Placement, PlacementOp,
    Registry, Result, StoredUpdate, Unit,
};

/// Positions of the items of one list by their key, so that a change finds its item at once.
/// A deletion moves the last item into the hole (`swap_remove`).
#[derive(Debug, Default)]
struct Slots {
    at: HashMap<String, usize>,
    keys: Vec<String>,
}

impl Slots {
    fn new(keys: impl IntoIterator<Item = String>) -> Slots {
        let keys: Vec<String> = keys.into_iter().collect();
        let at = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        Slots { at, keys }
    }

    fn put<T>(&mut self, list: &mut Vec<T>, key: &str, item: T) {
        match self.at.get(key) {
            Some(&i) => list[i] = item,
            None => {
                self.at.insert(key.to_string(), list.len());
                self.keys.push(key.to_string());
                list.push(item);
            }
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.at.contains_key(key)
    }

    fn delete<T>(&mut self, list: &mut Vec<T>, key: &str) {
        let Some(i) = self.at.remove(key) else {
            return;
        };
        list.swap_remove(i);
        self.keys.swap_remove(i);
        if let Some(moved) = self.keys.get(i) {
            self.at.insert(moved.clone(), i);
        }
    }
}

/// The keys this view wrote itself, with the revision of each write, until the watch reports
/// them: see the module documentation.
#[derive(Debug, Default)]
struct Own {
    written: HashMap<String, i64>,
}

/// What the watch reports of a key, against what this view wrote there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    /// Older than this view's own write: ignored.
    Stale,
    /// This view's own write, already applied.
    Own,
    /// Someone else's change.
    New,
}

impl Own {
    /// What the watch's `change` of `key` is, against what this view wrote there.
    fn report(&mut self, key: &str, change: &KeyValue) -> Report {
        match self.written.get(key) {
            Some(&revision) if change.mod_revision() < revision => Report::Stale,
            Some(&revision) => {
                self.written.remove(key);
                if change.mod_revision() == revision {
                    Report::Own
                } else {
                    Report::New
                }
            }
            None => Report::New,
        }
    }
}

/// What others changed in an [`EngineView`] since [`EngineView::take_changes`] was last
/// called: the units and the machines by name, and whether anything else changed. The
/// engine's own writes, applied by [`EngineView::applied`], do not count, nor does the
/// watch's report of them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ViewChanges {
    /// Units written or deleted, or whose `stopping/` record some machine released (or a
    /// declaration removed).
    pub units: BTreeSet<UnitName>,
    /// Machines whose machine record was written or deleted, whose member record was
    /// created (a registration) or deleted (declared dead), or that lost a placement while
    /// they had no machine record (a declaration removes a dead machine's): see
    /// [`EngineView::machine`], [`EngineView::is_member`] and [`EngineView::placement`].
    pub machines: BTreeSet<MachineId>,
    /// Rolling updates written or deleted (the engine's own steps included): they count in
    /// a plan only for drains (how many instances of a template are down).
    pub updates: bool,
    /// Anything else (not a member's new reading of the members): other placement changes,
    /// the leader key, unplaceable reasons, stopping records written, drains.
    pub other: bool,
}

/// A digest of the cluster an [`EngineView`] holds: see [`EngineView::digest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterDigest([u64; 2]);

/// The leading engine's view of the cluster: units, machines, members, placements, the leader
/// key and the reasons units cannot be placed.
pub struct EngineView {
    registry: Registry,
    snapshot: EngineSnapshot,
    units: Slots,
    machines: Slots,
    members: Slots,
    placements: Slots,
    own: Own,
    changes: Changes,
    changed: ViewChanges,
    /// The members without a machine record (whose lease is gone), with the revision their
    /// judgement rests on ([`fleet_registry::Judged`]): kept as machine and member records
    /// and readings change.
    absent: BTreeMap<MachineId, i64>,
    /// The units placed on each machine: kept with the placements.
    on: HashMap<MachineId, BTreeSet<UnitName>>,
    /// Machine lists of listed updates created since the view was read, until their record
    /// is read (see `update/record.rs`).
    update_lists: Lists,
    /// Records of listed updates whose machine lists have not all come yet, by id: the watch
    /// reports each prefix apart, so a record may come before the lists written with it.
    updates_waiting: HashMap<String, KeyValue>,
}

/// Reads update `id`'s record `kv` into `updates` as `Registry::engine_updates` reads it: a
/// listed one that is over without its machines; one written again names the machines its
/// earlier version did; a new one takes its machine lists from `lists` (then forgotten), or
/// waits for them in `waiting`.
fn read_update(
    registry: &Registry,
    updates: &mut BTreeMap<String, StoredUpdate>,
    (lists, waiting): (&mut Lists, &mut HashMap<String, KeyValue>),
    id: &str,
    kv: KeyValue,
) {
    let earlier = updates.get(id).map(|u| &u.update);
    match registry.stored_update(&kv, Machines::WhileRunning(lists, earlier)) {
        Ok(update) => {
            lists.forget(id);
            waiting.remove(id);
            updates.insert(id.to_string(), update);
        }
        Err(Error::Layout {
            source: LayoutError::Lists { .. },
            ..
        }) => {
            waiting.insert(id.to_string(), kv);
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an update record that cannot be read");
            updates.remove(id);
            waiting.remove(id);
        }
    }
}

/// Puts a placement under `key` into an engine view's list and its index by machine.
fn put_placement(
    slots: &mut Slots,
    list: &mut Vec<(MachineId, Placement)>,
    on: &mut HashMap<MachineId, BTreeSet<UnitName>>,
    key: &str,
    item: (MachineId, Placement),
) {
    on.entry(item.0.clone())
        .or_default()
        .insert(item.1.name.clone());
    slots.put(list, key, item);
}

/// Deletes the placement under `key` from an engine view's list and its index by machine.
fn delete_placement(
    slots: &mut Slots,
    list: &mut Vec<(MachineId, Placement)>,
    on: &mut HashMap<MachineId, BTreeSet<UnitName>>,
    key: &str,
) {
    if let Some((machine, placement)) = slots.at.get(key).and_then(|&i| list.get(i)) {
        if let Some(names) = on.get_mut(machine) {
            names.remove(&placement.name);
            if names.is_empty() {
                on.remove(machine);
            }
        }
    }
    slots.delete(list, key);
}

impl EngineView {
    pub(crate) async fn open(registry: &Registry) -> Result<EngineView> {
        // The watch first, from now, then the read: see `Registry::watch_now`.
        let mut changes = registry
            .watch_now(&registry.engine_watch_prefixes())
            .await?;
        let snapshot = registry.engine_snapshot().await?;
        changes.skip_through(snapshot.revision);
        let units = Slots::new(snapshot.units.iter().map(|u| registry.unit_key(&u.name)));
        let machines = Slots::new(
            snapshot
                .machines
                .iter()
                .map(|m| registry.machine_key(&m.machine.id)),
        );
        let members = Slots::new(
            snapshot
                .members
                .iter()
                .map(|m| registry.member_key(&m.member.machine.id)),
        );
        let placements = Slots::new(
            snapshot
                .placements
                .iter()
                .map(|(m, p)| registry.placement_key(m, &p.name)),
        );
        let mut view = EngineView {
            registry: registry.clone(),
            snapshot,
            units,
            machines,
            members,
            placements,
            own: Own::default(),
            changes,
            changed: ViewChanges::default(),
            absent: BTreeMap::new(),
            on: HashMap::new(),
            update_lists: Lists::default(),
            updates_waiting: HashMap::new(),
        };
        for (machine, placement) in &view.snapshot.placements {
            view.on
                .entry(machine.clone())
                .or_default()
                .insert(placement.name.clone());
        }
        let ids: Vec<MachineId> = view
            .snapshot
            .members
            .iter()
            .map(|e| e.member.machine.id.clone())
            .collect();
        for id in &ids {
            view.recheck_absent(id);
        }
        Ok(view)
    }

    /// The members whose lease is gone (registered and not declared dead, without a machine
    /// record), each with the revision its judgement rests on ([`EngineSnapshot::judged`]),
    /// in order of id: in time that grows with them, not with the cluster.
    pub fn absent_members(&self) -> impl Iterator<Item = (&MachineId, i64)> {
        self.absent.iter().map(|(id, &revision)| (id, revision))
    }

    /// The units placed on `machine`, in order of name.
    pub fn placed_on(&self, machine: &MachineId) -> impl Iterator<Item = &UnitName> {
        self.on.get(machine).into_iter().flatten()
    }

    /// The revision member `id`'s judgement rests on (its record's or its reading's, the
    /// later: [`EngineSnapshot::judged`]), if it is a member.
    pub fn member_revision(&self, id: &MachineId) -> Option<i64> {
        self.member(id).map(|e| self.snapshot.judged(e).revision)
    }

    /// Member `id`'s record, if it is a member.
    pub fn member(&self, id: &MachineId) -> Option<&MemberEntry> {
        let i = *self.members.at.get(&self.registry.member_key(id))?;
        self.snapshot.members.get(i)
    }

    /// Whether machine `id` is absent now, after a change of its machine or member record.
    fn recheck_absent(&mut self, id: &MachineId) {
        let revision = self.member_revision(id);
        let live = self.machines.contains(&self.registry.machine_key(id));
        match revision {
            Some(revision) if !live => {
                self.absent.insert(id.clone(), revision);
            }
            _ => {
                self.absent.remove(id);
            }
        }
    }

    /// The cluster as far as this view knows. Its `revision` is the newest the view has seen.
    pub fn snapshot(&self) -> &EngineSnapshot {
        &self.snapshot
    }

    /// What others changed since the last call (since the view was read, the first time).
    pub fn take_changes(&mut self) -> ViewChanges {
        std::mem::take(&mut self.changed)
    }

    /// A digest of the cluster this view holds: of everything the engine plans from but the
    /// revision, whatever the order of the lists, under `keys` (the same for the digests
    /// compared). Two views whose digests are equal hold the same cluster (but with odds of
    /// about 2^-128), and what was decided from one holds for the other. It hashes every
    /// entry twice: about 40 ms for 100,000 units and their placements (release build).
    pub fn digest(&self, keys: &RandomState) -> ClusterDigest {
        digest_of(&self.snapshot, keys)
    }

    /// Takes on, as its own, the changes an older view of the same cluster (an equal
    /// [`digest`](Self::digest)) had not reported yet: they were read into both, and whoever
    /// planned from the older view has not seen them.
    pub fn carry(&mut self, older: ViewChanges) {
        self.changed.units.extend(older.units);
        self.changed.machines.extend(older.machines);
        self.changed.updates |= older.updates;
        self.changed.other |= older.other;
    }

    /// How many of this view's own writes the watch has not reported yet.
    pub fn unreported_writes(&self) -> usize {
        self.own.written.len()
    }

    /// The unit called `name`, if there is one.
    pub fn unit(&self, name: &UnitName) -> Option<&Unit> {
        let i = *self.units.at.get(&self.registry.unit_key(name))?;
        self.snapshot.units.get(i)
    }

    /// The placement of `name` on `machine`, if there is one.
    pub fn placement(&self, machine: &MachineId, name: &UnitName) -> Option<&Placement> {
        let i = *self
            .placements
            .at
            .get(&self.registry.placement_key(machine, name))?;
        self.snapshot.placements.get(i).map(|(_, p)| p)
    }

    /// The live machine `id`'s record, if it has one.
    pub fn machine(&self, id: &MachineId) -> Option<&MachineEntry> {
        let i = *self.machines.at.get(&self.registry.machine_key(id))?;
        self.snapshot.machines.get(i)
    }

    /// Whether `id` is a member: registered and not declared dead, live or not.
    pub fn is_member(&self, id: &MachineId) -> bool {
        self.members.contains(&self.registry.member_key(id))
    }

    /// Waits for the next changes and applies them, with every change that has arrived
    /// meanwhile. Cancel-safe: nothing is taken from the watch until it can be applied.
    pub async fn changed(&mut self) -> Result<()> {
        let (revision, changes) = self.changes.next_changes().await?;
        self.apply_all(revision, changes)?;
        self.catch_up()
    }

    /// Applies the changes that have already arrived, without waiting.
    pub fn catch_up(&mut self) -> Result<()> {
        use futures_util::FutureExt;
        while let Some(next) = self.changes.next_changes().now_or_never() {
            let (revision, changes) = next?;
            self.apply_all(revision, changes)?;
        }
        Ok(())
    }

    /// Records placement changes etcd accepted from this engine: `revisions[i]` is the
    /// revision `ops[i]` was written at.
    pub fn applied(&mut self, ops: &[PlacementOp], revisions: &[i64]) {
        for (op, &revision) in ops.iter().zip(revisions) {
            let registry = self.registry.clone();
            match op {
                PlacementOp::Put { machine, placement } => {
                    let key = registry.placement_key(machine, &placement.name);
                    self.own.written.insert(key.clone(), revision);
                    put_placement(
                        &mut self.placements,
                        &mut self.snapshot.placements,
                        &mut self.on,
                        &key,
                        (machine.clone(), placement.clone()),
                    );
                }
                PlacementOp::Delete { machine, name } => {
                    let key = registry.placement_key(machine, name);
                    self.own.written.insert(key.clone(), revision);
                    delete_placement(
                        &mut self.placements,
                        &mut self.snapshot.placements,
                        &mut self.on,
                        &key,
                    );
                }
                PlacementOp::Move { machine, name } => {
                    let key = registry.placement_key(machine, name);
                    self.own.written.insert(key.clone(), revision);
                    delete_placement(
                        &mut self.placements,
                        &mut self.snapshot.placements,
                        &mut self.on,
                        &key,
                    );
                    let key = registry.stopping_key(machine, name);
                    self.own.written.insert(key, revision);
                    self.snapshot
                        .stopping
                        .insert((machine.clone(), name.clone()));
                }
                PlacementOp::SetUnplaceable { name, reasons } => {
                    let key = registry.unplaceable_key(name);
                    self.own.written.insert(key, revision);
                    self.snapshot
                        .unplaceable
                        .insert(name.clone(), reasons.clone());
                }
                PlacementOp::ClearUnplaceable { name } => {
                    let key = registry.unplaceable_key(name);
                    self.own.written.insert(key, revision);
                    self.snapshot.unplaceable.remove(name);
                }
            }
            self.snapshot.revision = self.snapshot.revision.max(revision);
        }
    }

    fn apply_all(&mut self, revision: i64, changes: Vec<Change>) -> Result<()> {
        for change in changes {
            self.apply(change)?;
        }
        self.snapshot.revision = self.snapshot.revision.max(revision);
        Ok(())
    }

    fn apply(&mut self, change: Change) -> Result<()> {
        let Change { kv, deleted } = change;
        let Ok(key) = kv.key_str() else {
            return Ok(());
        };
        let key = key.to_string();
        let report = self.own.report(&key, &kv);
        if report == Report::Stale {
            return Ok(());
        }
        let registry = &self.registry;
        if report == Report::New {
            match key.strip_prefix(&registry.units_prefix()) {
                Some(name) => {
                    if let Ok(name) = UnitName::parse(name) {
                        self.changed.units.insert(name);
                    }
                }
                None => {
                    let machine = key_machine_id(&registry.machines_prefix(), kv.key())
                        .map(|id| (id, true))
                        .or_else(|| {
                            key_machine_id(&registry.members_prefix(), kv.key())
                                .map(|id| (id, false))
                        });
                    match machine {
                        Some((id, true)) => {
                            self.changed.machines.insert(id);
                        }
                        // A member's record written again: registering again (or an older
                        // fleetd recording a new reading of the members over its record). The
                        // members are the same ones, and what is planned counts them by id
                        // only (the readings are judged from the snapshot on every pass).
                        Some((_, false)) if !deleted && self.members.contains(&key) => {}
                        // A registration, or a member leaving (declared dead).
                        Some((id, false)) => {
                            self.changed.machines.insert(id);
                        }
                        // A placement removed from a machine that is not live (a
                        // declaration removes a dead machine's): the machine's change, for
                        // what is held there.
                        None if key.starts_with(&registry.updates_prefix()) => {
                            self.changed.updates = true;
                        }
                        // A listed update's machine list: its record, written with it, is
                        // the change.
                        None if key.starts_with(&registry.update_machines_root()) => {}
                        // A member's new reading of the members: judged from the snapshot on
                        // every pass, planned from by nothing. Every join has every member
                        // record one.
                        None if key.starts_with(&registry.readings_prefix()) => {}
                        None if deleted => {
                            match placement_machine(&registry.placements_prefix(), &kv) {
                                Some(id) if !self.machines.contains(&registry.machine_key(&id)) => {
                                    self.changed.machines.insert(id);
                                }
                                Some(_) => self.changed.other = true,
                                // A machine done stopping a unit (or declared dead): the
                                // unit's change, which may now go elsewhere.
                                None => match registry.stopping_entry(&key) {
                                    Some((_, name)) => {
                                        self.changed.units.insert(name);
                                    }
                                    None => self.changed.other = true,
                                },
                            }
                        }
                        None => self.changed.other = true,
                    }
                }
            }
        }
        // A machine whose machine or member record changes: whether it is absent.
        let mut recheck: Option<MachineId> = None;
        let s = &mut self.snapshot;
        if key == registry.leader_key() {
            s.leader = (!deleted).then(|| Leadership {
                revision: kv.create_revision(),
                lease: kv.lease(),
            });
        } else if let Some(name) = key.strip_prefix(&registry.units_prefix()) {
            if deleted {
                self.units.delete(&mut s.units, &key);
            } else if UnitName::parse(name).is_ok() {
                self.units.put(&mut s.units, &key, decode::<Unit>(&kv)?);
            }
        } else if key.starts_with(&registry.machines_prefix()) {
            let machine = if deleted {
                None
            } else {
                // A record under another machine's key is no machine's (as in the snapshot).
                let machine = decode::<Machine>(&kv)?;
                let own = registry.machine_key(&machine.id) == key;
                if !own {
                    tracing::warn!(
                        key,
                        machine = %machine.id,
                        "ignoring a machine record under another machine's key"
                    );
                }
                Some(machine).filter(|_| own)
            };
            match machine {
                Some(machine) => {
                    let entry = MachineEntry {
                        machine,
                        lease: kv.lease(),
                    };
                    self.machines.put(&mut s.machines, &key, entry);
                }
                None => self.machines.delete(&mut s.machines, &key),
            }
            recheck = key_machine_id(&registry.machines_prefix(), kv.key());
        } else if key.starts_with(&registry.members_prefix()) {
            if deleted {
                self.members.delete(&mut s.members, &key);
            } else if let Some(entry) = member_entry(&registry.members_prefix(), &kv) {
                self.members.put(&mut s.members, &key, entry);
            }
            recheck = key_machine_id(&registry.members_prefix(), kv.key());
        } else if key.starts_with(&registry.readings_prefix()) {
            if deleted {
                if let Some(id) = key_machine_id(&registry.readings_prefix(), kv.key()) {
                    s.readings.remove(&id);
                    recheck = Some(id);
                }
            } else if let Some((id, entry)) = registry.reading_entry(&kv) {
                s.readings.insert(id.clone(), entry);
                recheck = Some(id);
            }
        } else if key.starts_with(&registry.placements_prefix()) {
            if deleted {
                delete_placement(&mut self.placements, &mut s.placements, &mut self.on, &key);
            } else if let Some(machine) = placement_machine(&registry.placements_prefix(), &kv) {
                let placement = decode::<Placement>(&kv)?;
                put_placement(
                    &mut self.placements,
                    &mut s.placements,
                    &mut self.on,
                    &key,
                    (machine, placement),
                );
            }
        } else if let Some(name) = key.strip_prefix(&registry.unplaceable_prefix()) {
            if let Ok(name) = UnitName::parse(name) {
                if deleted {
                    s.unplaceable.remove(&name);
                } else {
                    s.unplaceable.insert(name, decode::<Vec<String>>(&kv)?);
                }
            }
        } else if let Some(entry) = registry.stopping_entry(&key) {
            if deleted {
                s.stopping.remove(&entry);
            } else {
                s.stopping.insert(entry);
            }
        } else if let Some(rest) = key.strip_prefix(&registry.update_machines_root()) {
            // A listed update's machine list: written once, in the transaction that creates
            // the update, and deleted with it. Kept until the record is read.
            if deleted {
                self.update_lists.remove(rest);
            } else if self.update_lists.add(rest, kv.value()) {
                let id = rest.split_once('/').map_or(rest, |(id, _)| id);
                if let Some(record) = self.updates_waiting.remove(id) {
                    let lists = (&mut self.update_lists, &mut self.updates_waiting);
                    read_update(registry, &mut s.updates, lists, id, record);
                }
            }
        } else if let Some(rest) = key
            .strip_prefix(&registry.updates_prefix())
            .filter(|_| registry.is_update_record(&kv))
        {
            if deleted {
                s.updates.remove(rest);
                self.update_lists.forget(rest);
                self.updates_waiting.remove(rest);
            } else {
                let lists = (&mut self.update_lists, &mut self.updates_waiting);
                read_update(registry, &mut s.updates, lists, rest, kv);
            }
        } else if let Some(machine) = registry.drain_entry(&key) {
            if deleted {
                s.draining.remove(&machine);
            } else {
                s.draining.insert(machine);
            }
        }
        if let Some(id) = recheck {
            self.recheck_absent(&id);
        }
        Ok(())
    }
}

/// One agent's view: its machine's record, its placements and the global units.
pub struct AgentView {
    registry: Registry,
    machine: MachineId,
    snapshot: AgentSnapshot,
    placements: Slots,
    globals: Slots,
    changes: Changes,
}

impl AgentView {
    pub(crate) async fn open(registry: &Registry, machine: &MachineId) -> Result<AgentView> {
        // The watch first, from now, then the read: see `Registry::watch_now`.
        let changes = registry
            .watch_now(&registry.agent_watch_prefixes(machine))
            .await?;
        let mut view = AgentView {
            registry: registry.clone(),
            machine: machine.clone(),
            snapshot: AgentSnapshot::default(),
            placements: Slots::default(),
            globals: Slots::default(),
            changes,
        };
        view.refresh().await?;
        Ok(view)
    }

    /// Reads everything again, keeping the watch: the agent's periodic resync, a safety net
    /// against a change the view would have missed. What the read holds, the watch leaves
    /// out. Cheaper for etcd than a new view, which would create watchers and cancel the old
    /// ones: at 10,000 machines resyncing every minute, that is 167 of each a second.
    ///
    /// Says whether the read differed from the view: a change on its way (the watch brings
    /// it later, and it is then left out), or one the watch missed, in which case it may
    /// miss more: whoever follows the view then opens a new one. On an error the view is
    /// left as the watch keeps it.
    pub async fn refresh(&mut self) -> Result<Refreshed> {
        let snapshot = self.registry.agent_snapshot(&self.machine).await?;
        let refreshed = if same_desired_state(&self.snapshot, &snapshot) {
            Refreshed::Same
        } else {
            Refreshed::Differed
        };
        self.changes.skip_through(snapshot.revision);
        self.placements = Slots::new(
            snapshot
                .placements
                .iter()
                .map(|p| self.registry.placement_key(&self.machine, &p.name)),
        );
        self.globals = Slots::new(
            snapshot
                .global_units
                .iter()
                .map(|u| self.registry.global_key(&u.name)),
        );
        self.snapshot = snapshot;
        Ok(refreshed)
    }

    /// What this machine must run, as far as this view knows.
    pub fn snapshot(&self) -> &AgentSnapshot {
        &self.snapshot
    }

    /// Waits for the next changes and applies them, with every change that has arrived
    /// meanwhile. Cancel-safe: nothing is taken from the watch until it can be applied.
    pub async fn changed(&mut self) -> Result<()> {
        use futures_util::FutureExt;
        let (revision, changes) = self.changes.next_changes().await?;
        self.apply_all(revision, changes)?;
        while let Some(next) = self.changes.next_changes().now_or_never() {
            let (revision, changes) = next?;
            self.apply_all(revision, changes)?;
        }
        Ok(())
    }

    fn apply_all(&mut self, revision: i64, changes: Vec<Change>) -> Result<()> {
        for Change { kv, deleted } in changes {
            let Ok(key) = kv.key_str() else {
                continue;
            };
            let registry = &self.registry;
            let s = &mut self.snapshot;
            if key == registry.machine_key(&self.machine) {
                s.machine = if deleted {
                    None
                } else {
                    Some(decode::<Machine>(&kv)?)
                };
            } else if key.starts_with(&registry.machine_placements_prefix(&self.machine)) {
                if deleted {
                    self.placements.delete(&mut s.placements, key);
                } else {
                    self.placements
                        .put(&mut s.placements, key, decode::<Placement>(&kv)?);
                }
            } else if let Some(name) = key.strip_prefix(&registry.global_prefix()) {
                let name = UnitName::parse(name).ok();
                if deleted {
                    self.globals.delete(&mut s.global_units, key);
                    if let Some(name) = name {
                        s.global_revisions.remove(&name);
                    }
                } else {
                    self.globals
                        .put(&mut s.global_units, key, decode::<Unit>(&kv)?);
                    if let Some(name) = name {
                        s.global_revisions.insert(name, kv.mod_revision());
                    }
                }
            } else if let Some(name) = registry.version_entry(&self.machine, key) {
                if deleted {
                    s.versions.remove(&name);
                } else {
                    // One that cannot be read (a newer fleetd's) is left out: the unit's own
                    // content runs.
                    match decode(&kv) {
                        Ok(version) => s.versions.insert(name, version),
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a version that cannot be read");
                            s.versions.remove(&name)
                        }
                    };
                }
            } else if let Some((machine, name)) = registry.stopping_entry(key) {
                if machine == self.machine {
                    if deleted {
                        s.stopping.remove(&name);
                    } else {
                        s.stopping.insert(name, kv.create_revision());
                    }
                }
            }
        }
        self.snapshot.revision = self.snapshot.revision.max(revision);
        Ok(())
    }
}

/// What [`AgentView::refresh`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// What the view said.
    Same,
    /// Something else: a change on its way, or one the watch missed.
    Differed,
}

/// Whether two snapshots say the same, whatever the order of their lists and their revisions.
fn same_desired_state(a: &AgentSnapshot, b: &AgentSnapshot) -> bool {
    fn by_name<T>(items: &[T], name: impl Fn(&T) -> &UnitName) -> HashMap<&UnitName, &T> {
        items.iter().map(|item| (name(item), item)).collect()
    }
    a.machine == b.machine
        && a.stopping == b.stopping
        && a.global_revisions == b.global_revisions
        && a.versions == b.versions
        && a.placements.len() == b.placements.len()
        && by_name(&a.placements, |p| &p.name) == by_name(&b.placements, |p| &p.name)
        && a.global_units.len() == b.global_units.len()
        && by_name(&a.global_units, |u| &u.name) == by_name(&b.global_units, |u| &u.name)
}

/// [`EngineView::digest`] of a snapshot.
fn digest_of(s: &EngineSnapshot, keys: &RandomState) -> ClusterDigest {
    // Each entry's hash, in two lanes (hashed with the lane first), summed: the sum does not
    // depend on the order.
    let mut sums = [0u64; 2];
    let mut add = |entry: &dyn Fn(&mut dyn Hasher)| {
        for (lane, sum) in sums.iter_mut().enumerate() {
            let mut h = keys.build_hasher();
            h.write_usize(lane);
            entry(&mut h);
            *sum = sum.wrapping_add(h.finish());
        }
    };
    // Each list's entries hashed with its tag, so that no entry of one stands for another's.
    for u in &s.units {
        add(&|mut h| ("unit", u).hash(&mut h));
    }
    for m in &s.machines {
        add(&|mut h| ("machine", m).hash(&mut h));
    }
    for m in &s.members {
        add(&|mut h| ("member", m).hash(&mut h));
    }
    for r in &s.readings {
        add(&|mut h| ("reading", r).hash(&mut h));
    }
    for p in &s.placements {
        add(&|mut h| ("placement", p).hash(&mut h));
    }
    add(&|mut h| (&s.leader, &s.unplaceable, &s.stopping, &s.draining).hash(&mut h));
    // A rolling update (with an entry per machine, for a global unit) by the revision it was
    // last written at.
    for (id, stored) in &s.updates {
        add(&|mut h| ("update", id, stored.revision).hash(&mut h));
    }
    ClusterDigest(sums)
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn slots_follow_puts_and_deletes_in_any_order() {
        let mut list: Vec<u32> = vec![];
        let mut slots = Slots::new([]);
        for i in 0..10 {
            slots.put(&mut list, &format!("k{i}"), i);
        }
        slots.put(&mut list, "k3", 33);
        for i in [0, 9, 4, 4, 7] {
            slots.delete(&mut list, &format!("k{i}"));
        }
        slots.put(&mut list, "k10", 10);
        let mut seen: Vec<(String, u32)> = slots
            .keys
            .iter()
            .map(|k| (k.clone(), list[slots.at[k]]))
            .collect();
        seen.sort();
        let expected: Vec<(String, u32)> = [
            ("k1", 1),
            ("k10", 10),
            ("k2", 2),
            ("k3", 33),
            ("k5", 5),
            ("k6", 6),
            ("k8", 8),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
        assert_eq!(seen, expected);
        assert_eq!(list.len(), 7);
        for (i, k) in slots.keys.iter().enumerate() {
            assert_eq!(slots.at[k], i);
        }
    }
}
