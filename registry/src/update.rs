//! Rolling updates (`updates/<id>`): a set of units moved to new content a few at a time, each
//! waiting to be healthy before the next, driven by the engine leader from this record so that
//! it goes on whoever leads and whether or not the client that asked is still there.
//!
//! Every unit of a running update is also claimed in `updating/<name>` (the update's id),
//! created with the update in one transaction that fails if any is claimed already: a unit
//! is in at most one running update. The claims are removed with the transaction that ends
//! the update (done, failed, reverted or aborted).
//!
//! A **global unit** runs on every machine its metadata admits, from one content: it is
//! updated machine by machine through **versions** (`versions/<machine>/<name>`, a
//! [`GlobalVersion`]): the content that one machine runs in place of the unit's own. The
//! update gives each machine the new content as a version, a few machines at a time, and
//! writes the units' own content once every machine is healthy on it; reverting a machine
//! removes its version. A version applies only over the very write of the unit it was made
//! for (`unit_revision`, the modification revision of the unit's `global/` key): once the unit
//! is written again in any way (its content, its desired state, a rollback, destroyed and
//! created anew), it runs its own content everywhere, whatever versions are left, and those
//! can never apply again (revisions only grow). The versions of an update that failed or was
//! aborted stay, so that its machines stay as they are until the unit is next written.

use std::collections::BTreeSet;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, Txn, TxnOp};
use fleet_units::{UnitHash, UnitName, UnitOption};
use serde::{Deserialize, Serialize};

use crate::{
    decode, encode, reads, Error, Leadership, MachineId, Registry, Result, Unit, UnitState,
};

mod record;

use record::stored_update_from;
pub use record::{
    as_listed, Layout, LayoutError, Omitted, MACHINES_PER_KEY, MAX_PARALLEL_MACHINES,
    MAX_UPDATE_MACHINES,
};
pub(crate) use record::{Lists, Machines};

/// Where an update is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateState {
    /// Units are being updated.
    Running,
    /// Nothing new is started; units already updating are still judged.
    Paused,
    /// A unit did not become healthy: the updated units go back to their content before the
    /// update, as many at a time as the update allows.
    Reverting,
    /// Every unit runs the new content and was healthy.
    Done,
    /// A unit did not become healthy and the update stopped there (no automatic revert).
    Failed,
    /// Back to the content before the update after a unit failed.
    Reverted,
    /// Stopped by hand: units stay as they are.
    Aborted,
}

impl UpdateState {
    /// Whether the update is over (its claims released).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            UpdateState::Done | UpdateState::Failed | UpdateState::Reverted | UpdateState::Aborted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Running => "running",
            UpdateState::Paused => "paused",
            UpdateState::Reverting => "reverting",
            UpdateState::Done => "done",
            UpdateState::Failed => "failed",
            UpdateState::Reverted => "reverted",
            UpdateState::Aborted => "aborted",
        }
    }
}

/// Where one unit of an update is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Not touched yet.
    Pending,
    /// Given the new content; waiting for it to be healthy.
    Updating,
    /// Healthy on the new content.
    Healthy,
    /// Did not become healthy on the new content.
    Failed,
    /// Given its old content back; waiting for it to run again.
    Reverting,
    /// Back on its old content.
    Reverted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Updating => "updating",
            Phase::Healthy => "healthy",
            Phase::Failed => "failed",
            Phase::Reverting => "reverting",
            Phase::Reverted => "reverted",
        }
    }
}

/// One unit of an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateUnit {
    pub name: UnitName,
    /// For a global unit, the machine this entry updates (by a version); `None` for a unit
    /// placed on one machine, and for a global unit's own content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineId>,
    /// Whether the unit is global: with `machine`, that machine's version; without, the unit's
    /// own content, written once every machine of it is healthy on the new content.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
    /// Its content before the update.
    pub from: UnitHash,
    pub phase: Phase,
    /// When the current phase began (milliseconds since the epoch, the leader's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Since when it has been seen running its content without a break, in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_since_ms: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A rolling update (`updates/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    pub id: String,
    /// When it was asked for (milliseconds since the epoch).
    pub created_ms: u64,
    /// The new content of every unit of the update.
    pub options: Vec<UnitOption>,
    /// At most this many units of the update are down because of it at any time.
    pub max_parallel: u32,
    /// How long a unit must run its new content without a break to be healthy.
    pub min_healthy_ms: u64,
    /// How long a unit has to become healthy before it has failed.
    pub healthy_deadline_ms: u64,
    /// Whether a failure reverts the units already updated.
    pub auto_revert: bool,
    pub state: UpdateState,
    /// Why it failed, was reverted or aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it ended (milliseconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    pub units: Vec<UpdateUnit>,
    /// The content each unit had before (once per distinct content), for reverting: the
    /// unit's history keeps only its last versions.
    #[serde(default)]
    pub previous: Vec<PreviousContent>,
    /// The leadership (its revision) whose clock wrote the times of the units in flight: a new
    /// leader starts them again from its own clock rather than compare two machines' clocks.
    #[serde(default)]
    pub stamped_by: i64,
}

