//! How an update is kept in etcd, so that a global unit on thousands of machines can be
//! updated: the record is rewritten at every step that changes it (about three times per
//! entry), so it must not grow with the machines.
//!
//! An update without machine entries is kept whole in its record (`Layout::Inline`, the layout of
//! every update before this one). An update of global units (`Layout::Listed`) keeps the machines
//! of all of them in keys of their own, written once with the record, in the transaction that
//! creates it, and deleted with it: `update-machines/<id>/<k>`, one sequence of JSON lists of up to
//! [`MACHINES_PER_KEY`] machine ids each, in the order of the update's entries (each global unit's
//! machines together, in machine id order). Its record holds the other entries under `entries` (so
//! a fleetd that knows only the whole layout, which needs `units`, cannot read it and leaves it
//! alone rather than take it for an update without machines), and, per global unit, the phases of
//! its machines run-length encoded and the times and failure of only those in flight or failed: a
//! few hundred bytes whatever the number of machines. The times of an entry at rest (pending,
//! healthy, reverted) are not kept: nothing reads them.
//!
//! Read without its machine lists (what the engine does with an update that is over, and a
//! list of updates), a listed update has no machine entries, and says how many of each
//! global unit's machines are in each phase instead ([`Omitted`]).

use std::collections::{BTreeMap, HashMap};

use etcd_client::KeyValue;
use fleet_units::{UnitHash, UnitName};
use serde::{Deserialize, Serialize};

use super::{Phase, StoredUpdate, Update, UpdateState, UpdateUnit};
use crate::MachineId;

/// Which machine entries of a listed update to read ([`Layout`]).
#[derive(Clone, Copy)]
pub(crate) enum Machines<'a> {
    /// Its machines, from these lists or else from an earlier version of it (whose machines
    /// are the same: they are written once).
    From(&'a Lists, Option<&'a Update>),
    /// The same while it is not over; once over, none (what the engine keeps).
    WhileRunning(&'a Lists, Option<&'a Update>),
    /// None: how many are in each phase instead ([`StoredUpdate::omitted`]).
    Omitted,
}

/// The update whose record is `kv` (its value parsed: `value`), a listed one with or without
/// its machines as `machines` says.
pub(crate) fn stored_update_from(
    kv: &KeyValue,
    value: serde_json::Value,
    machines: Machines<'_>,
) -> std::result::Result<StoredUpdate, LayoutError> {
    let revision = kv.mod_revision();
    if !is_listed(&value) {
        return Ok(StoredUpdate {
            update: serde_json::from_value(value)?,
            revision,
            layout: Layout::Inline,
            omitted: Omitted::new(),
        });
    }
    let from = match machines {
        Machines::From(lists, earlier) => Some((lists, earlier)),
        Machines::WhileRunning(lists, earlier) if !is_over(&value) => Some((lists, earlier)),
        Machines::WhileRunning(..) | Machines::Omitted => None,
    };
    let ids = from.map(|(lists, earlier)| {
        let id = value.get("id").and_then(|v| v.as_str()).unwrap_or_default();
        let listed = lists.ids(id);
        match earlier {
            Some(e) if listed.is_empty() => {
                e.units.iter().filter_map(|u| u.machine.clone()).collect()
            }
            _ => listed,
        }
    });
    let (update, omitted) = decode_listed(value, ids.as_deref())?;
    Ok(StoredUpdate {
        update,
        revision,
        layout: Layout::Listed,
        omitted,
    })
}

/// How many machine ids one key of an update's machine lists holds (about 175 KB).
pub const MACHINES_PER_KEY: usize = 5_000;

/// The most machine entries (machines of global units) one update takes: their ids are
/// written in the transaction that creates it, within etcd's request size (1.5 MiB by
/// default), about 35 bytes each.
pub const MAX_UPDATE_MACHINES: usize = 20_000;

/// The most machines of global units an update takes down at once (`max_parallel`): its
/// record keeps the times and failure of each in flight or failed (about 100 bytes each),
/// rewritten at every step.
pub const MAX_PARALLEL_MACHINES: usize = 200;

/// How an update's record is laid out in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Every entry in the record.
    Inline,
    /// The machines of global units in keys of their own, their phases in the record.
    Listed,
}

impl Layout {
    /// The layout a new update is created with: listed when it has machine entries.
    pub fn for_update(update: &Update) -> Layout {
        if update.units.iter().any(|u| u.machine.is_some()) {
            Layout::Listed
        } else {
            Layout::Inline
        }
    }
}

/// The machine entries of one global unit of a listed update, as its record keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MachineRuns {
    name: UnitName,
    /// The unit's content before the update (the same for each of its machines).
    from: UnitHash,
    /// How many machines: the next this many ids of the update's machine lists.
    count: usize,
    /// Their phases in machine order: each phase and how many machines in a row are in it.
    runs: Vec<(Phase, usize)>,
    /// The entries in flight or that failed, by position: their times and failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    details: Vec<Detail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Detail {
    at: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    up_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
}

