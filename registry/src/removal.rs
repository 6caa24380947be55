//! Removing a member by hand: the operator's word that a machine whose lease is gone is
//! powered off for good.
//!
//! The engine declares a lost machine dead only once a majority of the members renewed their
//! leases at its request ([`Registry::declare_dead`]); a cluster that lost a majority of its
//! machines for good (one of two, two of three) therefore never does, and their units stay
//! held. Removing such a member deletes what declaring it dead deletes of it (its placements,
//! its member record and reading, what it was stopping, its versions of global units) and what
//! only concerns it as a member (its drain, its metadata overrides), each transaction on
//! condition that it still holds no lease and that its member record is the one read: the
//! engine then places its units elsewhere and the other members count their majorities
//! without it. It is not the engine's verdict, so it needs no leadership; what it rests on is
//! the operator's word, which nothing here can check beyond the machine's lease (the API also
//! asks its peer endpoint, and waits as long as the engine would before declaring it dead). A
//! machine removed while it still runs its units (cut off from etcd and from the removing
//! fleetd, but confirmed by machines it still reaches) would run them twice.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use fleet_units::UnitName;

use crate::{batched, decode, reads, MachineId, Member, Registry, Result};

/// A member of the cluster, as a removal by hand looks at it first.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    /// Its member record: the machine as it last registered (its peer address, say); none
    /// when the record does not decode (written by hand, say: it can still be removed).
    pub member: Option<Member>,
    /// The member record's revision: [`Registry::remove_member`] removes this record only.
    pub revision: i64,
    /// Whether it holds a lease now (its machine record is there): a live machine.
    pub live: bool,
}

/// What [`Registry::remove_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removed, with this many units that were placed on it: the engine places them
    /// elsewhere.
    Removed { units: usize },
    /// Not removed, or only some of its placements: it registered again, or its member
    /// record changed or is gone, since it was read (read it again).
    Changed,
}

impl Registry {
    /// The member `id` (none when it is not a member: never registered, or declared dead or
    /// removed since), and whether it is live, at one revision.
    pub async fn member_status(&self, id: &MachineId) -> Result<Option<MemberStatus>> {
        let resp = self
            .txn(Txn::new().and_then(vec![
                TxnOp::get(self.member_key(id), None),
                TxnOp::get(
                    self.machine_key(id),
                    Some(GetOptions::new().with_count_only()),
                ),
            ]))
            .await?;
        let [member, machine] = reads(&resp)?;
        let Some(kv) = member.kvs().first() else {
            return Ok(None);
        };
        Ok(Some(MemberStatus {
            member: decode(kv).ok(),
            revision: kv.mod_revision(),
            live: machine.count() > 0,
        }))
    }

    /// Removes the member `id` whose member record was read at `revision`
    /// ([`Registry::member_status`]), provided it still holds no lease (see the module's
    /// documentation for what this rests on): its placements (in as many transactions as
    /// they take), then the rest, the member record last, as declaring it dead does. Every
    /// transaction is conditioned on the lease being gone and the member record being the one
    /// read, so that a machine that registered again in between keeps what it has: once it
    /// is registered, its units leave it only through a stop.
    pub async fn remove_member(&self, id: &MachineId, revision: i64) -> Result<Removal> {
        let prefix = self.machine_placements_prefix(id);
        let resp = self
            .read_prefix(&prefix, GetOptions::new().with_keys_only(), None)
            .await?;
        let names: Vec<UnitName> = resp
            .kvs()
            .iter()
            .filter_map(|kv| UnitName::parse(kv.key_str().ok()?.strip_prefix(&prefix)?).ok())
            .collect();
        let mut last = self.member_removal(id).to_vec();
        last.push(TxnOp::delete(self.drain_key(id), None));
        last.push(TxnOp::delete(self.metadata_key(id), None));
        let batches = batched(names.iter().map(|name| self.placement_delete(id, name)))
            .into_iter()
            .map(|batch| batch.ops)
            .chain([last]);
        for ops in batches {
            let txn = Txn::new()
                .when(vec![
                    Compare::version(self.machine_key(id), CompareOp::Equal, 0),
                    Compare::mod_revision(self.member_key(id), CompareOp::Equal, revision),
                ])
                .and_then(ops);
            if !self.txn(txn).await?.succeeded() {
                return Ok(Removal::Changed);
            }
        }
        Ok(Removal::Removed { units: names.len() })
    }
}
