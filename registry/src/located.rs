//! The states and machines of named units, read from those units' own keys: each one's
//! `units/` and `global/` keys and `placed/` index entries, then its states by point reads
//! (`states/<machine>/<unit>`) on the machines it may have one on. What the API answers for
//! `GET /state?unitName=...`, `GET /state/{name}` and a unit's journal and status, each
//! costing the same whatever the number of other units and machines.
//!
//! **The states of a unit** are those published by the machine it is placed on, as for
//! [`Registry::unit_view`]; for a global unit (never placed) those published by any live
//! machine. A state hangs on its machine's lease, as the machine's record does, so the live
//! machines' ids (`machines/`, keys only: one key per machine) are every machine a global unit
//! can have one on. A state a machine still publishes for a unit no longer placed there (it
//! is stopping it before the unit moves, or the unit was destroyed or unloaded and that
//! machine's agent has not caught up) is not the unit's: it is found by asking that machine
//! (`machineID`), whose states are what it reports, whatever is placed there.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse, TxnResponse};
use fleet_units::UnitName;

use crate::{decode, Error, Machine, MachineId, Registry, Result, UnitState, MAX_TXN_OPS};

/// The fewest point reads of states one transaction makes while a page still needs items:
/// reads that find nothing (a global unit's machines that do not run it) cost a request each
/// otherwise, near the end of a page.
const MIN_STATE_READS: usize = 32;

/// Where one unit may have published states, as etcd has it at one revision.
#[derive(Debug, Clone, Default)]
struct Located {
    /// Whether `units/<name>` exists.
    exists: bool,
    /// Whether it is a global unit (`global/<name>` exists).
    global: bool,
    /// The machines it is placed on, by id: more than one only while a duplicate placement
    /// waits for removal (the engine keeps the first).
    placed: Vec<MachineId>,
}

/// Where named units may have published states, at one revision.
struct Whereabouts {
    revision: i64,
    units: BTreeMap<UnitName, Located>,
    /// The live machines, by id: read only when one of the units is global.
    machines: Vec<MachineId>,
}

impl Whereabouts {
    /// The machines `name` may have a state on, by id: where it is placed and, for a global
    /// unit, every live machine.
    fn machines_of(&self, name: &UnitName) -> BTreeSet<&MachineId> {
        let Some(located) = self.units.get(name) else {
            return BTreeSet::new();
        };
        let mut machines: BTreeSet<&MachineId> = located.placed.iter().collect();
        if located.global {
            machines.extend(&self.machines);
        }
        machines
    }
}

/// The machines a unit's journal and status are read from ([`Registry::unit_machines`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitMachines {
    pub global: bool,
    /// Live machines' records, by id: the one the unit is placed on (the first by id, as the
    /// engine keeps it), or for a global unit each one that published a state for it.
    pub machines: Vec<Machine>,
}

/// The answers to a transaction's reads, in order.
fn get_responses(resp: &TxnResponse) -> Vec<GetResponse> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()
}

fn revision_of(resp: &TxnResponse) -> i64 {
    resp.header().map(|h| h.revision()).unwrap_or_default()
}

impl Registry {
    /// Reads at `revision` (0: the newest) with `options`.
    fn at(revision: i64, options: GetOptions) -> Option<GetOptions> {
        Some(options.with_revision(revision))
    }