/// Whether a listed record keeps an entry's times and failure: in flight, failed, or with a
/// failure to tell. There are as many as the update takes down at once, and those that failed.
fn detailed(entry: &UpdateUnit) -> bool {
    entry.failure.is_some()
        || matches!(
            entry.phase,
            Phase::Updating | Phase::Reverting | Phase::Failed
        )
}

/// Why an update cannot be laid out as asked.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("the machine entries of {0} do not come right before its own content's entry, alike")]
    Unlisted(UnitName),
    #[error("the record names {count} machines, but {found} are listed")]
    Lists { count: usize, found: usize },
    #[error("the record's phases of {0} do not add up to its machines")]
    Runs(UnitName),
    #[error("the record's global units do not match its entries")]
    Order,
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// One global unit's machine entries in an update: its name, its content before, its entries.
type Group<'a> = (UnitName, UnitHash, Vec<&'a UpdateUnit>);

/// The entries of `update` without a machine, in order, and each global unit's machine
/// entries (which come right before its own content's entry).
fn split(update: &Update) -> Result<(Vec<UpdateUnit>, Vec<Group<'_>>), LayoutError> {
    let mut entries = Vec::new();
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut open: Option<Group<'_>> = None;
    for entry in &update.units {
        if entry.machine.is_some() {
            let group = open.get_or_insert_with(|| (entry.name.clone(), entry.from, Vec::new()));
            if group.0 != entry.name || !entry.global || entry.from != group.1 {
                return Err(LayoutError::Unlisted(entry.name.clone()));
            }
            group.2.push(entry);
            continue;
        }
        if let Some(group) = open.take() {
            if !(entry.is_global_content() && entry.name == group.0) {
                return Err(LayoutError::Unlisted(group.0));
            }
            groups.push(group);
        }
        entries.push(entry.clone());
    }
    if let Some((name, _, _)) = open {
        return Err(LayoutError::Unlisted(name));
    }
    Ok((entries, groups))
}

/// The record of a listed update.
pub(crate) fn encode_listed(update: &Update) -> Result<Vec<u8>, LayoutError> {
    let (entries, groups) = split(update)?;
    let machines: Vec<MachineRuns> = groups
        .into_iter()
        .map(|(name, from, group)| {
            let mut runs: Vec<(Phase, usize)> = Vec::new();
            let mut details = Vec::new();
            for (at, entry) in group.iter().enumerate() {
                match runs.last_mut() {
                    Some((phase, n)) if *phase == entry.phase => *n += 1,
                    _ => runs.push((entry.phase, 1)),
                }
                if detailed(entry) {
                    details.push(Detail {
                        at,
                        since_ms: entry.since_ms,
                        up_since_ms: entry.up_since_ms,
                        failure: entry.failure.clone(),
                    });
                }
            }
            MachineRuns {
                from,
                name,
                count: group.len(),
                runs,
                details,
            }
        })
        .collect();
    let mut record = serde_json::to_value(update)?;
    if let Some(fields) = record.as_object_mut() {
        fields.remove("units");
        fields.insert("entries".into(), serde_json::to_value(entries)?);
        fields.insert("machines".into(), serde_json::to_value(machines)?);
    }
    Ok(serde_json::to_vec(&record)?)
}

/// The machine entries of a listed update read without its machine lists: by global unit,
/// how many machines are in each phase.
pub type Omitted = BTreeMap<UnitName, BTreeMap<Phase, usize>>;

/// The keys (after the update's machine lists' prefix: `<k>`) and values of a listed
/// update's machine lists: the machines of all its global units, in the order of its entries.
pub(crate) fn machine_lists(update: &Update) -> Result<Vec<(String, Vec<u8>)>, LayoutError> {
    split(update)?;
    let ids: Vec<&str> = update
        .units
        .iter()
        .filter_map(|e| e.machine.as_ref().map(MachineId::as_str))
        .collect();
    ids.chunks(MACHINES_PER_KEY)
        .enumerate()
        .map(|(k, chunk)| Ok((k.to_string(), serde_json::to_vec(chunk)?)))
        .collect()
}

/// Machine lists read from etcd, by update id: each key's ids by its number.
#[derive(Debug, Default, Clone)]
pub(crate) struct Lists(HashMap<String, BTreeMap<usize, Vec<MachineId>>>);

impl Lists {
    /// Takes a list key's rest after the machine lists' prefix (`<id>/<k>`) and its value;
    /// `false` when the key is none.
    pub(crate) fn add(&mut self, rest: &str, value: &[u8]) -> bool {
        let Some((id, k)) = list_key(rest) else {
            return false;
        };
        let ids: Vec<MachineId> = match serde_json::from_slice::<Vec<String>>(value) {
            Ok(ids) => ids
                .iter()
                .filter_map(|s| MachineId::parse(s).ok())
                .collect(),
            Err(e) => {
                tracing::warn!(key = rest, error = %e, "ignoring an update's machine list that cannot be read");
                return true;
            }
        };
        self.0.entry(id.to_string()).or_default().insert(k, ids);
        true
    }

