//! The records fleet keeps in etcd, as the rest of the project sees them.
//!
//! These are storage records, not the HTTP API's shapes (those live in `fleet-api`), although
//! they use the same camelCase field names so that the two read alike.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use fleet_units::{UnitFile, UnitHash, UnitName, UnitOption};
use serde::{Deserialize, Serialize};

/// A machine's identity: the contents of its `/etc/machine-id` (32 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid machine id {0:?}: expected 32 hexadecimal characters")]
pub struct InvalidMachineId(pub String);

impl MachineId {
    pub fn parse(s: &str) -> Result<MachineId, InvalidMachineId> {
        let s = s.trim();
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(MachineId(s.to_ascii_lowercase()))
        } else {
            Err(InvalidMachineId(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 8 characters, as fleetctl shows a machine.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MachineId {
    type Err = InvalidMachineId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineId::parse(s)
    }
}

impl TryFrom<String> for MachineId {
    type Error = InvalidMachineId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        MachineId::parse(&s)
    }
}

impl From<MachineId> for String {
    fn from(id: MachineId) -> String {
        id.0
    }
}

/// fleet's job states: what the user wants of a unit, and what an agent has done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Known to the cluster, not placed on any machine.
    Inactive,
    /// Placed, written and linked into systemd, not started.
    Loaded,
    /// Started.
    Launched,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job state {0:?}: expected inactive, loaded or launched")]
pub struct InvalidJobState(pub String);

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Inactive => "inactive",
            JobState::Loaded => "loaded",
            JobState::Launched => "launched",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = InvalidJobState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inactive" => Ok(JobState::Inactive),
            "loaded" => Ok(JobState::Loaded),
            "launched" => Ok(JobState::Launched),
            other => Err(InvalidJobState(other.to_string())),
        }
    }
}

/// A unit as the user submitted it, with the state the user wants it in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unit {
    pub name: UnitName,
    pub options: Vec<UnitOption>,
    pub desired_state: JobState,
}

impl Unit {
    pub fn file(&self) -> UnitFile {
        UnitFile::from_options(self.options.clone())
    }

    pub fn hash(&self) -> UnitHash {
        self.file().hash()
    }

    /// `Global=true` in `[X-Fleet]`: the unit runs on every matching machine and is not placed
    /// by the engine.
    pub fn is_global(&self) -> bool {
        fleet_units::is_global(&self.file())
    }
}

/// A machine that is alive: its record lives as long as its lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub id: MachineId,
    #[serde(rename = "primaryIP")]
    pub public_ip: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The fleetd version running there.
    #[serde(default)]
    pub version: String,
    /// `host:port` of the machine's peer listener (journal and status for other fleetds);
    /// `None` when it serves none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
}

/// What the engine tells one machine to do with one unit. Written under the machine's own key
/// prefix; it outlives the machine's lease, until the engine moves the unit or declares the
/// machine dead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub name: UnitName,
    pub options: Vec<UnitOption>,
    /// `Loaded` or `Launched`: inactive units are not placed.
    pub desired_state: JobState,
}

impl Placement {
    pub fn for_unit(unit: &Unit) -> Placement {
        Placement {
            name: unit.name.clone(),
            options: unit.options.clone(),
            desired_state: unit.desired_state,
        }
    }

    pub fn hash(&self) -> UnitHash {
        UnitFile::from_options(self.options.clone()).hash()
    }
}

/// The state of one unit on one machine, as that machine's agent last saw it in systemd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitState {
    pub name: UnitName,
    pub hash: UnitHash,
    #[serde(rename = "machineID")]
    pub machine_id: MachineId,
    /// What systemd has done for the agent: `launched` once the unit's start job finished,
    /// `loaded` once it is loaded (and any stop job finished).
    pub job_state: JobState,
    pub systemd_load_state: String,
    pub systemd_active_state: String,
    pub systemd_sub_state: String,
    /// Why the unit's last start failed (systemd's job result, the unit's state and the
    /// service's result), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<String>,
    /// What the unit's `HealthCheck` command said the last time it ran while the unit was
    /// active: `ok`, or `failing: ...` with why. `None` without a health check, or while the
    /// unit is not active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// A member of the cluster (`members/<id>`): a machine registered and not declared dead, and
/// the members it counts its majorities over (`fleet-quorum`): those it read at
/// `seen_revision`, `seen_members` of them, itself included.
///
/// A machine that keeps its readings apart (`readings/<id>`, [`MemberReading`]: every fleetd
/// since readings left the member record) writes this record only when it registers, with
/// `seen_revision` 0: an engine that counts over the record itself (an older fleetd) then
/// counts none of the members, so it can never judge that machine dead, only hold its units.
/// An older fleetd records each new reading here, before it counts over it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub machine: Machine,
    pub seen_revision: i64,
    pub seen_members: usize,
}

impl Member {
    /// The reading this record says its machine counts over.
    pub fn reading(&self) -> MemberReading {
        MemberReading {
            seen_revision: self.seen_revision,
            seen_members: self.seen_members,
        }
    }
}

/// A member's reading of the members (`readings/<id>`): those it counts its majorities over
/// (`fleet-quorum`), read at `seen_revision`, `seen_members` of them, itself included. The
/// machine writes it when it registers (with its member record) and each time it reads
/// other members, before it counts over them, so that the engine counts over no more than it
/// does. It is a key of its own, which only the engine follows: a member's new reading is no
/// event for the other members, who follow the member records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberReading {
    pub seen_revision: i64,
    pub seen_members: usize,
}
