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
const MAX_UNAVAILABLE: &str = "MaxUnavailable";
const HEALTH_CHECK: &str = "HealthCheck";

/// Where a unit may be placed, from its `[X-Fleet]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// Only this machine (its full id, or the 8-character short id as fleet allowed).
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
    /// How many instances of this unit's template may be down at once because fleet moves
    /// them (a drain) or changes them: not in fleet v1.0, which had no such operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// A command (run with `/bin/sh -c` on the unit's machine while the unit is active) whose
    /// success says the unit is healthy: what rolling updates wait for besides systemd's
    /// state. Not in fleet v1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<String>,
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
    /// A `MaxUnavailable` that is not a whole number of at least 1.
    #[error("[X-Fleet] MaxUnavailable={0:?}: expected a whole number of at least 1")]
    MaxUnavailable(String),
}

/// Why a machine's metadata pair could never satisfy a `MachineMetadata=` item.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetadataError {
    #[error("metadata key and value must not be empty")]
    Empty,
    /// An item keeps exactly one `=`, and every `"` is dropped from quoted items.
    #[error("metadata {0:?} contains {1:?}, which no MachineMetadata item can match")]
    Unmatchable(String, char),
    /// Control characters (a line break, say) cannot be written in a unit file's value.
    #[error("metadata {0:?} contains a control character")]
    Control(String),
    /// `%n`, `%N`, `%p` and `%i` are replaced in every item before it is compared.
    #[error(
        "metadata {0:?} contains the specifier {1:?}, which a MachineMetadata item would expand"
    )]
    Specifier(String, &'static str),
}

