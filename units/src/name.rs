//! Unit names: fleet's validation rules (its API `ValidateName`, after systemd's
//! `unit_name_is_valid`), the parts systemd specifiers refer to, and fleetctl's rule for
//! turning a command-line argument into a unit name.
//!
//! A unit name becomes a file name on every node, so a [`UnitName`] can only be built through
//! validation: it never contains `/`, NUL, whitespace or anything outside
//! `[A-Za-z0-9:_.@\-\\]`, and always ends in a known unit type.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest unit name, in bytes (systemd's `UNIT_NAME_MAX`).
pub const UNIT_NAME_MAX: usize = 256;

/// Unit types fleet accepts, as its API does.
pub const UNIT_TYPES: [&str; 13] = [
    "automount",
    "busname",
    "device",
    "mount",
    "path",
    "scope",
    "service",
    "slice",
    "snapshot",
    "socket",
    "swap",
    "target",
    "timer",
];

/// Unit types that may be templates or instances (names with `@`), as fleet's API allows.
pub const TEMPLATE_TYPES: [&str; 5] = ["path", "service", "socket", "target", "timer"];

/// A validated unit name such as `hello.service`, `foo@.service` or `foo@1.service`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UnitName(String);

/// Why a string is not a valid unit name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("unit name cannot be empty")]
    Empty,
    #[error("unit name {name:?} is {len} bytes long, the maximum is {max}", max = UNIT_NAME_MAX)]
    TooLong { name: String, len: usize },
    #[error("unit name {0:?} has no unit type suffix such as \".service\"")]
    MissingType(String),
    #[error("unit name {name:?} has unknown unit type {unit_type:?}")]
    UnknownType { name: String, unit_type: String },
    #[error("unit name {name:?}: unit type {unit_type:?} cannot be a template or instance")]
    TemplateType { name: String, unit_type: String },
    #[error("unit name {name:?} contains invalid character {ch:?}")]
    InvalidChar { name: String, ch: char },
    #[error("unit name {0:?} cannot start with '@'")]
    StartsWithAt(String),
    #[error("unit name {0:?} has nothing before its unit type")]
    EmptyPrefix(String),
}

fn is_valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')
}

impl UnitName {
    /// Validates `s` as a unit name, with fleet's rules plus systemd's "something before the
    /// type" (fleet let `.service` through).
    pub fn parse(s: &str) -> Result<UnitName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > UNIT_NAME_MAX {
            return Err(NameError::TooLong {
                name: s.to_string(),
                len: s.len(),
            });
        }
        let Some(dot) = s.rfind('.') else {
            return Err(NameError::MissingType(s.to_string()));
        };
        let unit_type = &s[dot + 1..];
        if unit_type.is_empty() {
            return Err(NameError::MissingType(s.to_string()));
        }
        if !UNIT_TYPES.contains(&unit_type) {
            return Err(NameError::UnknownType {
                name: s.to_string(),
                unit_type: unit_type.to_string(),
            });
        }
        let stem = &s[..dot];
        if stem.contains('@') && !TEMPLATE_TYPES.contains(&unit_type) {
            return Err(NameError::TemplateType {
                name: s.to_string(),
                unit_type: unit_type.to_string(),
            });
        }
        if let Some(ch) = stem.chars().find(|c| !is_valid_char(*c)) {
            return Err(NameError::InvalidChar {
                name: s.to_string(),
                ch,
            });
        }
        if s.starts_with('@') {
            return Err(NameError::StartsWithAt(s.to_string()));
        }
        if stem.is_empty() {
            return Err(NameError::EmptyPrefix(s.to_string()));
        }
        Ok(UnitName(s.to_string()))
    }

    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The type, after the last `.` (`service` for `foo@1.service`).
    pub fn unit_type(&self) -> &str {
        self.split().1
    }

    /// systemd `%N`: the name without its type (`foo@1` for `foo@1.service`).
    pub fn name_without_type(&self) -> &str {
        self.split().0
    }

    /// systemd `%p`: what comes before the first `@`, or the whole name without type when
    /// there is no `@`.
    pub fn prefix(&self) -> &str {
        let stem = self.name_without_type();
        stem.split_once('@').map_or(stem, |(prefix, _)| prefix)
    }

    /// systemd `%i`: what follows the first `@` (it may contain more `@`); `None` for plain
    /// names and for templates, whose instance is empty.
    pub fn instance(&self) -> Option<&str> {
        self.name_without_type()
            .split_once('@')
            .map(|(_, instance)| instance)
            .filter(|instance| !instance.is_empty())
    }

    /// A template such as `foo@.service`: it may be submitted but never activated.
    pub fn is_template(&self) -> bool {
        self.name_without_type().contains('@') && self.instance().is_none()
    }

    /// An instance of a template, such as `foo@1.service`.
    pub fn is_instance(&self) -> bool {
        self.instance().is_some()
    }

    /// The template a name belongs to: `foo@.service` for `foo@1.service`, itself for a
    /// template, `None` for a plain name.
    pub fn template(&self) -> Option<UnitName> {
        if !self.name_without_type().contains('@') {
            return None;
        }
        // Valid by construction: a valid prefix, '@', '.' and a template-capable type, and no
        // longer than this name.
        Some(UnitName(format!("{}@.{}", self.prefix(), self.unit_type())))
    }

    /// `(name without type, type)`; validation guarantees the `.`.
    fn split(&self) -> (&str, &str) {
        self.0.rsplit_once('.').unwrap_or((&self.0, ""))
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for UnitName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by `UnitName` be searched with a `&str`; order and hashing are the
/// string's, so this is consistent.
impl Borrow<str> for UnitName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for UnitName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<UnitName, NameError> {
        UnitName::parse(s)
    }
}

