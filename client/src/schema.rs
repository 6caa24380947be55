//! fleet's API v1 JSON shapes, as fleet's clients expect them.

use std::collections::BTreeMap;

use fleet_units::UnitOption;
use serde::{Deserialize, Serialize};

/// The response header of `GET /units/{name}/status` carrying `systemctl status`'s exit code.
pub const EXIT_STATUS_HEADER: &str = "x-fleet-exit-status";

/// A unit as the API shows it: what the user submitted plus where and how it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unit {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub options: Vec<UnitOption>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desired_state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_state: String,
    #[serde(
        default,
        rename = "machineID",
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    /// Why the engine cannot place the unit (not in fleet's API; fleet left users guessing).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Why the unit's last start failed on its machine, as systemd told (not in fleet's API:
    /// fleet reported such a unit as launched).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub start_failure: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitPage {
    #[serde(default)]
    pub units: Vec<Unit>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
}

/// The state of one unit on one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitState {
    pub name: String,
    pub hash: String,
    #[serde(rename = "machineID")]
    pub machine_id: String,
    pub systemd_load_state: String,
    pub systemd_active_state: String,
    pub systemd_sub_state: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitStatePage {
    #[serde(default)]
    pub states: Vec<UnitState>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub id: String,
    #[serde(rename = "primaryIP")]
    pub primary_ip: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachinePage {
    #[serde(default)]
    pub machines: Vec<Machine>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
}

/// A unit's versions (`GET /units/{name}/history`; not in fleet's API): the current one first,
/// then the previous ones, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitHistory {
    pub name: String,
    #[serde(default)]
    pub versions: Vec<UnitVersion>,
}

/// One version of a unit's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitVersion {
    /// The unit hash of that content (40 hex digits).
    pub hash: String,
    /// When it became the unit's content (RFC 3339, UTC); empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub since: String,
    /// When it stopped being the unit's content; empty for the current version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub until: String,
    /// Whether it is the unit's content now.
    #[serde(default)]
    pub current: bool,
    #[serde(default)]
    pub options: Vec<UnitOption>,
}

/// The body of `POST /units/{name}/rollback`: the version to go back to, by a prefix of its
/// hash; empty (or no body at all) for the version before the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// What `POST /units/{name}/rollback` did: the unit's content went from the version of hash
/// `from` to that of hash `to` (the same when it already was that version: nothing changed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// One event (`GET /events`; not in fleet's API): a decision fleet made, or something that
/// happened to a unit or a machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When (RFC 3339, UTC, to the millisecond), by the recording machine's clock.
    pub time: String,
    /// `placed`, `moved`, `unplaceable`, `declared-dead`, `fenced`, `unfenced`,
    /// `start-failed`, `drained`, `undrained`, `update-step` or `reverted`.
    pub kind: String,
    /// The unit it concerns, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
    /// The machine it concerns (id), if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub machine: String,
    /// What happened and why.
    #[serde(default)]
    pub message: String,
    /// The machine whose fleetd recorded it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// A page of events, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    #[serde(default)]
    pub events: Vec<Event>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
}

/// `{"error":{"code":N,"message":"..."}}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u16,
    pub message: String,
}

/// A page of a list: its items and the token of the next page (empty on the last).
pub trait Page: serde::de::DeserializeOwned {
    type Item;
    fn into_parts(self) -> (Vec<Self::Item>, String);
}

impl Page for UnitPage {
    type Item = Unit;
    fn into_parts(self) -> (Vec<Unit>, String) {
        (self.units, self.next_page_token)
    }
}

impl Page for UnitStatePage {
    type Item = UnitState;
    fn into_parts(self) -> (Vec<UnitState>, String) {
        (self.states, self.next_page_token)
    }
}

impl Page for MachinePage {
    type Item = Machine;
    fn into_parts(self) -> (Vec<Machine>, String) {
        (self.machines, self.next_page_token)
    }
}