/// Checks that a machine's metadata `key=value` can be matched by some `MachineMetadata=`
/// item, read as [`Requirements::from_unit`] reads them: both sides non-empty, without `=`,
/// `"`, control characters or specifiers. Metadata that fails this would silently never match.
pub fn check_metadata(key: &str, value: &str) -> Result<(), MetadataError> {
    if key.is_empty() || value.is_empty() {
        return Err(MetadataError::Empty);
    }
    for text in [key, value] {
        if let Some(c) = text.chars().find(|c| matches!(c, '=' | '"')) {
            return Err(MetadataError::Unmatchable(text.to_string(), c));
        }
        if text.chars().any(char::is_control) {
            return Err(MetadataError::Control(text.to_string()));
        }
        if let Some(s) = ["%n", "%N", "%p", "%i"]
            .into_iter()
            .find(|s| text.contains(s))
        {
            return Err(MetadataError::Specifier(text.to_string(), s));
        }
    }
    Ok(())
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

/// Whether a unit is global (the last `[X-Fleet] Global=` value is true), read exactly as
/// [`Requirements::from_unit`] reads it, without validating the rest of the section.
pub fn is_global(unit: &UnitFile) -> bool {
    unit.values(X_FLEET, GLOBAL)
        .flat_map(split_multivalue)
        .last()
        .is_some_and(|v| is_truthy(&v))
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
                MACHINE_ID | MACHINE_OF | MACHINE_METADATA | CONFLICTS | GLOBAL | REPLACES
                | MAX_UNAVAILABLE | HEALTH_CHECK => {}
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

        let max_unavailable = match values(MAX_UNAVAILABLE).last() {
            None => None,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Some(n),
                _ => return Err(RequirementsError::MaxUnavailable(v.clone())),
            },
        };

        // Whole, not split at spaces: a command line. The last one counts; empty is none.
        let health_check = unit
            .values(X_FLEET, HEALTH_CHECK)
            .last()
            .map(|v| expand_specifiers(v.trim(), name))
            .filter(|v| !v.is_empty());

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
            max_unavailable,
            health_check,
        };
        requirements.check()?;
        Ok((requirements, warnings))
    }

    /// Whether the machine called `machine_id` satisfies `MachineID`: fleet accepts the full id
    /// or its 8-character short form, nothing else (here compared regardless of ASCII case).
    /// True when there is no `MachineID` requirement.
    pub fn machine_id_matches(&self, machine_id: &str) -> bool {
        let Some(wanted) = self.machine_id.as_deref() else {
            return true;
        };
        let wanted = wanted.trim();
        let short = machine_id.get(..8).unwrap_or(machine_id);
        wanted.eq_ignore_ascii_case(machine_id) || wanted.eq_ignore_ascii_case(short)
    }

    /// The first `MachineMetadata` key (in key order) that `metadata` does not satisfy, with
    /// the values it would have accepted: the key is missing, or its value is none of them.
    pub fn unmatched_metadata<'a>(
        &'a self,
        metadata: &BTreeMap<String, String>,
    ) -> Option<(&'a str, &'a [String])> {
        self.metadata
            .iter()
            .find(|(key, accepted)| {
                metadata
                    .get(key.as_str())
                    .is_none_or(|value| !accepted.iter().any(|a| a == value))
            })
            .map(|(key, accepted)| (key.as_str(), accepted.as_slice()))
    }

    /// Whether a machine with `metadata` satisfies `MachineMetadata`: every key present, each
    /// with one of its accepted values (fleet's `HasMetadata`).
    pub fn metadata_matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.unmatched_metadata(metadata).is_none()
    }

    /// The first `Conflicts` pattern that matches the unit called `name`.
    pub fn conflicting_pattern(&self, name: &str) -> Option<&str> {
        self.conflicts
            .iter()
            .find(|p| glob_match(p, name))
            .map(String::as_str)
    }

    /// Whether a `Conflicts` pattern matches the unit called `name`.
    pub fn conflicts_with(&self, name: &str) -> bool {
        self.conflicting_pattern(name).is_some()
    }

    /// Whether a `Replaces` pattern matches the unit called `name`.
    pub fn replaces(&self, name: &str) -> bool {
        self.replaces.iter().any(|p| glob_match(p, name))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads requirements of `xfleet` (the body of an `[X-Fleet]` section) for unit `name`.
    fn read(name: &str, xfleet: &str) -> Result<(Requirements, Vec<String>), RequirementsError> {
        let unit = UnitFile::parse(&format!(
            "[Service]\nExecStart=/bin/true\n[X-Fleet]\n{xfleet}"
        ))
        .unwrap();
        Requirements::from_unit(&name.parse().unwrap(), &unit)
    }

    fn metadata(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn requirements_table() {
        let none = Requirements::default();
        let cases: Vec<(&str, &str, &str, Requirements)> = vec![
            ("no [X-Fleet] options", "a.service", "", none.clone()),
            (
                "MachineID",
                "a.service",
                "MachineID=abc123\n",
                Requirements { machine_id: Some("abc123".into()), ..none.clone() },
            ),
            (
                "MachineID: the first value wins",
                "a.service",
                "MachineID=one\nMachineID=two\n",
                Requirements { machine_id: Some("one".into()), ..none.clone() },
            ),
            (
                "MachineID wins over the deprecated X-ConditionMachineID",
                "a.service",
                "X-ConditionMachineID=old\nMachineID=new\n",
                Requirements { machine_id: Some("new".into()), ..none.clone() },
            ),
            (
                "deprecated X-ConditionMachineID alone",
                "a.service",
                "X-ConditionMachineID=old\n",
                Requirements { machine_id: Some("old".into()), ..none.clone() },
            ),
            (
                "legacy X-ConditionMachineBootID is the last fallback",
                "a.service",
                "X-ConditionMachineBootID=boot\n",
                Requirements { machine_id: Some("boot".into()), ..none.clone() },
            ),
            (
                "MachineID in quotes: quotes dropped",
                "a.service",
                "MachineID=\"abc\"\n",
                Requirements { machine_id: Some("abc".into()), ..none.clone() },
            ),
            (
                "MachineOf repeats; deprecated X-ConditionMachineOf values come first",
                "a.service",
                "MachineOf=b.service\nX-ConditionMachineOf=c.service\nMachineOf=d.service\n",
                Requirements {
                    machine_of: strings(&["c.service", "b.service", "d.service"]),
                    ..none.clone()
                },
            ),
            (
                "MachineOf with several quoted values on one line",
                "a.service",
                "MachineOf=\"b.service\" \"c.service\"\n",
                Requirements { machine_of: strings(&["b.service", "c.service"]), ..none.clone() },
            ),
            (
                "MachineOf is not split at whitespace",
                "a.service",
                "MachineOf=b.service c.service\n",
                Requirements { machine_of: strings(&["b.service c.service"]), ..none.clone() },
            ),
            (
                "MachineMetadata: several lines and quoted items; one key's values OR-ed, deduplicated",
                "a.service",
                "MachineMetadata=region=us\nMachineMetadata=\"disk=ssd\" \"region=eu\"\nMachineMetadata=region=us\n",
                Requirements {
                    metadata: metadata(&[("disk", &["ssd"]), ("region", &["us", "eu"])]),
                    ..none.clone()
                },
            ),
            (
                "MachineMetadata: a quoted value may hold spaces",
                "a.service",
                "MachineMetadata=\"name=a b\"\n",
                Requirements { metadata: metadata(&[("name", &["a b"])]), ..none.clone() },
            ),
            (
                "deprecated X-ConditionMachineMetadata",
                "a.service",
                "X-ConditionMachineMetadata=role=web\nMachineMetadata=role=db\n",
                Requirements { metadata: metadata(&[("role", &["web", "db"])]), ..none.clone() },
            ),
            (
                "Conflicts: whitespace-separated globs, repeatable; X-Conflicts first",
                "a.service",
                "Conflicts=b*.service  c.service\nX-Conflicts=old*.service\nConflicts=\td.service\n",
                Requirements {
                    conflicts: strings(&["old*.service", "b*.service", "c.service", "d.service"]),
                    ..none.clone()
                },
            ),
            (
                "Global true",
                "a.service",
                "Global=true\n",
                Requirements { global: true, ..none.clone() },
            ),
            (
                "Global: the last value wins",
                "a.service",
                "Global=true\nGlobal=false\n",
                none.clone(),
            ),
            (
                "Global: the last value wins, the other way",
                "a.service",
                "Global=no\nGlobal=YES\n",
                Requirements { global: true, ..none.clone() },
            ),
            (
                "Replaces: values kept whole, repeatable",
                "a.service",
                "Replaces=b@*.service\nReplaces=c.service\n",
                Requirements { replaces: strings(&["b@*.service", "c.service"]), ..none.clone() },
            ),
            (
                "specifiers %n %N %p %i in an instance",
                "web@8080.service",
                "MachineOf=%n-%N-%p-%i.service\n",
                Requirements {
                    machine_of: strings(&["web@8080.service-web@8080-web-8080.service"]),
                    ..none.clone()
                },
            ),
            (
                "specifiers in a plain unit: %i is empty, %p is the name",
                "db.service",
                "Conflicts=%p-*.service %i\n",
                Requirements { conflicts: strings(&["db-*.service"]), ..none.clone() },
            ),
            (
                "specifiers in metadata and the usual instance-conflict idiom",
                "web@1.service",
                "Conflicts=%p@*.service\nMachineMetadata=app=%p\n",
                Requirements {
                    conflicts: strings(&["web@*.service"]),
                    metadata: metadata(&[("app", &["web"])]),
                    ..none.clone()
                },
            ),
            (
                "%% is not an escape in fleet",
                "web@1.service",
                "MachineOf=%%i\n",
                Requirements { machine_of: strings(&["%1"]), ..none.clone() },
            ),
            (
                "keys are case-sensitive: lower-case global is unknown",
                "a.service",
                "global=true\n",
                none.clone(),
            ),
            (
                "other sections are not requirements",
                "a.service",
                "[Unit]\nMachineID=abc\n",
                none.clone(),
            ),
        ];
        for (rule, name, xfleet, want) in cases {
            let (got, _) = read(name, xfleet).unwrap_or_else(|e| panic!("{rule}: {e}"));
            assert_eq!(got, want, "{rule}");
        }
    }

    #[test]
    fn is_global_reads_global_like_from_unit() {
        for (text, want) in [
            ("[X-Fleet]\nGlobal=true\n", true),
            ("[X-Fleet]\nGlobal=t\n", true),
            ("[X-Fleet]\nGlobal=true\nGlobal=no\n", false),
            ("[X-Fleet]\nGlobal=\"false\" \"yes\"\n", true),
            ("[Service]\nGlobal=true\n", false),
        ] {
            let file = UnitFile::parse(text).unwrap();
            assert_eq!(is_global(&file), want, "{text:?}");
        }
    }

    #[test]
    fn truthy_values() {
        // systemd/fleet truthy values, any case; fleet also takes "t"
        for value in ["1", "yes", "true", "on", "t", "TRUE", "Yes", "On", "T"] {
            let (req, _) = read("a.service", &format!("Global={value}\n")).unwrap();
            assert!(req.global, "{value:?}");
        }
        for value in [
            "0", "no", "false", "off", "", "y", "2", "enabled", " true x",
        ] {
            let (req, _) = read("a.service", &format!("Global={value}\n")).unwrap();
            assert!(!req.global, "{value:?}");
        }
    }

    #[test]
    fn max_unavailable_is_a_whole_number_of_at_least_one() {
        let (req, warnings) = read("a@1.service", "MaxUnavailable=2\n").unwrap();
        assert_eq!(req.max_unavailable, Some(2));
        assert!(warnings.is_empty(), "{warnings:?}");
        let (req, _) = read("a@1.service", "MaxUnavailable=3\nMaxUnavailable= 1 \n").unwrap();
        assert_eq!(req.max_unavailable, Some(1), "the last value counts");
        let (req, _) = read("a@1.service", "Global=false\n").unwrap();
        assert_eq!(req.max_unavailable, None);
        for bad in ["0", "-1", "two", "", "1.5"] {
            let text = format!("MaxUnavailable={bad}\n");
            assert_eq!(
                read("a@1.service", &text),
                Err(RequirementsError::MaxUnavailable(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_health_check_is_one_command_line_with_specifiers_expanded() {
        let (req, warnings) = read(
            "web@8080.service",
            "HealthCheck=curl -sf http://localhost:%i/\n",
        )
        .unwrap();
        assert_eq!(
            req.health_check.as_deref(),
            Some("curl -sf http://localhost:8080/")
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let (req, _) = read("a.service", "HealthCheck=/bin/false\nHealthCheck=\n").unwrap();
        assert_eq!(req.health_check, None, "the last, empty, value counts");
    }

    #[test]
    fn warnings() {
        let cases: Vec<(&str, &str, Vec<&str>)> = vec![
            ("known keys give no warning", "MachineOf=b.service\nGlobal=false\n", vec![]),
            (
                "unknown key",
                "Bogus=1\n",
                vec!["unrecognized requirement in [X-Fleet] section: \"Bogus\""],
            ),
            (
                "deprecated aliases",
                "X-ConditionMachineOf=b.service\nX-Conflicts=c.service\n",
                vec![
                    "[X-Fleet] X-ConditionMachineOf is deprecated, use MachineOf instead",
                    "[X-Fleet] X-Conflicts is deprecated, use Conflicts instead",
                ],
            ),
            (
                "legacy boot id",
                "X-ConditionMachineBootID=x\n",
                vec!["[X-Fleet] X-ConditionMachineBootID is a legacy option taken as MachineID, use MachineID instead"],
            ),
            (
                "metadata items fleet ignores: no '=', two '=', an empty side",
                "MachineMetadata=\"plain\" \"a=b=c\" \"=v\" \"k=\" \"ok=1\"\n",
                vec![
                    "ignoring [X-Fleet] MachineMetadata item \"plain\": expected key=value",
                    "ignoring [X-Fleet] MachineMetadata item \"a=b=c\": expected key=value",
                    "ignoring [X-Fleet] MachineMetadata item \"=v\": expected key=value",
                    "ignoring [X-Fleet] MachineMetadata item \"k=\": expected key=value",
                ],
            ),
        ];
        for (rule, xfleet, want) in cases {
            let (_, got) = read("a.service", xfleet).unwrap_or_else(|e| panic!("{rule}: {e}"));
            assert_eq!(got, want, "{rule}");
        }
        let (req, _) = read("a.service", "MachineMetadata=\"plain\" \"ok=1\"\n").unwrap();
        assert_eq!(req.metadata, metadata(&[("ok", &["1"])]));
    }

    #[test]
    fn invalid_combinations() {
        use RequirementsError::*;
        let cases: Vec<(&str, &str, RequirementsError)> = vec![
            (
                "MachineID with MachineOf",
                "MachineID=m\nMachineOf=b.service\n",
                Incompatible {
                    key: "MachineID",
                    other: "MachineOf",
                },
            ),
            (
                "MachineID with Conflicts",
                "MachineID=m\nConflicts=b.service\n",
                Incompatible {
                    key: "MachineID",
                    other: "Conflicts",
                },
            ),
            (
                "MachineID with Global",
                "MachineID=m\nGlobal=true\n",
                Incompatible {
                    key: "MachineID",
                    other: "Global",
                },
            ),
            (
                "MachineID with Replaces",
                "MachineID=m\nReplaces=b.service\n",
                Incompatible {
                    key: "MachineID",
                    other: "Replaces",
                },
            ),
            (
                "deprecated MachineID alias counts as MachineID",
                "X-ConditionMachineID=m\nGlobal=1\n",
                Incompatible {
                    key: "MachineID",
                    other: "Global",
                },
            ),
            (
                "deprecated MachineOf alias counts as MachineOf",
                "Global=1\nX-ConditionMachineOf=b.service\n",
                Incompatible {
                    key: "Global",
                    other: "MachineOf",
                },
            ),
            (
                "Global with MachineOf",
                "Global=true\nMachineOf=b.service\n",
                Incompatible {
                    key: "Global",
                    other: "MachineOf",
                },
            ),
            (
                "Global with Replaces",
                "Global=true\nReplaces=b.service\n",
                Incompatible {
                    key: "Global",
                    other: "Replaces",
                },
            ),
            (
                "Conflicts with Replaces",
                "Conflicts=b.service\nReplaces=c.service\n",
                Incompatible {
                    key: "Conflicts",
                    other: "Replaces",
                },
            ),
            (
                "deprecated X-Conflicts alias counts as Conflicts",
                "X-Conflicts=b.service\nReplaces=c.service\n",
                Incompatible {
                    key: "Conflicts",
                    other: "Replaces",
                },
            ),
            (
                "a MachineOf peer matching a Conflicts glob cannot be satisfied",
                "MachineOf=db.service\nConflicts=d*.service\n",
                PeerConflicts {
                    peer: "db.service".into(),
                    pattern: "d*.service".into(),
                },
            ),
            (
                "a MachineOf peer matching a Replaces glob cannot be satisfied",
                "MachineOf=db.service\nReplaces=db.service\n",
                PeerReplaced {
                    peer: "db.service".into(),
                    pattern: "db.service".into(),
                },
            ),
            (
                "the peer check runs first, after specifier expansion",
                "MachineID=m\nMachineOf=%p.socket\nConflicts=*.socket\n",
                PeerConflicts {
                    peer: "a.socket".into(),
                    pattern: "*.socket".into(),
                },
            ),
        ];
        for (rule, xfleet, want) in cases {
            let err = read("a.service", xfleet).unwrap_err();
            assert_eq!(err, want, "{rule}");
        }
    }

    #[test]
    fn allowed_combinations() {
        // pairs fleet accepts
        let cases = [
            "MachineID=m\nMachineMetadata=a=b\n",
            "Global=true\nConflicts=x*.service\nMachineMetadata=a=b\n",
            "Global=false\nMachineOf=b.service\n",
            "MachineOf=b.service\nConflicts=c*.service\n",
            "MachineOf=b.service\nReplaces=c.service\n",
            "Replaces=c.service\nMachineMetadata=a=b\n",
        ];
        for xfleet in cases {
            assert!(read("a.service", xfleet).is_ok(), "{xfleet:?}");
        }
    }

    #[test]
    fn machine_id_matching() {
        let id = "0123456789abcdef0123456789abcdef";
        let cases: Vec<(&str, &str, bool)> = vec![
            ("no MachineID: any machine", "", true),
            (
                "full id",
                "MachineID=0123456789abcdef0123456789abcdef\n",
                true,
            ),
            ("8-char short id", "MachineID=01234567\n", true),
            (
                "upper case",
                "MachineID=0123456789ABCDEF0123456789ABCDEF\n",
                true,
            ),
            (
                "another prefix length is not the short id",
                "MachineID=0123\n",
                false,
            ),
            (
                "a longer prefix is not the short id",
                "MachineID=0123456789\n",
                false,
            ),
            ("another machine", "MachineID=fedcba98\n", false),
        ];
        for (rule, xfleet, want) in cases {
            let (req, _) = read("a.service", xfleet).unwrap();
            assert_eq!(req.machine_id_matches(id), want, "{rule}");
        }
    }

    #[test]
    fn metadata_matching() {
        let machine: BTreeMap<String, String> = [("role", "web"), ("region", "eu")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cases: Vec<(&str, &str, Option<&str>)> = vec![
            ("no requirement", "", None),
            ("one key, its value", "MachineMetadata=role=web\n", None),
            (
                "values of one key are OR-ed",
                "MachineMetadata=role=db\nMachineMetadata=role=web\n",
                None,
            ),
            (
                "keys are AND-ed",
                "MachineMetadata=\"role=web\" \"region=us\"\n",
                Some("region"),
            ),
            ("missing key", "MachineMetadata=disk=ssd\n", Some("disk")),
            ("wrong value", "MachineMetadata=role=db\n", Some("role")),
            (
                "values are case-sensitive",
                "MachineMetadata=role=WEB\n",
                Some("role"),
            ),
        ];
        for (rule, xfleet, want) in cases {
            let (req, _) = read("a.service", xfleet).unwrap();
            assert_eq!(
                req.unmatched_metadata(&machine).map(|(k, _)| k),
                want,
                "{rule}"
            );
            assert_eq!(req.metadata_matches(&machine), want.is_none(), "{rule}");
        }
    }

    #[test]
    fn metadata_that_no_item_can_match_is_refused() {
        for (key, value) in [
            ("role", "web"),
            ("rack no", "3 b"),
            ("a.b-c_d", "50%"),
            ("k", " v w "),
        ] {
            assert_eq!(check_metadata(key, value), Ok(()), "{key}={value}");
            let machine = BTreeMap::from([(key.to_string(), value.to_string())]);
            let (req, _) = read(
                "web@1.service",
                &format!("MachineMetadata=\"{key}={value}\"\n"),
            )
            .unwrap();
            assert!(req.metadata_matches(&machine), "{key}={value}");
        }
        for (key, value) in [
            ("", "x"),
            ("k", ""),
            ("a=b", "c"),
            ("k", "b=c"),
            ("k", "\"x\""),
            ("k\"", "x"),
            ("k", "a\nb"),
            ("k", "a\tb"),
            ("k", "%i"),
            ("%n", "v"),
        ] {
            assert!(check_metadata(key, value).is_err(), "{key:?}={value:?}");
        }
    }

    #[test]
    fn conflicts_and_replaces_matching() {
        let (req, _) = read("web@1.service", "Conflicts=%p@*.service db.service\n").unwrap();
        assert!(req.conflicts_with("web@2.service"));
        assert!(req.conflicts_with("db.service"));
        assert!(!req.conflicts_with("web.service"));
        assert_eq!(
            req.conflicting_pattern("web@3.service"),
            Some("web@*.service")
        );
        assert!(!req.replaces("web@2.service"));
        let (req, _) = read("a.service", "Replaces=old-*.service\n").unwrap();
        assert!(req.replaces("old-a.service"));
        assert!(!req.replaces("a.service"));
        assert!(!req.conflicts_with("old-a.service"));
    }

    #[test]
    fn error_messages() {
        let err = read("a.service", "MachineID=m\nGlobal=true\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot use MachineID together with Global in [X-Fleet]"
        );
        let err = read("a.service", "MachineOf=db.service\nConflicts=d*\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unresolvable requirements: MachineOf \"db.service\" matches Conflicts pattern \"d*\""
        );
    }

    #[test]
    fn multivalue_split_like_fleet() {
        // fleet's TestParseMultivalueLine vectors
        let cases: Vec<(&str, Vec<&str>)> = vec![
            // several quoted values
            (r#""bar" "ping" "pong""#, vec!["bar", "ping", "pong"]),
            // one quoted value
            (r#""bar""#, vec!["bar"]),
            // empty stays one empty value
            ("", vec![""]),
            (r#""""#, vec![""]),
            // not wrapped in quotes on both ends: taken whole
            (r#""bar"#, vec![r#""bar"#]),
            (r#"bar""#, vec![r#"bar""#]),
            (r#"foo\"bar"#, vec![r#"foo\"bar"#]),
            // a dangling quote gives an empty last value
            (r#""bar" ""#, vec!["bar", ""]),
            // no escapes: the backslash stays, every quote goes
            (r#""foo\"bar""#, vec![r#"foo\bar"#]),
            // two spaces between values give an empty value
            (r#""a"  "b""#, vec!["a", "", "b"]),
        ];
        for (input, want) in cases {
            assert_eq!(split_multivalue(input), want, "{input:?}");
        }
    }
}
