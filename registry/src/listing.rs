//! Listings a page at a time, read from etcd a page at a time: range reads with a limit from
//! the key after the last one listed, never a whole prefix, so that a page costs the same at
//! 100 units as at 100,000.
//!
//! A page of units is joined with what the cluster knows of those units only: the `placed/`
//! index over the page's names (one range read bounded by the page's first and last names),
//! `unplaceable/` over the same names, and the states of the placed units by point reads (a
//! state's key starts with its machine, so the states of a page's units are spread over the
//! whole `states/` prefix; point reads in transactions of at most [`MAX_TXN_OPS`] gets are the
//! cheapest correct read). All of a page's reads are made at the revision of its first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use etcd_client::{GetOptions, KeyValue, Txn, TxnOp};
use fleet_units::UnitName;

use crate::{
    decode, reads, Error, Machine, MachineId, Registry, Result, Unit, UnitState, UnitView,
    MAX_TXN_OPS,
};

/// One page of a listing: its items, in key order, and where the next page starts (`None` on
/// the last page).
#[derive(Debug, Clone)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    /// The position of the last item listed, when more may follow: the next page is the one
    /// after it. An item created or removed in between changes nothing for the pages around it.
    pub next: Option<C>,
}

/// Where a listing of unit states stands: the machine and unit of the last state listed
/// (states are listed by machine, then unit).
pub type StateCursor = (MachineId, UnitName);

/// The largest page a listing reads in one request: etcd answers at most this many keys at
/// once, whatever the caller asks.
pub const MAX_PAGE: usize = 10_000;

/// How many keys a filtered scan (unit states by unit name) reads per request: more than a
/// page, since most of what it reads is left out.
pub(crate) const FILTERED_CHUNK: usize = 1_000;

/// The smallest key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only a prefix of 0xff bytes gets here: etcd's "to the end of the key space".
    vec![0]
}

/// The smallest key after `key`.
pub(crate) fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// One range read's answer: its revision, its keys and whether more keys follow in the range.
pub(crate) struct Chunk {
    pub(crate) revision: i64,
    pub(crate) kvs: Vec<KeyValue>,
    pub(crate) more: bool,
}

impl Registry {
    /// How many keys etcd has answered to this registry's listings, whole-prefix reads and
    /// reads of named units' states and machines (`located.rs`), all clones of it together:
    /// what tests and benchmarks use to check that a page reads a page's worth of keys, not a
    /// prefix, and that a unit's states cost the same whatever else the cluster holds.
    pub fn keys_read(&self) -> u64 {
        self.keys_read.load(Ordering::Relaxed)
    }

    /// How many key-value requests (reads, writes, transactions) this registry has made, all
    /// clones of it together, a request tried again on another etcd member counted once: what
    /// tests use to check what an operation costs etcd.
    pub fn kv_requests(&self) -> u64 {
        self.kv_requests.load(Ordering::Relaxed)
    }

