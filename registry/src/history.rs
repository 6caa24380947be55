//! Each unit's history: the versions of its content it has had, so that it can be rolled back
//! to one of them.
//!
//! `history/<name>/<seq>` holds one version each ([`VersionRecord`]), `seq` a 20-digit
//! counter that grows with each version (so key order is age). The newest entry is the
//! unit's current version, a marker carrying its hash and since when it is current but not its
//! options (they are the unit's own record, `units/<name>`); older entries are previous
//! versions with their options and the time they stopped being current.
//!
//! Every change of a unit's content (a replacement through `PUT`, a rollback) writes its
//! history in the same transaction as the unit, conditioned on the unit's record being the one
//! read: the history cannot diverge from the unit. A version is recorded when the unit's hash
//! changes (fleet's identity of a unit: same options, same hash); a change of desired state is
//! not a version. At most [`HISTORY_DEPTH`] previous versions are kept.
//!
//! Destroying a unit removes its history with it (`Registry::delete_unit`): a unit submitted
//! again under that name starts a history of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, GetOptions, GetResponse, KeyValue, Txn, TxnOp};
use fleet_units::{UnitHash, UnitName, UnitOption};
use serde::{Deserialize, Serialize};

use crate::together::Creation;
use crate::{decode, encode, op_bytes, reads, Error, Registry, Result, Unit, REQUEST_BUDGET};

/// How many previous versions of a unit are kept, besides its current one: the oldest is
/// forgotten when one more would be kept.
pub const HISTORY_DEPTH: usize = 10;

/// One version of a unit, as stored under `history/<name>/<seq>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VersionRecord {
    pub hash: UnitHash,
    /// Unix seconds at which it became the unit's content; `None` when unknown (the unit was
    /// written by a fleetd that kept no history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Unix seconds at which it stopped being the unit's content; `None` for the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// Its options; `None` for the current version, whose options are the unit's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<UnitOption>>,
}

/// One version of a unit's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitVersion {
    pub hash: UnitHash,
    /// When it became the unit's content, if known.
    pub since: Option<SystemTime>,
    /// When it stopped being the unit's content (`None` for the current version).
    pub until: Option<SystemTime>,
    pub options: Vec<UnitOption>,
    /// Whether it is the unit's content now.
    pub current: bool,
}

/// A unit and the versions of its content: the current one first, then the previous ones,
/// newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitHistory {
    pub unit: Unit,
    pub versions: Vec<UnitVersion>,
}

/// A prefix of a unit hash (1 to 40 hexadecimal digits, either case), naming a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPrefix(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid unit hash {0:?}: expected 1 to 40 hexadecimal digits")]
pub struct InvalidHashPrefix(pub String);

impl HashPrefix {
    pub fn parse(s: &str) -> Result<HashPrefix, InvalidHashPrefix> {
        if (1..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(HashPrefix(s.to_ascii_lowercase()))
        } else {
            Err(InvalidHashPrefix(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn matches(&self, hash: &UnitHash) -> bool {
        hash.to_string().starts_with(&self.0)
    }
}

impl From<&UnitHash> for HashPrefix {
    fn from(hash: &UnitHash) -> HashPrefix {
        HashPrefix(hash.to_string())
    }
}

impl std::fmt::Display for HashPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a unit cannot be rolled back (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("unit {0} does not exist")]
    NoSuchUnit(UnitName),
    #[error("unit {0} has no previous version to roll back to")]
    NoPrevious(UnitName),
    #[error("unit {name} has no version {prefix}")]
    UnknownVersion { name: UnitName, prefix: HashPrefix },
    #[error(
        "{prefix} is ambiguous: unit {name} has versions {}",
        hashes.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", ")
    )]
    Ambiguous {
        name: UnitName,
        prefix: HashPrefix,
        hashes: Vec<UnitHash>,
    },
    #[error(transparent)]
    Registry(#[from] Error),
}

/// What a rollback did: the unit's content went from one version to another (`from == to`
/// when the version asked for was already the current one, and nothing was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    pub from: UnitHash,
    pub to: UnitHash,
}

