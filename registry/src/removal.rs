//! Removing a member by hand: the operator's word that a machine whose lease is gone is
//! powered off for good.
//!
//! The engine declares a lost machine dead only once a majority of the members renewed their
//! leases at its request ([`Registry::declare_dead`]); a cluster that lost a majority of its
//! machines for good (one of two, two of three) therefore never does, and their units stay
//! held. Removing such a member deletes what declaring it dead deletes of it (its member
//! record and reading, what it was stopping, its versions of global units) and what only
//! concerns it as a member (its drain, its metadata overrides), in one transaction, on
//! condition that it still holds no lease and that its member record is the one read: the
//! engine then places its units elsewhere (a placement on a machine that is no member is
//! deleted without a stop) and the other members count their majorities without it. It is
//! not the engine's verdict, so it needs no leadership; what it rests on is the operator's
//! word, which nothing here can check beyond the machine's lease and (in the API) its peer
//! endpoint not answering. A machine removed while it still runs its units (cut off from etcd
//! and from the removing fleetd, but confirmed by machines it still reaches) would run them
//! twice.

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};

use crate::{decode, reads, MachineId, Member, Registry, Result};

/// A member of the cluster, as a removal by hand looks at it first.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    /// Its member record: the machine as it last registered (its peer address, say).
    pub member: Member,
    /// The member record's revision: [`Registry::remove_member`] removes this record only.
    pub revision: i64,
    /// Whether it holds a lease now (its machine record is there): a live machine.
    pub live: bool,
    /// How many units are placed on it.
    pub placed: usize,
}

/// What [`Registry::remove_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removed: the engine places its units elsewhere.
    Removed,
    /// Not removed: it registered again, or its member record changed or is gone, since it
    /// was read (read it again).
    Changed,
}

impl Registry {
    /// The member `id` (none when it is not a member: never registered, or declared dead or
    /// removed since), whether it is live, and how many units are placed on it, at one
    /// revision.
    pub async fn member_status(&self, id: &MachineId) -> Result<Option<MemberStatus>> {
        let resp = self
            .txn(Txn::new().and_then(vec![
                TxnOp::get(self.member_key(id), None),
                TxnOp::get(
                    self.machine_key(id),
                    Some(GetOptions::new().with_count_only()),
                ),
                TxnOp::get(
                    self.machine_placements_prefix(id),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            ]))
            .await?;
        let [member, machine, placed] = reads(&resp)?;
        let Some(kv) = member.kvs().first() else {
            return Ok(None);
        };
        Ok(Some(MemberStatus {
            member: decode(kv)?,
            revision: kv.mod_revision(),
            live: machine.count() > 0,
            placed: usize::try_from(placed.count()).unwrap_or(usize::MAX),
        }))
    }

    /// Removes the member `id` whose member record was read at `revision`
    /// ([`Registry::member_status`]), provided it still holds no lease (see the module's
    /// documentation for what this rests on).
    pub async fn remove_member(&self, id: &MachineId, revision: i64) -> Result<Removal> {
        let prefixed = || Some(DeleteOptions::new().with_prefix());
        let txn = Txn::new()
            .when(vec![
                Compare::version(self.machine_key(id), CompareOp::Equal, 0),
                Compare::mod_revision(self.member_key(id), CompareOp::Equal, revision),
            ])
            .and_then(vec![
                TxnOp::delete(self.member_key(id), None),
                TxnOp::delete(self.reading_key(id), None),
                TxnOp::delete(self.machine_stopping_prefix(id), prefixed()),
                TxnOp::delete(self.machine_versions_prefix(id), prefixed()),
                TxnOp::delete(self.drain_key(id), None),
                TxnOp::delete(self.metadata_key(id), None),
            ]);
        Ok(if self.txn(txn).await?.succeeded() {
            Removal::Removed
        } else {
            Removal::Changed
        })
    }
}