/// A content units had before an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousContent {
    pub hash: UnitHash,
    pub options: Vec<UnitOption>,
}

impl Update {
    /// The hash of the new content.
    pub fn hash(&self) -> UnitHash {
        fleet_units::UnitFile::from_options(self.options.clone()).hash()
    }
}

impl UpdateUnit {
    /// A unit not yet touched: placed on one machine (`machine` and `global` unset) or an
    /// entry of a global one.
    pub fn pending(name: UnitName, from: UnitHash) -> UpdateUnit {
        UpdateUnit {
            name,
            machine: None,
            global: false,
            from,
            phase: Phase::Pending,
            since_ms: None,
            up_since_ms: None,
            failure: None,
        }
    }

    /// Whether this entry is a global unit's own content (not one machine's version).
    pub fn is_global_content(&self) -> bool {
        self.global && self.machine.is_none()
    }
}

impl Update {
    /// The names of the units of the update, each once.
    pub fn names(&self) -> BTreeSet<&UnitName> {
        self.units.iter().map(|u| &u.name).collect()
    }
}

/// The content one machine runs of a global unit in place of the unit's own, during a rolling
/// update (`versions/<machine>/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalVersion {
    /// The update that wrote it.
    pub update: String,
    /// The modification revision of the unit's `global/` key it was written over.
    pub unit_revision: i64,
    pub options: Vec<UnitOption>,
}

impl GlobalVersion {
    /// Whether it applies to the global unit whose `global/` key was last written at
    /// `revision`: only to the write it was made for.
    pub fn applies_to(&self, revision: i64) -> bool {
        self.unit_revision == revision
    }

    /// The hash of the content it gives.
    pub fn hash(&self) -> UnitHash {
        fleet_units::UnitFile::from_options(self.options.clone()).hash()
    }
}

/// A global unit as one machine has it, read at one revision ([`Registry::global_unit_on`]).
#[derive(Debug, Clone)]
pub struct GlobalUnitOn {
    pub unit: Unit,
    /// The content the machine is to run: its version's, when one applies, or the unit's;
    /// `None` when the machine is no member (declared dead: nothing to wait for there). A
    /// member whose lease lapsed is waited for: it may come back, running either.
    pub content: Option<UnitHash>,
    /// What the machine published of the unit.
    pub state: Option<UnitState>,
}

/// An update as stored, with the revision it was last written at (for conditional writes)
/// and how its record is laid out (it is written again the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpdate {
    pub update: Update,
    pub revision: i64,
    pub layout: Layout,
    /// A listed update read without its machine entries (see [`Layout`]): how many of each
    /// global unit's machines are in each phase. Empty when read with them.
    pub omitted: Omitted,
}

/// Why an update was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUpdateError {
    #[error("an update with id {0} exists")]
    Exists(String),
    #[error("unit {unit} is in update {update}, which is not over")]
    Busy { unit: UnitName, update: String },
    /// Refused before anything was written: more than one transaction would take.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Registry(#[from] Error),
}

/// How many finished updates are kept: the oldest beyond these are removed by the engine.
pub const FINISHED_UPDATES_KEPT: usize = 50;