impl TryFrom<String> for UnitName {
    type Error = NameError;

    fn try_from(s: String) -> Result<UnitName, NameError> {
        UnitName::parse(&s)
    }
}

impl TryFrom<&str> for UnitName {
    type Error = NameError;

    fn try_from(s: &str) -> Result<UnitName, NameError> {
        UnitName::parse(s)
    }
}

impl From<UnitName> for String {
    fn from(name: UnitName) -> String {
        name.0
    }
}

/// fleetctl's default type: a name that does not already end in `.<unit type>` gets
/// `.service` appended. The result is not validated.
///
/// fleet v1.0 only recognised service, socket, timer, path, device, mount and automount here,
/// so `foo.target` became `foo.target.service`; this recognises every type in [`UNIT_TYPES`]
/// instead, so that targets, slices and the like can be named on the command line.
pub fn name_with_default_type(s: &str) -> String {
    let typed = s
        .rsplit_once('.')
        .is_some_and(|(_, suffix)| UNIT_TYPES.contains(&suffix));
    if typed {
        s.to_string()
    } else {
        format!("{s}.service")
    }
}

/// fleetctl's `unitNameMangle`: the last element of a path argument (Go's `path.Base`), with
/// the default type added. `units/hello` gives `hello.service`. The result is not validated.
pub fn unit_name_from_arg(arg: &str) -> String {
    name_with_default_type(path_base(arg))
}