    /// Forgets a list key (its rest after the machine lists' prefix); `false` when the key is
    /// none.
    pub(crate) fn remove(&mut self, rest: &str) -> bool {
        let Some((id, k)) = list_key(rest) else {
            return false;
        };
        if let Some(lists) = self.0.get_mut(id) {
            lists.remove(&k);
            if lists.is_empty() {
                self.0.remove(id);
            }
        }
        true
    }

    /// Forgets every list of update `id`.
    pub(crate) fn forget(&mut self, id: &str) {
        self.0.remove(id);
    }

    /// The machines of update `id`, in order.
    pub(crate) fn ids(&self, id: &str) -> Vec<MachineId> {
        self.0
            .get(id)
            .map(|lists| lists.values().flatten().cloned().collect())
            .unwrap_or_default()
    }
}

/// The update id and number a list key's rest after the machine lists' prefix names.
fn list_key(rest: &str) -> Option<(&str, usize)> {
    let (id, k) = rest.split_once('/')?;
    Some((id, k.parse().ok()?))
}

/// Whether the update record `value` says it is over (or says nothing readable of it).
pub(crate) fn is_over(value: &serde_json::Value) -> bool {
    value
        .get("state")
        .and_then(|s| UpdateState::deserialize(s).ok())
        .is_none_or(UpdateState::is_final)
}

/// Whether `value` is a listed record (it has `entries`, not `units`).
pub(crate) fn is_listed(value: &serde_json::Value) -> bool {
    value.get("entries").is_some()
}

/// The update a listed record says, with the machines of its global units from `ids` (all
/// of them, in the order of its entries), or without them (`None`): then with how many are
/// in each phase.
pub(crate) fn decode_listed(
    mut record: serde_json::Value,
    ids: Option<&[MachineId]>,
) -> Result<(Update, Omitted), LayoutError> {
    let fields = record.as_object_mut().ok_or(LayoutError::Order)?;
    let entries: Vec<UpdateUnit> =
        serde_json::from_value(fields.remove("entries").unwrap_or_default())?;
    let machines: Vec<MachineRuns> =
        serde_json::from_value(fields.remove("machines").unwrap_or_default())?;
    let count: usize = machines.iter().map(|g| g.count).sum();
    if let Some(found) = ids.map(<[MachineId]>::len).filter(|&n| n != count) {
        return Err(LayoutError::Lists { count, found });
    }
    let mut ids = ids.map(|ids| ids.iter());
    let mut groups = machines.into_iter().peekable();
    let mut units = Vec::with_capacity(entries.len());
    let mut omitted = Omitted::new();
    for entry in entries {
        if entry.is_global_content() && groups.peek().is_some_and(|g| g.name == entry.name) {
            if let Some(group) = groups.next() {
                match ids.as_mut() {
                    Some(ids) => units.extend(expand(group, ids)?),
                    None => {
                        let phases = omitted.entry(group.name.clone()).or_default();
                        let mut count = 0;
                        for &(phase, n) in &group.runs {
                            *phases.entry(phase).or_default() += n;
                            count += n;
                        }
                        if count != group.count {
                            return Err(LayoutError::Runs(group.name));
                        }
                    }
                }
            }
        }
        units.push(entry);
    }
    if groups.next().is_some() {
        return Err(LayoutError::Order);
    }
    fields.insert("units".into(), serde_json::to_value(units)?);
    Ok((serde_json::from_value(record)?, omitted))
}

/// The machine entries of one global unit, its machines taken from `ids` (as many as it
/// has: they are there, counted before).
fn expand<'a>(
    group: MachineRuns,
    ids: &mut impl Iterator<Item = &'a MachineId>,
) -> Result<Vec<UpdateUnit>, LayoutError> {
    let machines: Vec<MachineId> = ids.by_ref().take(group.count).cloned().collect();
    let phases: Vec<Phase> = group
        .runs
        .iter()
        .flat_map(|&(phase, n)| std::iter::repeat_n(phase, n))
        .take(group.count + 1)
        .collect();
    if phases.len() != group.count {
        return Err(LayoutError::Runs(group.name));
    }
    let mut entries: Vec<UpdateUnit> = machines
        .into_iter()
        .zip(phases)
        .map(|(machine, phase)| UpdateUnit {
            name: group.name.clone(),
            machine: Some(machine),
            global: true,
            from: group.from,
            phase,
            since_ms: None,
            up_since_ms: None,
            failure: None,
        })
        .collect();
    for detail in group.details {
        let entry = entries
            .get_mut(detail.at)
            .ok_or_else(|| LayoutError::Runs(group.name.clone()))?;
        entry.since_ms = detail.since_ms;
        entry.up_since_ms = detail.up_since_ms;
        entry.failure = detail.failure;
    }
    Ok(entries)
}

/// `update` as a listed record keeps it: the times of its machine entries at rest dropped.
pub fn as_listed(update: &Update) -> Update {
    let mut kept = update.clone();
    for entry in kept.units.iter_mut().filter(|e| e.machine.is_some()) {
        if !detailed(entry) {
            entry.since_ms = None;
            entry.up_since_ms = None;
        }
    }
    kept
}

#[cfg(test)]
mod tests;
