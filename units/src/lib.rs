//! systemd unit files as fleet sees them: the option model, fleet's parser and canonical
//! serialisation, the unit hash, unit names, and the `[X-Fleet]` placement requirements.
//!
//! This crate does no I/O; everything here is a pure function of its input.
//!
//! - [`file`]: [`UnitFile`], [`UnitOption`], parsing ([`ParseError`]) and the canonical text;
//! - [`hash`]: [`UnitHash`], the SHA1 identity of a unit;
//! - [`name`]: [`UnitName`] validation and fleetctl's naming rules;
//! - [`requirements`]: [`Requirements`] read from `[X-Fleet]`;
//! - [`glob`]: [`glob_match`], the patterns of `Conflicts=` and `Replaces=`.

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
pub use requirements::{Requirements, RequirementsError, X_FLEET};
