//! A unit's identity: the SHA1 of its canonical text, shown as hex (7 characters short,
//! 40 full), and carried as a hex string in JSON, like fleet's `unit.Hash`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// SHA1 of a unit's canonical serialisation (see [`crate::UnitFile::hash`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct UnitHash([u8; 20]);

/// Why a string is not a unit hash.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashParseError {
    #[error("unit hash {value:?} has {len} characters, expected 40 hex digits")]
    WrongLength { value: String, len: usize },
    #[error("unit hash {0:?} is not hexadecimal")]
    NotHex(String),
}

impl UnitHash {
    /// Wraps a raw SHA1 digest.
    pub const fn from_bytes(bytes: [u8; 20]) -> UnitHash {
        UnitHash(bytes)
    }

    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The first 7 hex digits, as fleetctl shows without `--full`.
    pub fn short(&self) -> String {
        let mut full = self.to_string();
        full.truncate(7);
        full
    }

    /// Whether this is the all-zero value fleet uses for "no hash".
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 20]
    }
}

impl fmt::Display for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnitHash({self})")
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl FromStr for UnitHash {
    type Err = HashParseError;

    /// Accepts exactly 40 hex digits, either case (as Go's `hex.DecodeString` does).
    fn from_str(s: &str) -> Result<UnitHash, HashParseError> {
        if s.len() != 40 {
            return Err(HashParseError::WrongLength {
                value: s.to_string(),
                len: s.chars().count(),
            });
        }
        let mut out = [0u8; 20];
        for (slot, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            match (hex_digit(pair[0]), hex_digit(pair[1])) {
                (Some(hi), Some(lo)) => *slot = hi << 4 | lo,
                _ => return Err(HashParseError::NotHex(s.to_string())),
            }
        }
        Ok(UnitHash(out))
    }
}

impl Serialize for UnitHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UnitHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<UnitHash, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha1("") = da39a3ee5e6b4b0d3255bfef95601890afd80709, the well-known empty digest.
    const EMPTY_SHA1: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";

    #[test]
    fn hex_round_trip_and_short() {
        let h: UnitHash = EMPTY_SHA1.parse().unwrap();
        assert_eq!(h.to_string(), EMPTY_SHA1);
        assert_eq!(h.short(), "da39a3e");
        assert!(!h.is_zero());
        assert!(UnitHash::default().is_zero());
        // upper case accepted, printed lower case
        let upper: UnitHash = EMPTY_SHA1.to_uppercase().parse().unwrap();
        assert_eq!(upper, h);
    }

    #[test]
    fn rejects_bad_hex() {
        let cases = [
            // too short
            (
                "da39a3e",
                HashParseError::WrongLength {
                    value: "da39a3e".into(),
                    len: 7,
                },
            ),
            // empty
            (
                "",
                HashParseError::WrongLength {
                    value: "".into(),
                    len: 0,
                },
            ),
            // right length, not hex
            (
                "zz39a3ee5e6b4b0d3255bfef95601890afd80709",
                HashParseError::NotHex("zz39a3ee5e6b4b0d3255bfef95601890afd80709".into()),
            ),
            // 40 bytes but multi-byte characters must not panic on slicing
            (
                "éé39a3ee5e6b4b0d3255bfef95601890afd807",
                HashParseError::NotHex("éé39a3ee5e6b4b0d3255bfef95601890afd807".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<UnitHash>().unwrap_err(), want, "{input:?}");
        }
    }

    #[test]
    fn serde_as_hex_string() {
        let h: UnitHash = EMPTY_SHA1.parse().unwrap();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{EMPTY_SHA1}\""));
        let back: UnitHash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert!(serde_json::from_str::<UnitHash>("\"abc\"").is_err());
    }
}