impl UnitHistory {
    /// The version `target` names (by a prefix of its hash), or without a target the one before
    /// the current.
    pub fn resolve(&self, target: Option<&HashPrefix>) -> Result<&UnitVersion, RollbackError> {
        let name = || self.unit.name.clone();
        let Some(prefix) = target else {
            return self
                .versions
                .iter()
                .find(|v| !v.current && v.hash != self.unit.hash())
                .ok_or_else(|| RollbackError::NoPrevious(name()));
        };
        let mut hashes: Vec<UnitHash> = self
            .versions
            .iter()
            .map(|v| v.hash)
            .filter(|h| prefix.matches(h))
            .collect();
        hashes.sort();
        hashes.dedup();
        match hashes.as_slice() {
            [] => Err(RollbackError::UnknownVersion {
                name: name(),
                prefix: prefix.clone(),
            }),
            // The newest version with that hash (the current one, if it is).
            [hash] => self
                .versions
                .iter()
                .find(|v| v.hash == *hash)
                .ok_or_else(|| RollbackError::UnknownVersion {
                    name: name(),
                    prefix: prefix.clone(),
                }),
            _ => Err(RollbackError::Ambiguous {
                name: name(),
                prefix: prefix.clone(),
                hashes,
            }),
        }
    }
}

/// One key under a unit's history prefix, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: Vec<u8>,
    /// Its sequence number and record; `None` when the key or the value cannot be read (written
    /// by another version of fleet, say): left out, and removed by the next write.
    pub version: Option<(u64, VersionRecord)>,
}

/// The unit's record as read before a write.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Current<'a> {
    Absent,
    /// Stored but not readable: its content is unknown, and is not kept.
    Unreadable,
    Unit(&'a Unit),
}

/// A write to a unit's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HistoryOp {
    Put(u64, VersionRecord),
    Delete(Vec<u8>),
}

/// What writing content of hash `new` over `current` does to the unit's history (`entries`, in
/// key order), at `now` (Unix seconds). `keep_old`: whether the content replaced is kept (it is
/// not when it would make the request too large for etcd).
pub(crate) fn plan(
    current: Current<'_>,
    entries: &[Entry],
    new: UnitHash,
    now: u64,
    keep_old: bool,
) -> Vec<HistoryOp> {
    let marker = |seq| {
        HistoryOp::Put(
            seq,
            VersionRecord {
                hash: new,
                since: Some(now),
                until: None,
                options: None,
            },
        )
    };
    let next = entries
        .iter()
        .filter_map(|e| e.version.as_ref().map(|(seq, _)| seq + 1))
        .max()
        .unwrap_or(0);
    let unreadable = entries
        .iter()
        .filter(|e| e.version.is_none())
        .map(|e| HistoryOp::Delete(e.key.clone()));
    let old = match current {
        // A new unit: whatever a destroyed one of that name left is not its history.
        Current::Absent => {
            let mut ops: Vec<HistoryOp> = entries
                .iter()
                .map(|e| HistoryOp::Delete(e.key.clone()))
                .collect();
            ops.push(marker(next));
            return ops;
        }
        Current::Unit(unit) if unit.hash() == new => return Vec::new(),
        Current::Unit(unit) => Some(unit),
        Current::Unreadable => None,
    };
    let mut ops: Vec<HistoryOp> = unreadable.collect();
    // The current version's marker: the newest entry, if it names the unit's content.
    let newest = entries
        .iter()
        .filter_map(|e| e.version.as_ref().map(|v| (e, v)))
        .max_by_key(|(_, (seq, _))| *seq);
    let marker_entry = newest.filter(|(_, (_, record))| {
        record.options.is_none() && old.is_some_and(|u| u.hash() == record.hash)
    });
    // Markers that name no content (the unit was changed by a fleetd keeping no history) say
    // nothing that can be rolled back to.
    for (entry, (_, record)) in entries
        .iter()
        .filter_map(|e| e.version.as_ref().map(|v| (e, v)))
    {
        let is_marker = marker_entry.is_some_and(|(m, _)| m.key == entry.key);
        if record.options.is_none() && !is_marker {
            ops.push(HistoryOp::Delete(entry.key.clone()));
        }
    }
    let mut previous: Vec<&Entry> = entries
        .iter()
        .filter(|e| matches!(&e.version, Some((_, r)) if r.options.is_some()))
        .collect();
    previous.sort_by_key(|e| e.version.as_ref().map(|(seq, _)| *seq));
    let (old_seq, since) = match marker_entry {
        Some((_, (seq, record))) => (*seq, record.since),
        None => (next, None),
    };
    let mut kept_old = false;
    match old {
        Some(unit) if keep_old => {
            ops.push(HistoryOp::Put(
                old_seq,
                VersionRecord {
                    hash: unit.hash(),
                    since,
                    until: Some(now),
                    options: Some(unit.options.clone()),
                },
            ));
            kept_old = true;
        }
        _ => {
            if let Some((entry, _)) = marker_entry {
                ops.push(HistoryOp::Delete(entry.key.clone()));
            }
        }
    }
    ops.push(marker(old_seq + 1));
    let count = previous.len() + usize::from(kept_old);
    for entry in previous.iter().take(count.saturating_sub(HISTORY_DEPTH)) {
        ops.push(HistoryOp::Delete(entry.key.clone()));
    }
    ops
}