    pub(crate) fn count_keys(&self, n: usize) {
        self.keys_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// At most `limit` keys of `[start, end)`, at `revision` (0: the newest).
    pub(crate) async fn chunk(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
        revision: i64,
    ) -> Result<Chunk> {
        let options = GetOptions::new()
            .with_range(end)
            .with_limit(limit.clamp(1, MAX_PAGE) as i64)
            .with_revision(revision);
        let resp = self
            .kv_request(|mut kv| {
                let (start, options) = (start.clone(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(revision);
        let more = resp.more();
        let mut resp = resp;
        let kvs = resp.take_kvs();
        self.count_keys(kvs.len());
        Ok(Chunk {
            revision,
            kvs,
            more,
        })
    }

    /// Where a listing of `prefix` starts: at the prefix, or just after `after` under it.
    pub(crate) fn start_after(prefix: &str, after: Option<&str>) -> Vec<u8> {
        match after {
            Some(after) => successor(format!("{prefix}{after}").as_bytes()),
            None => prefix.as_bytes().to_vec(),
        }
    }

    /// One page of units by name, at most `limit` (and at most [`MAX_PAGE`]), starting after
    /// the unit `after`; each with where it is placed, what its machine reports and why it
    /// cannot be placed, as [`Registry::unit_view`] has it. Reads the page's units and what
    /// concerns them only, all at one revision.
    pub async fn units_page(
        &self,
        after: Option<&UnitName>,
        limit: usize,
    ) -> Result<Page<UnitView, UnitName>> {
        let prefix = self.units_prefix();
        let start = Self::start_after(&prefix, after.map(UnitName::as_str));
        let chunk = self
            .chunk(start, prefix_end(prefix.as_bytes()), limit, 0)
            .await?;
        let revision = chunk.revision;
        let units = chunk
            .kvs
            .iter()
            .map(decode::<Unit>)
            .collect::<Result<Vec<Unit>>>()?;
        let next = match (chunk.more, units.last()) {
            (true, Some(last)) => Some(last.name.clone()),
            _ => None,
        };
        let (Some(first), Some(last)) = (units.first(), units.last()) else {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        };

        // `placed/<name>/<machine>`: the index keys of the page's units lie between the
        // smallest and the largest `<name>/` of the page. (Not between the first and the last
        // name's: `a.service/` sorts after `a.service-b.service/`, since '-' < '/'.)
        let index = self.key("placed/");
        let slashed: BTreeSet<String> = units.iter().map(|u| format!("{}/", u.name)).collect();
        let (Some(low), Some(high)) = (slashed.first(), slashed.last()) else {
            return Err(Error::Protocol("a page of units without names".into()));
        };
        let at = |options: GetOptions| Some(options.with_revision(revision));
        let unplaceable = self.unplaceable_prefix();
        let txn = Txn::new().and_then(vec![
            TxnOp::get(
                format!("{index}{low}"),
                at(GetOptions::new()
                    .with_range(prefix_end(format!("{index}{high}").as_bytes()))
                    .with_keys_only()),
            ),
            TxnOp::get(
                format!("{unplaceable}{}", first.name),
                at(GetOptions::new()
                    .with_range(successor(format!("{unplaceable}{}", last.name).as_bytes()))),
            ),
        ]);
        let [placed, reasons] = reads(&self.txn(txn).await?)?;
        self.count_keys(placed.kvs().len() + reasons.kvs().len());

        let in_page: BTreeSet<&str> = units.iter().map(|u| u.name.as_str()).collect();
        // More than one machine only while a duplicate placement waits for removal: the
        // first by machine id counts, as in `unit_view` and the engine.
        let mut machines: BTreeMap<UnitName, MachineId> = BTreeMap::new();
        for kv in placed.kvs() {
            let Some((name, machine)) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&index))
                .and_then(|rest| rest.split_once('/'))
                .filter(|(name, _)| in_page.contains(name))
            else {
                continue;
            };
            let (Ok(name), Ok(machine)) = (UnitName::parse(name), MachineId::parse(machine)) else {
                continue;
            };
            machines
                .entry(name)
                .and_modify(|m| {
                    if machine < *m {
                        *m = machine.clone();
                    }
                })
                .or_insert(machine);
        }
        let unplaceable: BTreeMap<UnitName, Vec<String>> = self
            .decode_unplaceable(reasons.kvs())?
            .into_iter()
            .filter(|(name, _)| in_page.contains(name.as_str()))
            .collect();

        let placed: Vec<(&UnitName, &MachineId)> = machines.iter().collect();
        let mut states: BTreeMap<UnitName, UnitState> = BTreeMap::new();
        for batch in placed.chunks(MAX_TXN_OPS) {
            let gets: Vec<TxnOp> = batch
                .iter()
                .map(|(name, machine)| {
                    TxnOp::get(self.state_key(machine, name), at(GetOptions::new()))
                })
                .collect();
            let resp = self.txn(Txn::new().and_then(gets)).await?;
            for read in resp.op_responses() {
                if let etcd_client::TxnOpResponse::Get(read) = read {
                    self.count_keys(read.kvs().len());
                    for kv in read.kvs() {
                        let state: UnitState = decode(kv)?;
                        states.insert(state.name.clone(), state);
                    }
                }
            }
        }

        let items = units
            .into_iter()
            .map(|unit| {
                let machine = machines.get(&unit.name).cloned();
                // A state from another machine than the placement's (a read racing a move)
                // is not this placement's.
                let state = states
                    .remove(&unit.name)
                    .filter(|s| Some(&s.machine_id) == machine.as_ref());
                let unplaceable = unplaceable.get(&unit.name).cloned();
                UnitView {
                    unit,
                    machine,
                    state,
                    unplaceable,
                }
            })
            .collect();
        Ok(Page { items, next })
    }

    /// One page of the unit states live machines published, by machine then unit, at most
    /// `limit` (and at most [`MAX_PAGE`]), starting after `after`. Only those of `machines`
    /// when it is not empty (their prefixes alone are read). Only those of `units` when it is
    /// not empty, read by point reads, never by scanning states (keyed by machine first):
    /// with `machines`, each of those machines' states of those units, placed there or not
    /// (what the machines report); without, the units' own states, on the machines they are
    /// placed on or, for a global unit, on any live machine (`located.rs`).
    pub async fn unit_states_page(
        &self,
        after: Option<&StateCursor>,
        limit: usize,
        machines: &BTreeSet<MachineId>,
        units: &BTreeSet<UnitName>,
    ) -> Result<Page<UnitState, StateCursor>> {
        let limit = limit.clamp(1, MAX_PAGE);
        if !units.is_empty() {
            let (items, more) = match machines.is_empty() {
                true => self.unit_states_by_unit(after, limit, units).await?,
                false => self.unit_states_on(after, limit, machines, units).await?,
            };
            let next = items
                .last()
                .filter(|_| more)
                .map(|s| (s.machine_id.clone(), s.name.clone()));
            return Ok(Page { items, next });
        }
        let prefix = self.states_prefix();
        let ranges: Vec<(Vec<u8>, Vec<u8>)> = match machines.is_empty() {
            true => vec![(prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))],
            false => machines
                .iter()
                .map(|m| {
                    let p = format!("{prefix}{m}/");
                    let end = prefix_end(p.as_bytes());
                    (p.into_bytes(), end)
                })
                .collect(),
        };
        let from = Self::start_after(&prefix, after.map(|(m, n)| format!("{m}/{n}")).as_deref());
        let mut items = Vec::new();
        let mut revision = 0;
        for (index, (start, end)) in ranges.iter().enumerate() {
            let mut start = start.clone().max(from.clone());
            while start < *end {
                let chunk = self
                    .chunk(start.clone(), end.clone(), limit, revision)
                    .await?;
                revision = chunk.revision;
                let count = chunk.kvs.len();
                for (i, kv) in chunk.kvs.iter().enumerate() {
                    let state: UnitState = decode(kv)?;
                    items.push(state);
                    if items.len() == limit {
                        let more = i + 1 < count || chunk.more || index + 1 < ranges.len();
                        let next = items
                            .last()
                            .filter(|_| more)
                            .map(|s| (s.machine_id.clone(), s.name.clone()));
                        return Ok(Page { items, next });
                    }
                }
                match (chunk.more, chunk.kvs.last()) {
                    (true, Some(last)) => start = successor(last.key()),
                    _ => break,
                }
            }
        }
        Ok(Page { items, next: None })
    }

    /// One page of the live machines by id, at most `limit` (and at most [`MAX_PAGE`]),
    /// starting after `after`.
    pub async fn machines_page(
        &self,
        after: Option<&MachineId>,
        limit: usize,
    ) -> Result<Page<Machine, MachineId>> {
        let prefix = self.machines_prefix();
        let start = Self::start_after(&prefix, after.map(MachineId::as_str));
        let chunk = self
            .chunk(start, prefix_end(prefix.as_bytes()), limit, 0)
            .await?;
        let items = chunk
            .kvs
            .iter()
            .map(decode::<Machine>)
            .collect::<Result<Vec<Machine>>>()?;
        let next = match (chunk.more, items.last()) {
            (true, Some(last)) => Some(last.id.clone()),
            _ => None,
        };
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_and_successors() {
        assert_eq!(prefix_end(b"a/units/"), b"a/units0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(successor(b"x"), b"x\0".to_vec());
        assert!(successor(b"x").as_slice() < b"x-".as_slice());
    }
}