impl Registry {
    pub(crate) fn updates_prefix(&self) -> String {
        self.key("updates/")
    }
    pub(crate) fn update_key(&self, id: &str) -> String {
        self.key(&format!("updates/{id}"))
    }
    fn updating_key(&self, name: &UnitName) -> String {
        self.key(&format!("updating/{name}"))
    }
    /// Whether `kv`, under the updates' prefix, is an update's record (`updates/<id>`): no
    /// other key belongs there (one written by hand, or by a newer fleetd, is left alone).
    pub(crate) fn is_update_record(&self, kv: &KeyValue) -> bool {
        let prefix = self.updates_prefix();
        kv.key_str()
            .ok()
            .and_then(|k| k.strip_prefix(prefix.as_str()))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    }
    pub(crate) fn update_machines_root(&self) -> String {
        self.key("update-machines/")
    }
    fn update_machines_prefix(&self, id: &str) -> String {
        self.key(&format!("update-machines/{id}/"))
    }
    /// The machine lists among `kvs` (keys under `update-machines/`).
    fn lists(&self, kvs: &[KeyValue]) -> Lists {
        let root = self.update_machines_root();
        let mut lists = Lists::default();
        for kv in kvs {
            if let Some(rest) = kv.key_str().ok().and_then(|k| k.strip_prefix(&root)) {
                lists.add(rest, kv.value());
            }
        }
        lists
    }
    pub(crate) fn machine_versions_prefix(&self, machine: &MachineId) -> String {
        self.key(&format!("versions/{machine}/"))
    }
    fn version_key(&self, machine: &MachineId, name: &UnitName) -> String {
        self.key(&format!("versions/{machine}/{name}"))
    }
    /// The unit a key of `machine`'s versions names.
    pub(crate) fn version_entry(&self, machine: &MachineId, key: &str) -> Option<UnitName> {
        let name = key.strip_prefix(&self.machine_versions_prefix(machine))?;
        UnitName::parse(name).ok()
    }