    /// Where `names` may have states: for each, its `units/` and `global/` keys and its
    /// `placed/` entries (keys only, three reads in one transaction per unit, at most
    /// [`MAX_TXN_OPS`] reads per transaction), and the live machines' ids if one is global.
    /// At `revision`, or at the first read's when it is 0.
    async fn locate(&self, names: &BTreeSet<UnitName>, mut revision: i64) -> Result<Whereabouts> {
        let names: Vec<&UnitName> = names.iter().collect();
        let mut units = BTreeMap::new();
        for batch in names.chunks(MAX_TXN_OPS / 3) {
            let keys = || GetOptions::new().with_keys_only();
            let gets: Vec<TxnOp> = batch
                .iter()
                .flat_map(|name| {
                    [
                        TxnOp::get(self.unit_key(name), Self::at(revision, keys())),
                        TxnOp::get(self.global_key(name), Self::at(revision, keys())),
                        TxnOp::get(
                            self.placed_prefix(name),
                            Self::at(revision, keys().with_prefix()),
                        ),
                    ]
                })
                .collect();
            let resp = self.txn(Txn::new().and_then(gets)).await?;
            if revision == 0 {
                revision = revision_of(&resp);
            }
            let reads = get_responses(&resp);
            if reads.len() != 3 * batch.len() {
                return Err(Error::Protocol(format!(
                    "a transaction of {} reads answered {}",
                    3 * batch.len(),
                    reads.len()
                )));
            }
            for (name, reads) in batch.iter().zip(reads.chunks(3)) {
                let [unit, global, placed] = reads else {
                    continue;
                };
                self.count_keys(unit.kvs().len() + global.kvs().len() + placed.kvs().len());
                let prefix = self.placed_prefix(name);
                let mut machines: Vec<MachineId> = placed
                    .kvs()
                    .iter()
                    .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix))
                    .filter_map(|id| MachineId::parse(id).ok())
                    .collect();
                machines.sort();
                let located = Located {
                    exists: !unit.kvs().is_empty(),
                    global: !global.kvs().is_empty(),
                    placed: machines,
                };
                units.insert((*name).clone(), located);
            }
        }
        let machines = if units.values().any(|l| l.global) {
            self.machine_ids(revision).await?
        } else {
            Vec::new()
        };
        Ok(Whereabouts {
            revision,
            units,
            machines,
        })
    }

    /// The live machines' ids at `revision`, by id: their records' keys only.
    async fn machine_ids(&self, revision: i64) -> Result<Vec<MachineId>> {
        let prefix = self.machines_prefix();
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_revision(revision);
        let resp = self
            .kv_request(|mut kv| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move { kv.get(prefix, Some(options)).await }
            })
            .await?;
        self.count_keys(resp.kvs().len());
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix))
            .filter_map(|id| MachineId::parse(id).ok())
            .collect())
    }

    /// The states at `keys` (in their order) at `revision` (0: the first read's), by point
    /// reads, until `limit` are found: those found, and whether more may follow (a state read
    /// beyond the limit, or keys left unread). Transactions of at most [`MAX_TXN_OPS`] reads,
    /// each no larger than the page still needs but at least [`MIN_STATE_READS`], so that a
    /// page answers at most that many keys beyond its items.
    pub(crate) async fn states_at(
        &self,
        keys: &[(MachineId, UnitName)],
        mut revision: i64,
        limit: usize,
    ) -> Result<(Vec<UnitState>, bool)> {
        let mut found: Vec<UnitState> = Vec::new();
        let mut next = 0;
        while next < keys.len() && found.len() < limit {
            let size = (limit - found.len())
                .clamp(MIN_STATE_READS, MAX_TXN_OPS)
                .min(keys.len() - next);
            let batch = &keys[next..next + size];
            let gets: Vec<TxnOp> = batch
                .iter()
                .map(|(machine, name)| {
                    TxnOp::get(
                        self.state_key(machine, name),
                        Self::at(revision, GetOptions::new()),
                    )
                })
                .collect();
            let resp = self.txn(Txn::new().and_then(gets)).await?;
            if revision == 0 {
                revision = revision_of(&resp);
            }
            for read in get_responses(&resp) {
                self.count_keys(read.kvs().len());
                let Some(kv) = read.kvs().first() else {
                    continue;
                };
                if found.len() == limit {
                    return Ok((found, true));
                }
                found.push(decode(kv)?);
            }
            next += size;
        }
        Ok((found, next < keys.len()))
    }

    /// The states of `units` (see the module's documentation), by machine then unit, after
    /// the position `after`, at most `limit`: one page of `GET /state?unitName=...`. Reads
    /// the units' whereabouts and point reads of states only: about a key per unit asked for,
    /// plus one per live machine when one of them is global, plus the page's states.
    pub(crate) async fn unit_states_by_unit(
        &self,
        after: Option<&(MachineId, UnitName)>,
        limit: usize,
        units: &BTreeSet<UnitName>,
    ) -> Result<(Vec<UnitState>, bool)> {
        let whereabouts = self.locate(units, 0).await?;
        let mut keys: Vec<(MachineId, UnitName)> = units
            .iter()
            .flat_map(|name| {
                whereabouts
                    .machines_of(name)
                    .into_iter()
                    .map(move |machine| (machine.clone(), name.clone()))
            })
            .filter(|key| after.is_none_or(|after| key > after))
            .collect();
        keys.sort();
        self.states_at(&keys, whereabouts.revision, limit).await
    }

    /// The states of `units` on each of `machines`, by machine then unit, after the position
    /// `after`, at most `limit`: what those machines report of those units, placed there or
    /// not (`GET /state?machineID=...&unitName=...`). Point reads only, one per pair.
    pub(crate) async fn unit_states_on(
        &self,
        after: Option<&(MachineId, UnitName)>,
        limit: usize,
        machines: &BTreeSet<MachineId>,
        units: &BTreeSet<UnitName>,
    ) -> Result<(Vec<UnitState>, bool)> {
        let keys: Vec<(MachineId, UnitName)> = machines
            .iter()
            .flat_map(|machine| {
                units
                    .iter()
                    .map(move |name| (machine.clone(), name.clone()))
            })
            .filter(|key| after.is_none_or(|after| key > after))
            .collect();
        // Already in key order: machines, then units, each sorted.
        self.states_at(&keys, 0, limit).await
    }

    /// The state of one unit (see the module's documentation) as the API's `GET
    /// /state/{name}` answers it: the one published by the machine it is placed on (the
    /// first by id), else the first by machine id of its states (a global unit's, or a
    /// duplicate placement's). `None` when it has none. Reads a few keys for a placed unit; a
    /// global unit's reads go through the live machines until one has a state.
    pub async fn unit_state(&self, name: &UnitName) -> Result<Option<UnitState>> {
        let names = BTreeSet::from([name.clone()]);
        let whereabouts = self.locate(&names, 0).await?;
        let revision = whereabouts.revision;
        let first = whereabouts
            .units
            .get(name)
            .and_then(|l| l.placed.first())
            .cloned();
        if let Some(machine) = &first {
            let key = [(machine.clone(), name.clone())];
            let (mut found, _) = self.states_at(&key, revision, 1).await?;
            if let Some(state) = found.pop() {
                return Ok(Some(state));
            }
        }
        let keys: Vec<(MachineId, UnitName)> = whereabouts
            .machines_of(name)
            .into_iter()
            .filter(|m| Some(*m) != first.as_ref())
            .map(|m| (m.clone(), name.clone()))
            .collect();
        let (mut found, _) = self.states_at(&keys, revision, 1).await?;
        Ok(found.pop())
    }

    /// The machines a unit's journal and status are read from: `None` when there is no such
    /// unit; else the live machine it is placed on (the first by id, if any), or for a
    /// global unit every live machine that published a state for it. At one revision: the
    /// unit's keys, then for a placed unit its machine's record, for a global one the live
    /// machines' ids, its states' keys on them, and the records of those that have one.
    pub async fn unit_machines(&self, name: &UnitName) -> Result<Option<UnitMachines>> {
        let names = BTreeSet::from([name.clone()]);
        let whereabouts = self.locate(&names, 0).await?;
        let revision = whereabouts.revision;
        let Some(located) = whereabouts.units.get(name).filter(|l| l.exists) else {
            return Ok(None);
        };
        let ids: Vec<MachineId> = if located.global {
            let mut reporting = Vec::new();
            for batch in whereabouts.machines.chunks(MAX_TXN_OPS) {
                let gets: Vec<TxnOp> = batch
                    .iter()
                    .map(|m| {
                        TxnOp::get(
                            self.state_key(m, name),
                            Self::at(revision, GetOptions::new().with_keys_only()),
                        )
                    })
                    .collect();
                let resp = self.txn(Txn::new().and_then(gets)).await?;
                for (machine, read) in batch.iter().zip(get_responses(&resp)) {
                    self.count_keys(read.kvs().len());
                    if !read.kvs().is_empty() {
                        reporting.push(machine.clone());
                    }
                }
            }
            reporting
        } else {
            located.placed.first().cloned().into_iter().collect()
        };
        let mut machines = Vec::new();
        for batch in ids.chunks(MAX_TXN_OPS) {
            let gets: Vec<TxnOp> = batch
                .iter()
                .map(|m| TxnOp::get(self.machine_key(m), Self::at(revision, GetOptions::new())))
                .collect();
            let resp = self.txn(Txn::new().and_then(gets)).await?;
            for read in get_responses(&resp) {
                self.count_keys(read.kvs().len());
                if let Some(kv) = read.kvs().first() {
                    machines.push(decode::<Machine>(kv)?);
                }
            }
        }
        Ok(Some(UnitMachines {
            global: located.global,
            machines,
        }))
    }
}
