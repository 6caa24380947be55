//! systemd unit files as fleet sees them: the option model, fleet's parser and canonical
//! serialisation, the unit hash, unit names, and the `[X-Fleet]` placement requirements.
//!
//! This crate does no I/O; everything here is a pure function of its input.
//!
//! - [`mod@file`]: [`UnitFile`], [`UnitOption`], parsing ([`ParseError`]) and the canonical text;
//! - [`hash`]: [`UnitHash`], the SHA1 identity of a unit;
//! - [`name`]: [`UnitName`] validation and fleetctl's naming rules;
//! - [`requirements`]: [`Requirements`] read from `[X-Fleet]`;
//! - [`glob`]: [`glob_match`], the patterns of `Conflicts=` and `Replaces=`.
//!
//! ```
//! use fleet_units::{Requirements, UnitFile, UnitName};
//!
//! let text = "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nConflicts=%p@*.service\n";
//! let unit = UnitFile::parse(text).unwrap();
//! // `printf "[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nConflicts=%%p@*.service\n" | sha1sum`
//! assert_eq!(unit.hash().short(), "ca6d1df");
//!
//! let name = UnitName::parse("web@1.service").unwrap();
//! let (requirements, warnings) = Requirements::from_unit(&name, &unit).unwrap();
//! assert_eq!(requirements.conflicts, ["web@*.service"]);
//! assert!(warnings.is_empty());
//! ```

pub mod file;
pub mod glob;
pub mod hash;
pub mod name;
pub mod requirements;

pub use file::{ParseError, ParseErrorKind, UnitFile, UnitOption, LINE_MAX};
pub use glob::glob_match;
pub use hash::{HashParseError, UnitHash};
pub use name::{
    name_with_default_type, unit_name_from_arg, NameError, UnitName, TEMPLATE_TYPES, UNIT_NAME_MAX,
    UNIT_TYPES,
};
pub use requirements::{
    check_metadata, is_global, MetadataError, Requirements, RequirementsError, X_FLEET,
};
