//! The `[X-Fleet]` section: placement requirements read the way fleet v1.0 reads them
//! (`job/job.go`), and the combinations fleet's API refuses (`api.ValidateOptions`).
//!
//! How fleet reads a value, in order:
//! 1. a value that starts and ends with `"` is split into several values at spaces outside
//!    quotes, and every `"` is dropped (`MachineMetadata="a=b" "c=d"`); this applies to every
//!    `[X-Fleet]` key;
//! 2. specifiers are replaced, one kind after the other: `%n`, `%N`, `%p`, `%i`.
//!
//! Then, per requirement: `MachineID` takes the first value (falling back to the deprecated
//! `X-ConditionMachineID`, then `X-ConditionMachineBootID`); `MachineOf` keeps every value
//! (`X-ConditionMachineOf` ones first); `Conflicts` splits every value at whitespace
//! (`X-Conflicts` ones first); `Replaces` keeps every value whole; `MachineMetadata` keeps
//! `key=value` items with exactly one `=` and both sides non-empty (`X-ConditionMachineMetadata`
//! ones first); `Global` is the last value, true if it is `1`, `yes`, `true`, `on` or `t` in
//! any case.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::file::UnitFile;
use crate::glob::glob_match;
use crate::name::UnitName;

/// The section fleet reads requirements from.
pub const X_FLEET: &str = "X-Fleet";

const MACHINE_ID: &str = "MachineID";
const X_MACHINE_ID: &str = "X-ConditionMachineID";
const X_MACHINE_BOOT_ID: &str = "X-ConditionMachineBootID";
const MACHINE_OF: &str = "MachineOf";
const X_MACHINE_OF: &str = "X-ConditionMachineOf";
const MACHINE_METADATA: &str = "MachineMetadata";
const X_MACHINE_METADATA: &str = "X-ConditionMachineMetadata";
const CONFLICTS: &str = "Conflicts";
const X_CONFLICTS: &str = "X-Conflicts";
const GLOBAL: &str = "Global";
const REPLACES: &str = "Replaces";

/// Where a unit may be placed, from its `[X-Fleet]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// Only this machine (a full machine id, or a prefix of one as fleet allowed).
    pub machine_id: Option<String>,
    /// Same machine as each of these units (their names, not patterns).
    pub machine_of: Vec<String>,
    /// Machine metadata: for each key, the accepted values (OR-ed); keys are AND-ed.
    /// Values are in first-seen order without repeats.
    pub metadata: BTreeMap<String, Vec<String>>,
    /// Never on a machine with a unit matching one of these globs.
    pub conflicts: Vec<String>,
    /// Run on every machine whose metadata matches.
    pub global: bool,
    /// Units matching these globs move away from the machine this unit is placed on.
    pub replaces: Vec<String>,
}

/// Requirements fleet's API refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequirementsError {
    /// Two requirements that cannot both hold, e.g. `MachineID` with `Global`.
    #[error("cannot use {key} together with {other} in [X-Fleet]")]
    Incompatible {
        key: &'static str,
        other: &'static str,
    },
    /// A `MachineOf` unit that a `Conflicts` pattern forbids.
    #[error("unresolvable requirements: MachineOf {peer:?} matches Conflicts pattern {pattern:?}")]
    PeerConflicts { peer: String, pattern: String },
    /// A `MachineOf` unit that a `Replaces` pattern would push away.
    #[error("unresolvable requirements: MachineOf {peer:?} matches Replaces pattern {pattern:?}")]
    PeerReplaced { peer: String, pattern: String },
}

/// fleet's `parseMultivalueLine`: only a value wrapped in double quotes is split; inside it,
/// spaces outside quotes separate values and every quote character is dropped.
fn split_multivalue(line: &str) -> Vec<String> {
    if !(line.starts_with('"') && line.ends_with('"')) {
        return vec![line.to_string()];
    }
    let mut values = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => values.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    values.push(current);
    values
}

/// fleet's `unitPrintf`: each specifier replaced everywhere in turn. Unit names cannot contain
/// `%`, so the order cannot create new specifiers; `%%` is not an escape in fleet.
fn expand_specifiers(value: &str, name: &UnitName) -> String {
    value
        .replace("%n", name.as_str())
        .replace("%N", name.name_without_type())
        .replace("%p", name.prefix())
        .replace("%i", name.instance().unwrap_or(""))
}

fn is_truthy(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "1" | "yes" | "true" | "on" | "t"
    )
}