/// The history of `unit` from its entries.
pub(crate) fn history(unit: Unit, entries: &[Entry]) -> UnitHistory {
    let mut records: Vec<&(u64, VersionRecord)> =
        entries.iter().filter_map(|e| e.version.as_ref()).collect();
    records.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    let hash = unit.hash();
    let since = records
        .first()
        .filter(|(_, r)| r.options.is_none() && r.hash == hash)
        .and_then(|(_, r)| r.since);
    let mut versions = vec![UnitVersion {
        hash,
        since: since.map(time),
        until: None,
        options: unit.options.clone(),
        current: true,
    }];
    versions.extend(records.into_iter().filter_map(|(_, r)| {
        Some(UnitVersion {
            hash: r.hash,
            since: r.since.map(time),
            until: r.until.map(time),
            options: r.options.clone()?,
            current: false,
        })
    }));
    UnitHistory { unit, versions }
}

fn time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A unit's record and history as read in one transaction.
struct Read {
    /// The unit's record: `None` when absent.
    unit: Option<KeyValue>,
    entries: Vec<Entry>,
}

impl Registry {
    /// A unit name holds no '/', so this prefix covers exactly one unit's history.
    pub(crate) fn history_prefix(&self, name: &UnitName) -> String {
        self.key(&format!("history/{name}/"))
    }

    fn history_key(&self, name: &UnitName, seq: u64) -> String {
        format!("{}{seq:020}", self.history_prefix(name))
    }

    /// The two reads every write of a unit starts from: its record and its history.
    fn unit_and_history_reads(&self, name: &UnitName) -> Vec<TxnOp> {
        vec![
            TxnOp::get(self.unit_key(name), None),
            TxnOp::get(
                self.history_prefix(name),
                Some(GetOptions::new().with_prefix()),
            ),
        ]
    }

    fn decode_read(&self, name: &UnitName, unit: GetResponse, history: GetResponse) -> Read {
        let prefix = self.history_prefix(name);
        let entries = history
            .kvs()
            .iter()
            .map(|kv| {
                let seq = kv
                    .key_str()
                    .ok()
                    .and_then(|k| k.strip_prefix(prefix.as_str()))
                    .and_then(|s| s.parse::<u64>().ok());
                let record = decode::<VersionRecord>(kv).ok();
                Entry {
                    key: kv.key().to_vec(),
                    version: seq.zip(record),
                }
            })
            .collect();
        Read {
            unit: unit.kvs().first().cloned(),
            entries,
        }
    }

    /// The writes of `unit`'s record (and its global copy), and what they add to a request.
    /// A unit whose records would not fit one etcd request is refused ([`Error::TooLarge`]).
    fn unit_ops(&self, unit: &Unit) -> Result<(Vec<TxnOp>, usize)> {
        let value = encode(unit);
        let global = unit.is_global();
        let (unit_key, global_key) = (self.unit_key(&unit.name), self.global_key(&unit.name));
        // A global unit is written twice in one transaction: refuse it here, with a clear
        // error, rather than have etcd refuse the transaction. The current version's marker
        // in the history is small; the previous version is left out when it does not fit.
        let mut bytes = op_bytes(&unit_key, &value) + MARKER_BYTES;
        if global {
            bytes += op_bytes(&global_key, &value);
        }
        if bytes > REQUEST_BUDGET {
            return Err(Error::TooLarge {
                what: match global {
                    true => format!("global unit {} (stored twice)", unit.name),
                    false => format!("unit {}", unit.name),
                },
                bytes,
                limit: REQUEST_BUDGET,
            });
        }
        let second = match global {
            true => TxnOp::put(global_key, value.clone(), None),
            false => TxnOp::delete(global_key, None),
        };
        Ok((vec![TxnOp::put(unit_key, value, None), second], bytes))
    }

