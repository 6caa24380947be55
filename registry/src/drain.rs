//! Draining machines, and units that are stopping before they move.
//!
//! A machine is drained by writing `drain/<id>`: the engine places nothing new there and moves
//! its non-global units elsewhere, a few at a time. Every move off a live machine, a drain's or
//! any other, goes through `stopping/<id>/<name>`, written with the placement's removal
//! ([`PlacementOp::Move`](crate::PlacementOp::Move)): the engine places the unit again only
//! once that machine's agent has stopped it and removed the record
//! ([`Registry::release_stopping`]), or the machine was declared dead. So a moving unit never
//! runs on two machines at once.

use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use fleet_units::UnitName;
use serde::{Deserialize, Serialize};

use crate::{decode, encode, op_bytes, reads, Group, MachineId, Registry, Result};

/// A drain's record (`drain/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// When the drain began, in seconds since the Unix epoch.
    pub since: u64,
}

/// How far a machine's drain has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainStatus {
    pub machine: MachineId,
    pub since: u64,
    /// Non-global units still placed on the machine.
    pub units: usize,
    /// Units taken off it that it has not yet stopped.
    pub stopping: usize,
}

impl DrainStatus {
    /// Whether nothing is left to move: no unit placed, none stopping.
    pub fn drained(&self) -> bool {
        self.units == 0 && self.stopping == 0
    }
}

/// What [`Registry::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStart {
    /// The drain began now.
    Started,
    /// The machine was already being drained.
    AlreadyDraining,
    /// No machine with that id is a member of the cluster.
    Unknown,
}

impl Registry {
    /// The machine and unit a `stopping/<id>/<name>` key names.
    pub(crate) fn stopping_entry(&self, key: &str) -> Option<(MachineId, UnitName)> {
        let rest = key.strip_prefix(&self.stopping_prefix())?;
        let (machine, name) = rest.split_once('/')?;
        Some((MachineId::parse(machine).ok()?, UnitName::parse(name).ok()?))
    }

    /// The machine a `drain/<id>` key names.
    pub(crate) fn drain_entry(&self, key: &str) -> Option<MachineId> {
        let rest = key.strip_prefix(&self.drain_prefix())?;
        MachineId::parse(rest).ok()
    }

    /// Says that this machine has stopped `names`, which the engine took off it: removes their
    /// `stopping/` records, each only if it is the record created at the revision given
    /// (`AgentSnapshot::stopping`), in as few transactions as etcd's limits allow. A release
    /// that timed out may still be applied, and must not remove a later record of the same
    /// unit (taken off this machine again since, still running here): the engine would place
    /// it elsewhere meanwhile. [`crate::Error::Conflict`] when a record is another (nothing of
    /// that transaction removed).
    pub async fn release_stopping(
        &self,
        machine: &MachineId,
        names: &[(UnitName, i64)],
    ) -> Result<()> {
        let groups = names.iter().map(|(name, created)| {
            let key = self.stopping_key(machine, name);
            let bytes = 2 * op_bytes(&key, b"");
            Group {
                compares: vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    *created,
                )],
                ops: vec![TxnOp::delete(key, None)],
                bytes,
            }
        });
        self.write_conditioned(groups, "stopping records").await?;
        Ok(())
    }

    /// Starts draining `machine`, a member of the cluster (live or not).
    pub async fn drain(&self, machine: &MachineId) -> Result<DrainStart> {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let key = self.drain_key(machine);
        let txn = Txn::new()
            .when(vec![
                Compare::version(self.member_key(machine), CompareOp::Greater, 0),
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then(vec![TxnOp::put(
                key.as_str(),
                encode(&Drain { since }),
                None,
            )])
            .or_else(vec![
                TxnOp::get(self.member_key(machine), None),
                TxnOp::get(key.as_str(), None),
            ]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(DrainStart::Started);
        }
        let [member, _] = reads(&resp)?;
        Ok(if member.kvs().is_empty() {
            DrainStart::Unknown
        } else {
            DrainStart::AlreadyDraining
        })
    }

    /// Ends a drain: the machine takes units again (those moved away stay where they are).
    /// Whether it was being drained.
    pub async fn undrain(&self, machine: &MachineId) -> Result<bool> {
        let key = self.drain_key(machine);
        let resp = self
            .kv_request(|mut kv| {
                let key = key.clone();
                async move { kv.delete(key, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    /// Every drain, with how far it has got, by machine id.
    pub async fn drains(&self) -> Result<Vec<DrainStatus>> {
        let (_, drains) = self.range::<Drain>(&self.drain_prefix()).await?;
        let drains: Vec<(MachineId, Drain)> = drains
            .into_iter()
            .filter_map(|(kv, d)| Some((self.drain_entry(kv.key_str().ok()?)?, d)))
            .collect();
        if drains.is_empty() {
            return Ok(Vec::new());
        }
        let count = || Some(GetOptions::new().with_prefix().with_count_only());
        let mut statuses = Vec::with_capacity(drains.len());
        // Two counting reads per machine, within etcd's limit on a transaction's operations.
        for chunk in drains.chunks(crate::MAX_TXN_OPS / 2) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .flat_map(|(machine, _)| {
                    [
                        TxnOp::get(self.machine_placements_prefix(machine), count()),
                        TxnOp::get(self.machine_stopping_prefix(machine), count()),
                    ]
                })
                .collect();
            let resp = self.txn(Txn::new().and_then(gets)).await?;
            let counts: Vec<usize> = resp
                .op_responses()
                .into_iter()
                .filter_map(|r| match r {
                    etcd_client::TxnOpResponse::Get(g) => Some(g.count().max(0) as usize),
                    _ => None,
                })
                .collect();
            for (i, (machine, drain)) in chunk.iter().enumerate() {
                statuses.push(DrainStatus {
                    machine: machine.clone(),
                    since: drain.since,
                    units: counts.get(2 * i).copied().unwrap_or_default(),
                    stopping: counts.get(2 * i + 1).copied().unwrap_or_default(),
                });
            }
        }
        Ok(statuses)
    }

    /// One machine's drain, if it is being drained.
    pub async fn drain_status(&self, machine: &MachineId) -> Result<Option<DrainStatus>> {
        let count = || Some(GetOptions::new().with_prefix().with_count_only());
        let txn = Txn::new().and_then(vec![
            TxnOp::get(self.drain_key(machine), None),
            TxnOp::get(self.machine_placements_prefix(machine), count()),
            TxnOp::get(self.machine_stopping_prefix(machine), count()),
        ]);
        let resp = self.txn(txn).await?;
        let [drain, units, stopping] = reads(&resp)?;
        let Some(kv) = drain.kvs().first() else {
            return Ok(None);
        };
        let drain = decode::<Drain>(kv)?;
        Ok(Some(DrainStatus {
            machine: machine.clone(),
            since: drain.since,
            units: units.count().max(0) as usize,
            stopping: stopping.count().max(0) as usize,
        }))
    }
}
