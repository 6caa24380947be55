//! Following where units are placed and what their machines report, for an observer waiting
//! on many units at once (the benchmarks, tests of large clusters).
//!
//! Reading the whole placements and states prefixes again until every unit is placed and
//! active costs etcd a read of every key each time: at 100,000 units, tens of megabytes several
//! times a second, on the etcd whose speed is being measured. A [`Progress`] reads the small
//! `placed/` index and the states once, at one revision, then follows one watch of both: etcd
//! sends each change once. It counts, for each unit, the machines it is placed on and those
//! reporting it active (active and launched), so a question about a unit is answered from
//! memory.

use std::collections::HashMap;

use etcd_client::GetOptions;
use fleet_units::UnitName;

use crate::watch::{Change, Changes};
use crate::{decode, JobState, Registry, Result, UnitState};

/// Where units are placed and which are reported active, kept from a watch.
pub struct Progress {
    changes: Changes,
    placed_prefix: String,
    states_prefix: String,
    /// Each `placed/` key's unit.
    placed_keys: HashMap<String, UnitName>,
    /// Each state key's unit, and whether that state says it is active.
    state_keys: HashMap<String, (UnitName, bool)>,
    /// How many machines each unit is placed on, and reported active by.
    placed: HashMap<UnitName, u32>,
    active: HashMap<UnitName, u32>,
}

/// Whether a published state says the unit runs: active in systemd, its start job done.
pub fn reports_active(state: &UnitState) -> bool {
    state.systemd_active_state == "active" && state.job_state == JobState::Launched
}

impl Progress {
    pub(crate) async fn open(registry: &Registry) -> Result<Progress> {
        let placed_prefix = registry.key("placed/");
        let states_prefix = registry.states_prefix();
        // The watch first, from now, then the reads, at one revision: see `Registry::watch_now`.
        let mut changes = registry
            .watch_now(&[placed_prefix.clone(), states_prefix.clone()])
            .await?;
        let index = registry
            .read_prefix(&placed_prefix, GetOptions::new().with_keys_only(), None)
            .await?;
        let revision = index.header().map(|h| h.revision()).unwrap_or_default();
        // The states, the bulk, a chunk at a time: 100,000 of them in one answer, from an etcd
        // still busy with their writes, broke its connection.
        let states = registry.read_chunks(&states_prefix, revision).await?;
        changes.skip_through(revision);
        let mut progress = Progress {
            changes,
            placed_prefix,
            states_prefix,
            placed_keys: HashMap::new(),
            state_keys: HashMap::new(),
            placed: HashMap::new(),
            active: HashMap::new(),
        };
        for kv in index.kvs().iter().chain(&states) {
            progress.apply(Change {
                kv: kv.clone(),
                deleted: false,
            })?;
        }
        Ok(progress)
    }

    /// Whether `name` is placed on some machine.
    pub fn is_placed(&self, name: &UnitName) -> bool {
        self.placed.contains_key(name)
    }

    /// How many machines `name` is placed on.
    pub fn placements(&self, name: &UnitName) -> u32 {
        self.placed.get(name).copied().unwrap_or_default()
    }

    /// Whether some machine reports `name` active ([`reports_active`]).
    pub fn is_active(&self, name: &UnitName) -> bool {
        self.active.contains_key(name)
    }

    /// Waits for the next changes and applies them, with every change that has arrived
    /// meanwhile; returns the units they concern. An error means the watch is over (open a
    /// new `Progress`) or a state could not be read (`Error::Corrupt`, as a read of the
    /// states would say).
    pub async fn changed(&mut self) -> Result<Vec<UnitName>> {
        use futures_util::FutureExt;
        let (_, changes) = self.changes.next_changes().await?;
        let mut units = self.apply_all(changes)?;
        while let Some(next) = self.changes.next_changes().now_or_never() {
            let (_, changes) = next?;
            units.extend(self.apply_all(changes)?);
        }
        Ok(units)
    }

    fn apply_all(&mut self, changes: Vec<Change>) -> Result<Vec<UnitName>> {
        let mut units = Vec::with_capacity(changes.len());
        for change in changes {
            units.extend(self.apply(change)?);
        }
        Ok(units)
    }

    /// Applies one change; the unit it concerns, if any.
    fn apply(&mut self, change: Change) -> Result<Option<UnitName>> {
        let Ok(key) = change.kv.key_str() else {
            return Ok(None);
        };
        if let Some(rest) = key.strip_prefix(&self.placed_prefix) {
            // placed/<unit>/<machine>
            let Some(name) = rest
                .split_once('/')
                .and_then(|(name, _)| UnitName::parse(name).ok())
            else {
                return Ok(None);
            };
            let was = self.placed_keys.remove(key).is_some();
            if !change.deleted {
                self.placed_keys.insert(key.to_string(), name.clone());
            }
            count(&mut self.placed, &name, was, !change.deleted);
            Ok(Some(name))
        } else if key.starts_with(&self.states_prefix) {
            let was = self.state_keys.remove(key);
            if let Some((name, active)) = &was {
                count(&mut self.active, name, *active, false);
            }
            if change.deleted {
                return Ok(was.map(|(name, _)| name));
            }
            let state: UnitState = decode(&change.kv)?;
            let active = reports_active(&state);
            count(&mut self.active, &state.name, false, active);
            self.state_keys
                .insert(key.to_string(), (state.name.clone(), active));
            Ok(Some(state.name))
        } else {
            Ok(None)
        }
    }
}

/// Updates a unit's count for one key that counted (`was`) and now counts (`is`) or not.
fn count(counts: &mut HashMap<UnitName, u32>, name: &UnitName, was: bool, is: bool) {
    match (was, is) {
        (false, true) => *counts.entry(name.clone()).or_default() += 1,
        (true, false) => {
            if let Some(n) = counts.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(name);
                }
            }
        }
        _ => {}
    }
}