    /// The history writes of `plan`, and what they add to a request.
    fn history_ops(&self, name: &UnitName, plan: Vec<HistoryOp>) -> (Vec<TxnOp>, usize) {
        let mut bytes = 0;
        let ops = plan
            .into_iter()
            .map(|op| match op {
                HistoryOp::Put(seq, record) => {
                    let (key, value) = (self.history_key(name, seq), encode(&record));
                    bytes += op_bytes(&key, &value);
                    TxnOp::put(key, value, None)
                }
                HistoryOp::Delete(key) => {
                    bytes += key.len() + 32;
                    TxnOp::delete(key, None)
                }
            })
            .collect();
        (ops, bytes)
    }

    /// Writes `unit` over what `read` found, with its history, if the unit's record is still
    /// the one read. `Ok(None)` when written; otherwise the unit and its history as they are
    /// now, to plan again from.
    /// With `fence`, the write is also conditioned on that leadership ([`Error::NotLeader`]
    /// when it is lost).
    async fn write_over(
        &self,
        unit: &Unit,
        read: Read,
        now: u64,
        fence: Option<crate::Leadership>,
    ) -> Result<Option<Read>> {
        let (mut ops, bytes) = self.unit_ops(unit)?;
        let existing = read.unit.as_ref().map(|kv| decode::<Unit>(kv).ok());
        let current = match &existing {
            None => Current::Absent,
            Some(None) => Current::Unreadable,
            Some(Some(u)) => Current::Unit(u),
        };
        let new = unit.hash();
        let (mut history, history_bytes) =
            self.history_ops(&unit.name, plan(current, &read.entries, new, now, true));
        if bytes + history_bytes > REQUEST_BUDGET {
            tracing::warn!(
                unit = %unit.name,
                "the previous version of the unit is not kept in its history: with the new \
                 one it would not fit one etcd request"
            );
            history = self
                .history_ops(&unit.name, plan(current, &read.entries, new, now, false))
                .0;
        }
        ops.extend(history);
        let unit_key = self.unit_key(&unit.name);
        let guard = match &read.unit {
            Some(kv) => {
                Compare::mod_revision(unit_key.as_str(), CompareOp::Equal, kv.mod_revision())
            }
            None => Compare::create_revision(unit_key.as_str(), CompareOp::Equal, 0),
        };
        let mut when = vec![guard];
        let mut otherwise = self.unit_and_history_reads(&unit.name);
        if let Some(l) = fence {
            let leader = self.leader_key();
            when.push(Compare::create_revision(
                leader.as_str(),
                CompareOp::Equal,
                l.revision,
            ));
            otherwise.push(TxnOp::get(leader, None));
        }
        let txn = Txn::new().when(when).and_then(ops).or_else(otherwise);
        let resp = match self.txn(txn).await {
            Ok(resp) => resp,
            // etcd applies the write that crosses its quota and still answers "no space" (its
            // quota applier checks after applying): the unit may be stored after all.
            Err(e @ Error::OutOfSpace { .. }) => {
                let stored = self.get(unit_key).await?;
                return match stored.kvs().first() {
                    Some(kv) if kv.value() == encode(unit).as_slice() => Ok(None),
                    _ => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        if resp.succeeded() {
            return Ok(None);
        }
        if let Some(l) = fence {
            let [unit_read, history_read, leader] = reads(&resp)?;
            if leader.kvs().first().map(|kv| kv.create_revision()) != Some(l.revision) {
                return Err(Error::NotLeader);
            }
            return Ok(Some(self.decode_read(&unit.name, unit_read, history_read)));
        }
        let [unit_read, history_read] = reads(&resp)?;
        Ok(Some(self.decode_read(&unit.name, unit_read, history_read)))
    }

    /// Creates or replaces a unit (options and desired state together), keeping the content it
    /// replaces in its history. A unit whose records do not fit one etcd request is refused
    /// ([`Error::TooLarge`]) and nothing is written.
    pub(crate) async fn write_unit(&self, unit: &Unit) -> Result<()> {
        let now = now();
        // Most writes create a unit: try that first, in one request, and read what is there
        // otherwise.
        let Some(mut read) = self.try_create(unit, now).await? else {
            return Ok(());
        };
        // A concurrent change of the unit: plan again from what it is now.
        while let Some(again) = self.write_over(unit, read, now, None).await? {
            read = again;
        }
        Ok(())
    }

    /// Creates `unit` unless a unit of that name exists, in one request: `None` when it was
    /// created, otherwise the unit that is there, and nothing was written.
    pub async fn create_unit(&self, unit: &Unit) -> Result<Option<Unit>> {
        let Some(read) = self.try_create(unit, now()).await? else {
            return Ok(None);
        };
        match read.unit {
            Some(kv) => Ok(Some(decode(&kv)?)),
            // No unit, but history left behind (by an older fleetd): written over it.
            None => {
                self.write_unit(unit).await?;
                Ok(None)
            }
        }
    }

    /// Creates `unit` if neither it nor any history of its name exists: `None` when created,
    /// otherwise what is there.
    /// Sent with other creations waiting at the same time, in one transaction, if it can be
    /// (`together.rs`); otherwise on its own.
    async fn try_create(&self, unit: &Unit, now: u64) -> Result<Option<Read>> {
        let (mut ops, unit_bytes) = self.unit_ops(unit)?;
        let (history, history_bytes) = self.history_ops(
            &unit.name,
            plan(Current::Absent, &[], unit.hash(), now, true),
        );
        ops.extend(history);
        let when = vec![
            Compare::create_revision(self.unit_key(&unit.name), CompareOp::Equal, 0),
            Compare::create_revision(self.history_prefix(&unit.name), CompareOp::Equal, 0)
                .with_prefix(),
        ];
        // What the conditions and the global key's removal add besides.
        let other_bytes = self.unit_key(&unit.name).len()
            + self.history_prefix(&unit.name).len()
            + self.global_key(&unit.name).len()
            + 3 * 32;
        let creation = Creation {
            name: unit.name.clone(),
            when: when.clone(),
            ops: ops.clone(),
            bytes: unit_bytes + history_bytes + other_bytes,
        };
        if self.create_together(creation).await? {
            return Ok(None);
        }
        let txn = Txn::new()
            .when(when)
            .and_then(ops)
            .or_else(self.unit_and_history_reads(&unit.name));
        let resp = match self.txn(txn).await {
            Ok(resp) => resp,
            Err(e @ Error::OutOfSpace { .. }) => {
                let stored = self.get(self.unit_key(&unit.name)).await?;
                return match stored.kvs().first() {
                    Some(kv) if kv.value() == encode(unit).as_slice() => Ok(None),
                    _ => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        if resp.succeeded() {
            return Ok(None);
        }
        let [unit_read, history_read] = reads(&resp)?;
        Ok(Some(self.decode_read(&unit.name, unit_read, history_read)))
    }

    /// Gives a unit new content, keeping its desired state (the content it replaces goes to
    /// its history), conditioned on the unit read: a concurrent change is read again and kept.
    /// `false` when there is no such unit.
    /// With `fence`, conditioned on that leadership too (the engine's rolling updates).
    pub async fn set_unit_options(
        &self,
        name: &UnitName,
        options: &[UnitOption],
        fence: Option<crate::Leadership>,
    ) -> Result<bool> {
        let mut read = self.read_unit_and_history(name).await?;
        let now = now();
        loop {
            let Some(kv) = &read.unit else {
                return Ok(false);
            };
            let mut unit: Unit = decode(kv)?;
            if unit.options == options {
                return Ok(true);
            }
            unit.options = options.to_vec();
            match self.write_over(&unit, read, now, fence).await? {
                None => return Ok(true),
                Some(again) => read = again,
            }
        }
    }

    /// Reads a unit and its history together: `None` when there is no such unit.
    async fn read_unit_and_history(&self, name: &UnitName) -> Result<Read> {
        let resp = self
            .txn(Txn::new().and_then(self.unit_and_history_reads(name)))
            .await?;
        let [unit, history] = reads(&resp)?;
        Ok(self.decode_read(name, unit, history))
    }

    /// A unit and the versions of its content, the current one first: `None` when there is no
    /// such unit. One consistent read.
    pub async fn unit_history(&self, name: &UnitName) -> Result<Option<UnitHistory>> {
        let read = self.read_unit_and_history(name).await?;
        match &read.unit {
            None => Ok(None),
            Some(kv) => Ok(Some(history(decode(kv)?, &read.entries))),
        }
    }

    /// Replaces a unit's content with the version `target` names (a prefix of its hash), or
    /// without a target with the version before the current one, keeping its desired state:
    /// the agents restart it on that content as on any other change. The rollback is itself a
    /// change of content, recorded in the history (so it can be rolled back in turn).
    pub async fn rollback_unit(
        &self,
        name: &UnitName,
        target: Option<&HashPrefix>,
    ) -> Result<Rollback, RollbackError> {
        let mut read = self.read_unit_and_history(name).await?;
        // Once chosen, the version stays the one asked for if the unit changes meanwhile.
        let mut chosen: Option<HashPrefix> = target.cloned();
        let now = now();
        loop {
            let Some(kv) = &read.unit else {
                return Err(RollbackError::NoSuchUnit(name.clone()));
            };
            let history = history(decode(kv)?, &read.entries);
            let version = history.resolve(chosen.as_ref())?;
            let (from, to) = (history.unit.hash(), version.hash);
            if from == to {
                return Ok(Rollback { from, to });
            }
            chosen = Some(HashPrefix::from(&to));
            let unit = Unit {
                options: version.options.clone(),
                ..history.unit.clone()
            };
            match self.write_over(&unit, read, now, None).await? {
                None => return Ok(Rollback { from, to }),
                Some(again) => read = again,
            }
        }
    }
}

/// What the current version's marker adds to a request, at most (a hash, a time, its key).
const MARKER_BYTES: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobState;

    fn unit(exec: &str) -> Unit {
        Unit {
            name: UnitName::parse("web.service").unwrap(),
            options: vec![UnitOption::new("Service", "ExecStart", exec)],
            desired_state: JobState::Launched,
        }
    }

    fn key(seq: u64) -> Vec<u8> {
        format!("h/{seq:020}").into_bytes()
    }

    /// Applies `ops` to `entries`, as etcd would.
    fn apply(entries: &mut Vec<Entry>, ops: Vec<HistoryOp>) {
        for op in ops {
            match op {
                HistoryOp::Delete(k) => entries.retain(|e| e.key != k),
                HistoryOp::Put(seq, record) => {
                    entries.retain(|e| e.key != key(seq));
                    entries.push(Entry {
                        key: key(seq),
                        version: Some((seq, record)),
                    });
                }
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
    }

    /// Writes `next` over `current` at `now`, as the registry does, and returns what is current.
    fn write(entries: &mut Vec<Entry>, current: Option<&Unit>, next: Unit, now: u64) -> Unit {
        let current = current.map_or(Current::Absent, Current::Unit);
        apply(entries, plan(current, entries, next.hash(), now, true));
        next
    }

    #[test]
    fn each_change_of_content_keeps_the_previous_version_with_its_times() {
        let mut entries = Vec::new();
        let a = write(&mut entries, None, unit("/bin/a"), 100);
        let b = write(&mut entries, Some(&a), unit("/bin/b"), 200);
        // The same content (a change of desired state, say) is not a version.
        let mut b_stopped = b.clone();
        b_stopped.desired_state = JobState::Loaded;
        let b = write(&mut entries, Some(&b), b_stopped, 250);
        let history = history(b.clone(), &entries);
        assert_eq!(
            history
                .versions
                .iter()
                .map(|v| (v.hash, v.since, v.until, v.current))
                .collect::<Vec<_>>(),
            [
                (b.hash(), Some(time(200)), None, true),
                (a.hash(), Some(time(100)), Some(time(200)), false),
            ]
        );
        assert_eq!(history.versions[1].options, a.options);
    }

    #[test]
    fn retention_is_bounded() {
        let mut entries = Vec::new();
        let mut current = write(&mut entries, None, unit("/bin/0"), 0);
        for i in 1..=HISTORY_DEPTH as u64 + 5 {
            current = write(&mut entries, Some(&current), unit(&format!("/bin/{i}")), i);
        }
        assert_eq!(entries.len(), HISTORY_DEPTH + 1);
        let history = history(current, &entries);
        assert_eq!(history.versions.len(), HISTORY_DEPTH + 1);
        // The newest previous versions are the ones kept.
        assert_eq!(
            history.versions[HISTORY_DEPTH].hash,
            unit(&format!("/bin/{}", 5)).hash()
        );
    }

    #[test]
    fn a_new_unit_forgets_what_a_destroyed_one_left_and_unreadable_entries_go() {
        let mut entries = vec![
            Entry {
                key: key(3),
                version: None,
            },
            Entry {
                key: key(4),
                version: Some((
                    4,
                    VersionRecord {
                        hash: unit("/bin/x").hash(),
                        since: None,
                        until: None,
                        options: None,
                    },
                )),
            },
        ];
        let a = write(&mut entries, None, unit("/bin/a"), 10);
        assert_eq!(entries.len(), 1);
        assert_eq!(history(a, &entries).versions[0].since, Some(time(10)));
    }

    #[test]
    fn a_unit_written_without_history_keeps_its_content_with_an_unknown_start() {
        // The marker names content the unit no longer has (changed by a fleetd keeping no
        // history): that content is unknown and dropped, the unit's content is kept.
        let a = unit("/bin/a");
        let mut entries = Vec::new();
        write(&mut entries, None, unit("/bin/x"), 5);
        let b = write(&mut entries, Some(&a), unit("/bin/b"), 20);
        let history = history(b.clone(), &entries);
        assert_eq!(
            history
                .versions
                .iter()
                .map(|v| (v.hash, v.since, v.until))
                .collect::<Vec<_>>(),
            [
                (b.hash(), Some(time(20)), None),
                (a.hash(), None, Some(time(20)))
            ]
        );
        // Unreadable current content is not kept either.
        let mut entries = Vec::new();
        apply(
            &mut entries,
            plan(Current::Unreadable, &[], b.hash(), 30, true),
        );
        assert_eq!(history_of(&b, &entries), [b.hash()]);
    }

    #[test]
    fn a_previous_version_too_large_to_keep_is_left_out() {
        let mut entries = Vec::new();
        let a = write(&mut entries, None, unit("/bin/a"), 1);
        let ops = plan(Current::Unit(&a), &entries, unit("/bin/b").hash(), 2, false);
        apply(&mut entries, ops);
        assert_eq!(
            history_of(&unit("/bin/b"), &entries),
            [unit("/bin/b").hash()]
        );
    }

    fn history_of(unit: &Unit, entries: &[Entry]) -> Vec<UnitHash> {
        history(unit.clone(), entries)
            .versions
            .into_iter()
            .map(|v| v.hash)
            .collect()
    }

    #[test]
    fn versions_are_resolved_by_hash_prefix() {
        let mut entries = Vec::new();
        let a = write(&mut entries, None, unit("/bin/a"), 1);
        let b = write(&mut entries, Some(&a), unit("/bin/b"), 2);
        let c = write(&mut entries, Some(&b), unit("/bin/c"), 3);
        let history = history(c.clone(), &entries);
        let hash = |v: Result<&UnitVersion, RollbackError>| v.map(|v| v.hash);
        // No target: the version before the current.
        assert_eq!(hash(history.resolve(None)).unwrap(), b.hash());
        let full = |u: &Unit| HashPrefix::parse(&u.hash().to_string()).unwrap();
        assert_eq!(hash(history.resolve(Some(&full(&a)))).unwrap(), a.hash());
        let short = HashPrefix::parse(&a.hash().to_string()[..7].to_uppercase()).unwrap();
        assert_eq!(hash(history.resolve(Some(&short))).unwrap(), a.hash());
        assert_eq!(hash(history.resolve(Some(&full(&c)))).unwrap(), c.hash());
        let unknown = full(&unit("/bin/none"));
        assert!(matches!(
            history.resolve(Some(&unknown)),
            Err(RollbackError::UnknownVersion { .. })
        ));
        // The empty prefix is not one; a one-digit prefix several hashes share is ambiguous.
        assert!(HashPrefix::parse("").is_err());
        assert!(HashPrefix::parse("xyz").is_err());
        assert!(HashPrefix::parse(&"a".repeat(41)).is_err());
        let digits: Vec<char> = [&a, &b, &c]
            .iter()
            .map(|u| u.hash().to_string().chars().next().unwrap())
            .collect();
        for d in &digits {
            let prefix = HashPrefix::parse(&d.to_string()).unwrap();
            let sharing = digits.iter().filter(|x| *x == d).count();
            match history.resolve(Some(&prefix)) {
                Err(RollbackError::Ambiguous { hashes, .. }) => assert_eq!(hashes.len(), sharing),
                Ok(_) => assert_eq!(sharing, 1),
                Err(e) => panic!("{e}"),
            }
        }
        // A unit with no previous version has nothing to roll back to.
        assert!(matches!(
            super::history(a.clone(), &[]).resolve(None),
            Err(RollbackError::NoPrevious(_))
        ));
    }
}
