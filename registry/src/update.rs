//! Rolling updates (`updates/<id>`): a set of units moved to new content a few at a time, each
//! waiting to be healthy before the next, driven by the engine leader from this record so that
//! it goes on whoever leads and whether or not the client that asked is still there.
//!
//! Every unit of a running update is also claimed in `updating/<name>` (the update's id),
//! created with the update in one transaction that fails if any is claimed already: a unit
//! is in at most one running update. The claims are removed with the transaction that ends
//! the update (done, failed, reverted or aborted).

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use fleet_units::{UnitHash, UnitName, UnitOption};
use serde::{Deserialize, Serialize};

use crate::{decode, encode, reads, Error, Leadership, Registry, Result};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// An update as stored, with the revision it was last written at (for conditional writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpdate {
    pub update: Update,
    pub revision: i64,
}

/// Why an update was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUpdateError {
    #[error("an update with id {0} exists")]
    Exists(String),
    #[error("unit {unit} is in update {update}, which is not over")]
    Busy { unit: UnitName, update: String },
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

    /// Stores a new update and claims its units, unless one of them is in an update that is
    /// not over or the id is taken: then nothing is written.
    pub async fn create_update(
        &self,
        update: &Update,
    ) -> std::result::Result<(), CreateUpdateError> {
        let key = self.update_key(&update.id);
        let mut when = vec![Compare::create_revision(key.as_str(), CompareOp::Equal, 0)];
        let mut ops = vec![TxnOp::put(key.as_str(), encode(update), None)];
        for unit in &update.units {
            let claim = self.updating_key(&unit.name);
            when.push(Compare::create_revision(
                claim.as_str(),
                CompareOp::Equal,
                0,
            ));
            ops.push(TxnOp::put(claim, update.id.as_str(), None));
        }
        let mut otherwise = vec![TxnOp::get(key.as_str(), None)];
        otherwise.extend(
            update
                .units
                .iter()
                .map(|u| TxnOp::get(self.updating_key(&u.name), None)),
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
        for (unit, get) in update.units.iter().zip(gets.iter().skip(1)) {
            if let Some(kv) = get.kvs().first() {
                return Err(CreateUpdateError::Busy {
                    unit: unit.name.clone(),
                    update: String::from_utf8_lossy(kv.value()).into_owned(),
                });
            }
        }
        Err(Error::Protocol("an update was refused for no reason etcd gave".into()).into())
    }

    pub(crate) fn stored_update(&self, kv: &etcd_client::KeyValue) -> Result<StoredUpdate> {
        Ok(StoredUpdate {
            update: decode::<Update>(kv)?,
            revision: kv.mod_revision(),
        })
    }

    /// The updates among `kvs` that can be read; one that cannot (written by a newer fleetd,
    /// say) is logged and left out rather than stopping the engine.
    pub(crate) fn readable_updates(&self, kvs: &[etcd_client::KeyValue]) -> Vec<StoredUpdate> {
        kvs.iter()
            .filter_map(|kv| match self.stored_update(kv) {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an update record that cannot be read");
                    None
                }
            })
            .collect()
    }

    /// Every update, oldest first.
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
            .map(|kv| self.stored_update(kv))
            .collect::<Result<Vec<_>>>()?;
        updates.sort_by(|a, b| {
            (a.update.created_ms, &a.update.id).cmp(&(b.update.created_ms, &b.update.id))
        });
        Ok(updates)
    }

    /// One update, if it exists.
    pub async fn update(&self, id: &str) -> Result<Option<StoredUpdate>> {
        let resp = self.get(self.update_key(id)).await?;
        resp.kvs()
            .first()
            .map(|kv| self.stored_update(kv))
            .transpose()
    }

    /// Writes `update` over the version read at `revision`, releasing its units' claims when
    /// it is over; conditioned on `leadership` when given (the engine's writes). `false` when
    /// the record changed since (or the leadership is lost: [`Error::NotLeader`]).
    pub async fn write_update(
        &self,
        update: &Update,
        revision: i64,
        leadership: Option<Leadership>,
    ) -> Result<bool> {
        let key = self.update_key(&update.id);
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
        let mut ops = vec![TxnOp::put(key.as_str(), encode(update), None)];
        if update.state.is_final() {
            ops.extend(
                update
                    .units
                    .iter()
                    .map(|u| TxnOp::delete(self.updating_key(&u.name), None)),
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

    /// Removes a finished update's record (its claims went when it finished), fenced on the
    /// engine's `leadership`.
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
            .and_then(vec![TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }
}