    /// Gives `machine` the content `options` of the global unit `name` as a version of
    /// `update` over the unit's content now, fenced on `leadership` and conditioned on the
    /// unit read. `false` when there is no such global unit or it changed meanwhile.
    pub async fn set_version(
        &self,
        machine: &MachineId,
        name: &UnitName,
        update: &str,
        options: &[UnitOption],
        leadership: Leadership,
    ) -> Result<bool> {
        let global = self.global_key(name);
        let resp = self.get(global.as_str()).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(false);
        };
        let version = GlobalVersion {
            update: update.to_string(),
            unit_revision: kv.mod_revision(),
            options: options.to_vec(),
        };
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(global.as_str(), CompareOp::Equal, kv.mod_revision()),
                Compare::create_revision(self.leader_key(), CompareOp::Equal, leadership.revision),
            ])
            .and_then(vec![TxnOp::put(
                self.version_key(machine, name),
                encode(&version),
                None,
            )])
            .or_else(vec![TxnOp::get(self.leader_key(), None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(true);
        }
        let [held] = reads(&resp)?;
        if held.kvs().first().map(|kv| kv.create_revision()) != Some(leadership.revision) {
            return Err(Error::NotLeader);
        }
        Ok(false)
    }

    /// Removes versions of global units (`(machine, unit)`), fenced on `leadership`: those
    /// machines run the units' own content again.
    pub async fn clear_versions(
        &self,
        versions: &[(MachineId, UnitName)],
        leadership: Leadership,
    ) -> Result<()> {
        for chunk in versions.chunks(crate::MAX_TXN_OPS - 1) {
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    self.leader_key(),
                    CompareOp::Equal,
                    leadership.revision,
                )])
                .and_then(
                    chunk
                        .iter()
                        .map(|(machine, name)| TxnOp::delete(self.version_key(machine, name), None))
                        .collect::<Vec<_>>(),
                );
            if !self.txn(txn).await?.succeeded() {
                return Err(Error::NotLeader);
            }
        }
        Ok(())
    }

    /// The global unit `name` as `machine` has it: the content it is to run and what it
    /// published; `None` when there is no such global unit. One consistent read.
    pub async fn global_unit_on(
        &self,
        name: &UnitName,
        machine: &MachineId,
    ) -> Result<Option<GlobalUnitOn>> {
        let resp = self
            .txn(Txn::new().and_then(vec![
                TxnOp::get(self.global_key(name), None),
                TxnOp::get(self.version_key(machine, name), None),
                TxnOp::get(self.state_key(machine, name), None),
                TxnOp::get(
                    self.member_key(machine),
                    Some(GetOptions::new().with_keys_only()),
                ),
            ]))
            .await?;
        let [global, version, state, member] = reads(&resp)?;
        let Some(kv) = global.kvs().first() else {
            return Ok(None);
        };
        let unit: Unit = decode(kv)?;
        // One that cannot be read is left out, as the agent leaves it out.
        let version = version
            .kvs()
            .first()
            .and_then(|v| match decode::<GlobalVersion>(v) {
                Ok(version) => Some(version),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a version that cannot be read");
                    None
                }
            });
        let content = (!member.kvs().is_empty()).then(|| match &version {
            Some(v) if v.applies_to(kv.mod_revision()) => v.hash(),
            _ => unit.hash(),
        });
        let state = match state.kvs().first() {
            Some(s) => Some(decode::<UnitState>(s)?),
            None => None,
        };
        Ok(Some(GlobalUnitOn {
            unit,
            content,
            state,
        }))
    }

    /// Stores a new update and claims its units, unless one of them is in an update that is
    /// not over or the id is taken: then nothing is written. An update with machine entries
    /// is laid out listed ([`Layout`]): its machine lists are written in the same transaction.
    pub async fn create_update(
        &self,
        update: &Update,
    ) -> std::result::Result<(), CreateUpdateError> {
        let key = self.update_key(&update.id);
        let layout = Layout::for_update(update);
        let machines = update.units.iter().filter(|u| u.machine.is_some()).count();
        if machines > MAX_UPDATE_MACHINES {
            return Err(CreateUpdateError::TooLarge(format!(
                "an update takes at most {MAX_UPDATE_MACHINES} machines of global units, not \
                 {machines}: update fewer units at once"
            )));
        }
        if machines > 0 && update.max_parallel as usize > MAX_PARALLEL_MACHINES {
            return Err(CreateUpdateError::TooLarge(format!(
                "an update of global units takes at most {MAX_PARALLEL_MACHINES} machines at a \
                 time, not {}",
                update.max_parallel
            )));
        }
        let mut ops = Vec::new();
        let value = match layout {
            Layout::Inline => encode(update),
            Layout::Listed => {
                let bad = |e: LayoutError| Error::Protocol(format!("update {}: {e}", update.id));
                let prefix = self.update_machines_prefix(&update.id);
                for (rest, value) in record::machine_lists(update).map_err(bad)? {
                    ops.push(TxnOp::put(format!("{prefix}{rest}"), value, None));
                }
                record::encode_listed(update).map_err(bad)?
            }
        };
        let names = update.names();
        if ops.len() + 1 + names.len() > crate::MAX_TXN_OPS {
            return Err(CreateUpdateError::TooLarge(format!(
                "an update of {} units on {machines} machines takes {} keys of machine lists \
                 ({MACHINES_PER_KEY} machines each), more than one etcd transaction holds with \
                 its units: update fewer units at once",
                names.len(),
                ops.len()
            )));
        }
        let mut when = vec![Compare::create_revision(key.as_str(), CompareOp::Equal, 0)];
        // A watch may report the record before the lists (each prefix apart): a view keeps
        // the record until they come.
        ops.push(TxnOp::put(key.as_str(), value, None));
        for name in &names {
            let claim = self.updating_key(name);
            when.push(Compare::create_revision(
                claim.as_str(),
                CompareOp::Equal,
                0,
            ));
            ops.push(TxnOp::put(claim, update.id.as_str(), None));
        }
        let mut otherwise = vec![TxnOp::get(key.as_str(), None)];
        otherwise.extend(
            names
                .iter()
                .map(|name| TxnOp::get(self.updating_key(name), None)),
        );
        let resp = self
            .txn(Txn::new().when(when).and_then(ops).or_else(otherwise))
            .await?;
        if resp.succeeded() {
            return Ok(());
        }
        let gets: Vec<etcd_client::GetResponse> = resp
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => Some(g),
                _ => None,
            })
            .collect();
        if gets.first().is_some_and(|g| !g.kvs().is_empty()) {
            return Err(CreateUpdateError::Exists(update.id.clone()));
        }
        for (name, get) in names.into_iter().zip(gets.iter().skip(1)) {
            if let Some(kv) = get.kvs().first() {
                return Err(CreateUpdateError::Busy {
                    unit: name.clone(),
                    update: String::from_utf8_lossy(kv.value()).into_owned(),
                });
            }
        }
        Err(Error::Protocol("an update was refused for no reason etcd gave".into()).into())
    }

    /// The update whose record is `kv`, a listed one with or without its machines as
    /// `machines` says.
    pub(crate) fn stored_update(
        &self,
        kv: &KeyValue,
        machines: Machines<'_>,
    ) -> Result<StoredUpdate> {
        let key = || String::from_utf8_lossy(kv.key()).into_owned();
        let value: serde_json::Value = serde_json::from_slice(kv.value())
            .map_err(|source| Error::Corrupt { key: key(), source })?;
        stored_update_from(kv, value, machines)
            .map_err(|source| Error::Layout { key: key(), source })
    }

    /// The updates whose records are `kvs` (read at `revision`) as the engine keeps them,
    /// those that can be read (one written by a newer fleetd, say, is logged and left out
    /// rather than stopping the engine): a listed one not over with its machines, read now
    /// at `revision`, one over without (the engine only counts those).
    pub(crate) async fn engine_updates(
        &self,
        kvs: &[KeyValue],
        revision: i64,
    ) -> Result<Vec<StoredUpdate>> {
        let mut updates = Vec::with_capacity(kvs.len());
        for kv in kvs.iter().filter(|kv| self.is_update_record(kv)) {
            let value: serde_json::Value = match serde_json::from_slice(kv.value()) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "ignoring an update record that cannot be read");
                    continue;
                }
            };
            let mut lists = Lists::default();
            if record::is_listed(&value) && !record::is_over(&value) {
                let id = value.get("id").and_then(|v| v.as_str()).unwrap_or_default();
                let prefix = self.update_machines_prefix(id);
                lists = self.lists(&self.read_chunks(&prefix, revision).await?);
            }
            match stored_update_from(kv, value, Machines::WhileRunning(&lists, None)) {
                Ok(u) => updates.push(u),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "ignoring an update record that cannot be read")
                }
            }
        }
        Ok(updates)
    }

    /// Every update, oldest first; listed ones without their machine entries
    /// ([`StoredUpdate::omitted`]).
    pub async fn updates(&self) -> Result<Vec<StoredUpdate>> {
        let resp = self
            .kv_request(|mut kv| {
                let prefix = self.updates_prefix();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let mut updates = resp
            .kvs()
            .iter()
            .filter(|kv| self.is_update_record(kv))
            .map(|kv| self.stored_update(kv, Machines::Omitted))
            .collect::<Result<Vec<_>>>()?;
        updates.sort_by(|a, b| {
            (a.update.created_ms, &a.update.id).cmp(&(b.update.created_ms, &b.update.id))
        });
        Ok(updates)
    }

    /// One update, if it exists, with all its entries.
    pub async fn update(&self, id: &str) -> Result<Option<StoredUpdate>> {
        let resp = self
            .txn(Txn::new().and_then(vec![
                TxnOp::get(self.update_key(id), None),
                TxnOp::get(
                    self.update_machines_prefix(id),
                    Some(GetOptions::new().with_prefix()),
                ),
            ]))
            .await?;
        let [record, listed] = reads(&resp)?;
        let lists = self.lists(listed.kvs());
        record
            .kvs()
            .first()
            .map(|kv| self.stored_update(kv, Machines::From(&lists, None)))
            .transpose()
    }

    /// Writes `update` over the version read at `revision`, laid out as it was, releasing
    /// its units' claims when it is over; conditioned on `leadership` when given (the
    /// engine's writes). `false` when the record changed since (or the leadership is lost:
    /// [`Error::NotLeader`]).
    pub async fn write_update(
        &self,
        update: &Update,
        layout: Layout,
        revision: i64,
        leadership: Option<Leadership>,
    ) -> Result<bool> {
        let key = self.update_key(&update.id);
        let value = match layout {
            Layout::Inline => encode(update),
            Layout::Listed => record::encode_listed(update).map_err(|source| Error::Layout {
                key: key.clone(),
                source,
            })?,
        };
        let mut when = vec![Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            revision,
        )];
        if let Some(l) = leadership {
            when.push(Compare::create_revision(
                self.leader_key(),
                CompareOp::Equal,
                l.revision,
            ));
        }
        let mut ops = vec![TxnOp::put(key.as_str(), value, None)];
        if update.state.is_final() {
            ops.extend(
                update
                    .names()
                    .into_iter()
                    .map(|name| TxnOp::delete(self.updating_key(name), None)),
            );
        }
        let resp = self
            .txn(
                Txn::new()
                    .when(when)
                    .and_then(ops)
                    .or_else(vec![TxnOp::get(self.leader_key(), None)]),
            )
            .await?;
        if resp.succeeded() {
            return Ok(true);
        }
        if let Some(l) = leadership {
            let [held] = reads(&resp)?;
            if held.kvs().first().map(|kv| kv.create_revision()) != Some(l.revision) {
                return Err(Error::NotLeader);
            }
        }
        Ok(false)
    }

    /// Removes a finished update's record and machine lists (its claims went when it
    /// finished), fenced on the engine's `leadership`.
    pub async fn delete_update(
        &self,
        id: &str,
        revision: i64,
        leadership: Leadership,
    ) -> Result<bool> {
        let key = self.update_key(id);
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(key.as_str(), CompareOp::Equal, revision),
                Compare::create_revision(self.leader_key(), CompareOp::Equal, leadership.revision),
            ])
            .and_then(vec![
                TxnOp::delete(
                    self.update_machines_prefix(id),
                    Some(DeleteOptions::new().with_prefix()),
                ),
                TxnOp::delete(key, None),
            ]);
        Ok(self.txn(txn).await?.succeeded())
    }
}