/// A machine's drain (`/drains`; not in fleet's API): while it is drained the machine takes no
/// new units, and its non-global units move elsewhere one at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    pub machine: String,
    /// When the drain began (RFC 3339).
    pub since: String,
    /// `draining` while units are left on the machine or stopping there, then `drained`.
    pub state: String,
    /// Non-global units still placed on the machine.
    pub units: usize,
    /// Units taken off it that it is still stopping.
    pub stopping: usize,
}

/// A member removed by hand (`DELETE /machines/{machine}`; not in fleet's API): a machine
/// whose lease is gone, which the operator says is powered off for good.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineRemoval {
    pub machine: String,
    /// The units that were placed on it, which the engine now places elsewhere.
    pub units: usize,
}

/// Every drain (`GET /drains`), by machine id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainList {
    #[serde(default)]
    pub drains: Vec<Drain>,
}

/// A rolling update to ask for (`POST /updates`; not in fleet's API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRequest {
    /// The units to update, in the order to update them.
    pub units: Vec<String>,
    /// Their new content.
    pub options: Vec<UnitOption>,
    /// At most this many units down because of the update at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// How long a unit must run its new content without a break to be healthy (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy_ms: Option<u64>,
    /// How long a unit has to become healthy (default 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_deadline_ms: Option<u64>,
    /// Whether a unit that does not become healthy reverts the update.
    #[serde(default)]
    pub auto_revert: bool,
}

/// A rolling update and where it is (`/updates/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    pub id: String,
    pub created_ms: u64,
    pub options: Vec<UnitOption>,
    pub max_parallel: u32,
    pub min_healthy_ms: u64,
    pub healthy_deadline_ms: u64,
    pub auto_revert: bool,
    /// `running`, `paused`, `reverting`, `done`, `failed`, `reverted` or `aborted`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    pub units: Vec<UpdateUnit>,
    /// In a list of updates (`/updates`), the machines of global units are not entries of
    /// `units` but counted here: by unit, how many machines are in each phase. `/updates/{id}`
    /// lists them in `units`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub machines: BTreeMap<String, BTreeMap<String, usize>>,
}

impl Update {
    /// How many entries run somewhere (units, and machines of global units, listed in
    /// `units` or counted in `machines`), or of those how many are in `phase`.
    pub fn count(&self, phase: Option<&str>) -> usize {
        let wanted = |p: &str| phase.is_none_or(|want| want == p);
        let listed = self
            .units
            .iter()
            .filter(|x| !(x.global && x.machine.is_none()) && wanted(&x.phase))
            .count();
        let counted: usize = self
            .machines
            .values()
            .flatten()
            .filter(|(p, _)| wanted(p))
            .map(|(_, n)| n)
            .sum();
        listed + counted
    }
}

/// One unit of a rolling update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateUnit {
    pub name: String,
    /// For a global unit, the machine this entry updates; absent for a unit placed on one
    /// machine, and for a global unit's own content (written once every machine runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
    /// The hash of its content before the update.
    pub from: String,
    /// `pending`, `updating`, `healthy`, `failed`, `reverting` or `reverted`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl UpdateUnit {
    /// The unit, and for a global unit the machine of this entry (its first 8 characters
    /// unless `full`) or that it is the unit's own content.
    pub fn label(&self, full: bool) -> String {
        match (&self.machine, self.global) {
            (Some(m), _) if full => format!("{} on {m}", self.name),
            (Some(m), _) => format!("{} on {}", self.name, m.get(..8).unwrap_or(m)),
            (None, true) => format!("{} (its own content)", self.name),
            (None, false) => self.name.clone(),
        }
    }
}

/// Every rolling update kept, oldest first (`GET /updates`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateList {
    #[serde(default)]
    pub updates: Vec<Update>,
}

impl Page for EventPage {
    type Item = Event;
    fn into_parts(self) -> (Vec<Event>, String) {
        (self.events, self.next_page_token)
    }
}