impl Requirements {
    /// Reads `unit`'s `[X-Fleet]` section for the unit called `name` (which the specifiers
    /// refer to). Unknown keys, deprecated aliases and ignored metadata items come back as
    /// warnings; combinations fleet refuses are errors.
    pub fn from_unit(
        name: &UnitName,
        unit: &UnitFile,
    ) -> Result<(Requirements, Vec<String>), RequirementsError> {
        let mut warnings = Vec::new();
        // Expanded values per key, in file order.
        let mut by_key: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for option in unit.options().iter().filter(|o| o.section == X_FLEET) {
            let values = split_multivalue(&option.value)
                .into_iter()
                .map(|v| expand_specifiers(&v, name));
            by_key
                .entry(option.name.as_str())
                .or_default()
                .extend(values);
        }
        let values = |key: &str| by_key.get(key).map(Vec::as_slice).unwrap_or(&[]);

        for key in by_key.keys() {
            match *key {
                MACHINE_ID | MACHINE_OF | MACHINE_METADATA | CONFLICTS | GLOBAL | REPLACES => {}
                X_MACHINE_ID | X_MACHINE_OF | X_MACHINE_METADATA | X_CONFLICTS => {
                    let current = key.trim_start_matches("X-Condition").trim_start_matches("X-");
                    warnings.push(format!(
                        "[X-Fleet] {key} is deprecated, use {current} instead"
                    ));
                }
                X_MACHINE_BOOT_ID => warnings.push(format!(
                    "[X-Fleet] {key} is a legacy option taken as {MACHINE_ID}, use {MACHINE_ID} instead"
                )),
                other => warnings.push(format!(
                    "unrecognized requirement in [X-Fleet] section: {other:?}"
                )),
            }
        }

        let machine_id = [MACHINE_ID, X_MACHINE_ID, X_MACHINE_BOOT_ID]
            .iter()
            .find_map(|key| values(key).first().cloned());

        let machine_of: Vec<String> = [X_MACHINE_OF, MACHINE_OF]
            .iter()
            .flat_map(|key| values(key).iter().cloned())
            .collect();

        let conflicts: Vec<String> = [X_CONFLICTS, CONFLICTS]
            .iter()
            .flat_map(|key| values(key).iter())
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect();

        let replaces: Vec<String> = values(REPLACES).to_vec();

        let global = values(GLOBAL).last().is_some_and(|v| is_truthy(v));

        let mut metadata: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for key in [X_MACHINE_METADATA, MACHINE_METADATA] {
            for item in values(key) {
                let mut parts = item.split('=');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(k), Some(v), None) if !k.is_empty() && !v.is_empty() => {
                        let accepted = metadata.entry(k.to_string()).or_default();
                        if !accepted.iter().any(|a| a == v) {
                            accepted.push(v.to_string());
                        }
                    }
                    _ => warnings.push(format!(
                        "ignoring [X-Fleet] {key} item {item:?}: expected key=value"
                    )),
                }
            }
        }

        let requirements = Requirements {
            machine_id,
            machine_of,
            metadata,
            conflicts,
            global,
            replaces,
        };
        requirements.check()?;
        Ok((requirements, warnings))
    }

    /// fleet's API checks, in its order.
    fn check(&self) -> Result<(), RequirementsError> {
        for peer in &self.machine_of {
            if let Some(pattern) = self.conflicts.iter().find(|p| glob_match(p, peer)) {
                return Err(RequirementsError::PeerConflicts {
                    peer: peer.clone(),
                    pattern: pattern.clone(),
                });
            }
            if let Some(pattern) = self.replaces.iter().find(|p| glob_match(p, peer)) {
                return Err(RequirementsError::PeerReplaced {
                    peer: peer.clone(),
                    pattern: pattern.clone(),
                });
            }
        }
        let has_target = self.machine_id.is_some();
        let has_peers = !self.machine_of.is_empty();
        let has_conflicts = !self.conflicts.is_empty();
        let has_replaces = !self.replaces.is_empty();
        let incompatible = [
            (has_target && has_peers, MACHINE_ID, MACHINE_OF),
            (has_target && has_conflicts, MACHINE_ID, CONFLICTS),
            (has_target && self.global, MACHINE_ID, GLOBAL),
            (has_target && has_replaces, MACHINE_ID, REPLACES),
            (self.global && has_peers, GLOBAL, MACHINE_OF),
            (self.global && has_replaces, GLOBAL, REPLACES),
            (has_conflicts && has_replaces, CONFLICTS, REPLACES),
        ];
        match incompatible.into_iter().find(|(bad, _, _)| *bad) {
            Some((_, key, other)) => Err(RequirementsError::Incompatible { key, other }),
            None => Ok(()),
        }
    }
}