/// Go's `path.Base`: "." for an empty path, "/" for a path of slashes, else the part after
/// the last slash once trailing slashes are gone.
fn path_base(path: &str) -> &str {
    if path.is_empty() {
        return ".";
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_and_their_parts() {
        // (name, %N, %p, %i, template?, instance?, template())
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            bool,
            bool,
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            // plain service
            ("hello.service", "hello", "hello", None, false, false, None),
            // instance of a template
            (
                "foo@1.service",
                "foo@1",
                "foo",
                Some("1"),
                false,
                true,
                Some("foo@.service"),
            ),
            // template: empty instance
            (
                "foo@.service",
                "foo@",
                "foo",
                None,
                true,
                false,
                Some("foo@.service"),
            ),
            // every allowed punctuation character, and a backslash escape
            (
                "a:b_c-d.e\\x.socket",
                "a:b_c-d.e\\x",
                "a:b_c-d.e\\x",
                None,
                false,
                false,
                None,
            ),
            // instance keeps further '@' (fleet splits at the first one)
            (
                "foo@bar@baz.service",
                "foo@bar@baz",
                "foo",
                Some("bar@baz"),
                false,
                true,
                Some("foo@.service"),
            ),
            // dots before the type belong to the name
            (
                "foo.1@2.timer",
                "foo.1@2",
                "foo.1",
                Some("2"),
                false,
                true,
                Some("foo.1@.timer"),
            ),
            // the type is after the last dot; ".." before it is a legal (odd) name
            ("..service", ".", ".", None, false, false, None),
            // non-template types are fine without '@'
            ("data.mount", "data", "data", None, false, false, None),
            (
                "multi-user.target",
                "multi-user",
                "multi-user",
                None,
                false,
                false,
                None,
            ),
        ];
        for &(input, stem, prefix, instance, tmpl, inst, template) in cases {
            let name = UnitName::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(name.as_str(), input);
            assert_eq!(name.name_without_type(), stem, "{input}");
            assert_eq!(name.prefix(), prefix, "{input}");
            assert_eq!(name.instance(), instance, "{input}");
            assert_eq!(name.is_template(), tmpl, "{input}");
            assert_eq!(name.is_instance(), inst, "{input}");
            assert_eq!(
                name.template().as_ref().map(UnitName::as_str),
                template,
                "{input}"
            );
            assert_eq!(
                name.unit_type(),
                input.rsplit('.').next().unwrap(),
                "{input}"
            );
        }
        // exactly the maximum length is allowed
        let longest = format!("{}.service", "a".repeat(UNIT_NAME_MAX - 8));
        assert_eq!(longest.len(), UNIT_NAME_MAX);
        assert!(UnitName::parse(&longest).is_ok());
    }

    #[test]
    fn invalid_names() {
        let too_long = format!("{}.service", "a".repeat(292));
        let cases: Vec<(&str, NameError)> = vec![
            // empty
            ("", NameError::Empty),
            // path traversal: '/' is not a name character
            (
                "../x.service",
                NameError::InvalidChar {
                    name: "../x.service".into(),
                    ch: '/',
                },
            ),
            (
                "x/y.service",
                NameError::InvalidChar {
                    name: "x/y.service".into(),
                    ch: '/',
                },
            ),
            // a bare slash or dot-dot has no type
            ("/", NameError::MissingType("/".into())),
            ("..", NameError::MissingType("..".into())),
            // cannot start with '@'
            (
                "@foo.service",
                NameError::StartsWithAt("@foo.service".into()),
            ),
            // no type at all
            ("foo", NameError::MissingType("foo".into())),
            // ends with a dot
            ("foo.", NameError::MissingType("foo.".into())),
            // unknown type
            (
                "foo.bogus",
                NameError::UnknownType {
                    name: "foo.bogus".into(),
                    unit_type: "bogus".into(),
                },
            ),
            // types are case-sensitive
            (
                "foo.Service",
                NameError::UnknownType {
                    name: "foo.Service".into(),
                    unit_type: "Service".into(),
                },
            ),
            // over 256 bytes
            (
                &too_long,
                NameError::TooLong {
                    name: too_long.clone(),
                    len: 300,
                },
            ),
            // NUL, space, newline, non-ASCII and '%' are not name characters
            (
                "a\0b.service",
                NameError::InvalidChar {
                    name: "a\0b.service".into(),
                    ch: '\0',
                },
            ),
            (
                "a b.service",
                NameError::InvalidChar {
                    name: "a b.service".into(),
                    ch: ' ',
                },
            ),
            (
                "a\nb.service",
                NameError::InvalidChar {
                    name: "a\nb.service".into(),
                    ch: '\n',
                },
            ),
            (
                "é.service",
                NameError::InvalidChar {
                    name: "é.service".into(),
                    ch: 'é',
                },
            ),
            (
                "a%i.service",
                NameError::InvalidChar {
                    name: "a%i.service".into(),
                    ch: '%',
                },
            ),
            // nothing before the type (fleet allowed this; systemd does not)
            (".service", NameError::EmptyPrefix(".service".into())),
            // templates only for path, service, socket, target, timer
            (
                "foo@.mount",
                NameError::TemplateType {
                    name: "foo@.mount".into(),
                    unit_type: "mount".into(),
                },
            ),
            (
                "foo@1.device",
                NameError::TemplateType {
                    name: "foo@1.device".into(),
                    unit_type: "device".into(),
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(UnitName::parse(input).unwrap_err(), want, "{input:?}");
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            UnitName::parse("x/y.service").unwrap_err().to_string(),
            "unit name \"x/y.service\" contains invalid character '/'"
        );
        assert_eq!(NameError::Empty.to_string(), "unit name cannot be empty");
    }

    #[test]
    fn serde_validates() {
        let name: UnitName = serde_json::from_str("\"foo@1.service\"").unwrap();
        assert_eq!(name.as_str(), "foo@1.service");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"foo@1.service\"");
        assert!(serde_json::from_str::<UnitName>("\"../x.service\"").is_err());
        assert!(serde_json::from_str::<UnitName>("\"\"").is_err());
    }

    #[test]
    fn ordering_and_lookup_by_str() {
        let mut names: Vec<UnitName> = ["b.service", "a@2.service", "a.service"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        names.sort();
        let sorted: Vec<&str> = names.iter().map(UnitName::as_str).collect();
        assert_eq!(sorted, ["a.service", "a@2.service", "b.service"]);
        let set: std::collections::BTreeSet<UnitName> = names.into_iter().collect();
        assert!(set.contains("a.service"));
    }

    #[test]
    fn default_type() {
        let cases = [
            // a bare name gets ".service"
            ("foo", "foo.service"),
            // a recognised type is kept
            ("foo.service", "foo.service"),
            ("foo@1.socket", "foo@1.socket"),
            // every known type counts, targets included (fleet v1.0 only knew seven)
            ("foo.target", "foo.target"),
            ("foo.slice", "foo.slice"),
            // an unknown suffix is not a type
            ("foo.link", "foo.link.service"),
            ("foo.bar", "foo.bar.service"),
            // a template name without type
            ("foo@", "foo@.service"),
            // empty stays nameless
            ("", ".service"),
        ];
        for (input, want) in cases {
            assert_eq!(name_with_default_type(input), want, "{input:?}");
        }
    }

    #[test]
    fn name_from_arg() {
        let cases = [
            // a path to a unit file gives its file name
            ("units/hello.service", "hello.service"),
            ("/abs/dir/foo@.service", "foo@.service"),
            // bare name, default type
            ("hello", "hello.service"),
            ("dir/hello", "hello.service"),
            // trailing slashes are dropped first (Go path.Base)
            ("dir/hello/", "hello.service"),
            // degenerate paths: "/" gives a name that does not validate, "" gives Go's "."
            ("/", "/.service"),
            ("", "..service"),
        ];
        for (input, want) in cases {
            assert_eq!(unit_name_from_arg(input), want, "{input:?}");
        }
        assert!(UnitName::parse(&unit_name_from_arg("/")).is_err());
    }
}
