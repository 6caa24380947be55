//! The unit file model: an ordered list of `(section, name, value)` options, fleet's parser
//! for unit file text, and fleet's canonical serialisation, which is what the unit hash covers.
//!
//! The parser reproduces the go-systemd deserializer vendored in fleet v1.0, quirks included,
//! because the options it yields decide a unit's hash and what systemd finally reads:
//!
//! - text before the first `[Section]` header is skipped, not rejected (fleet tests this);
//! - a value continued with a trailing `\` keeps the backslash and the newline, and the next
//!   physical line is taken verbatim even when it looks like a comment or a section header;
//! - a comment line ending in `\` also swallows the next line;
//! - sections without options leave no trace in the model;
//! - physical lines of 2048 bytes or more are rejected, as systemd would truncate them.
//!
//! Deliberate differences, all on inputs fleet mishandles: CRLF line ends are handled fully
//! (fleet only trims the `\r` as whitespace, so a `\`-continuation in a CRLF file did not
//! continue), and a section header must close with `]` on its own line (fleet read on across
//! newlines and made a section name containing them).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use thiserror::Error;

use crate::hash::UnitHash;

/// Longest physical line accepted, in bytes, like systemd's `LINE_MAX`; a line this long or
/// longer is an error rather than being silently truncated by systemd later.
pub const LINE_MAX: usize = 2048;

/// One `Name=Value` line of a unit file, with the section it sits in.
///
/// Field names match fleet's API JSON (`{"section","name","value"}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitOption {
    pub section: String,
    pub name: String,
    pub value: String,
}

impl UnitOption {
    /// Builds an option from its three parts.
    pub fn new(
        section: impl Into<String>,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> UnitOption {
        UnitOption {
            section: section.into(),
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A unit file as fleet stores it: its options in file order.
///
/// Comments, blank lines and layout are not kept: fleet never stored them, and the hash does
/// not cover them. Serialises (serde) as the plain list of options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnitFile {
    options: Vec<UnitOption>,
}

/// What is wrong with a unit file's text, and on which line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based number of the physical line where the problem was found.
    pub line: usize,
    pub kind: ParseErrorKind,
}

/// The problems [`UnitFile::parse`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    /// An option line inside a section with no `=` (or with a line break before it).
    #[error("expected key=value, found {0:?}")]
    ExpectedKeyValue(String),
    /// A `[` that is not closed by `]` on the same line.
    #[error("section header {0:?} has no closing ']'")]
    UnterminatedSection(String),
    /// Something other than whitespace after a section header's `]`.
    #[error("unexpected {garbage:?} after section header [{section}]")]
    GarbageAfterSection { section: String, garbage: String },
    /// A physical line of [`LINE_MAX`] bytes or more.
    #[error("line too long ({len} bytes, max {max})", max = LINE_MAX - 1)]
    LineTooLong { len: usize },
}

/// One physical line of input: its text without the line end, and whether a `\n` ended it
/// (the last line of a file may not have one, which changes how continuations join).
struct Line<'a> {
    text: &'a str,
    terminated: bool,
}

fn split_lines(text: &str) -> Vec<Line<'_>> {
    let pieces: Vec<&str> = text.split('\n').collect();
    let count = pieces.len();
    pieces
        .into_iter()
        .enumerate()
        .filter(|(i, piece)| !(i + 1 == count && piece.is_empty()))
        .map(|(i, piece)| Line {
            text: piece.strip_suffix('\r').unwrap_or(piece),
            terminated: i + 1 < count,
        })
        .collect()
}

/// go-systemd checks that the next line break comes within `LINE_MAX` bytes; a lone `\r`
/// counts as a line break there, so measure up to it.
fn check_length(lines: &[Line<'_>], idx: usize) -> Result<(), ParseError> {
    let text = lines[idx].text;
    let len = text.find('\r').unwrap_or(text.len());
    if len >= LINE_MAX {
        return Err(ParseError {
            line: idx + 1,
            kind: ParseErrorKind::LineTooLong { len },
        });
    }
    Ok(())
}

fn is_comment_start(c: char) -> bool {
    c == '#' || c == ';'
}

/// Skips a comment whose text after the `#`/`;` is `rest`, starting on line `idx`; returns the
/// index of the last line it covers. go-systemd strips a single trailing space before looking
/// for the continuation backslash, so `# a \ ` continues but `# a \  ` does not.
fn skip_comment(lines: &[Line<'_>], mut idx: usize, rest: &str) -> usize {
    let mut current = rest;
    loop {
        let trimmed = current.strip_suffix(' ').unwrap_or(current);
        if !trimmed.ends_with('\\') || idx + 1 >= lines.len() {
            return idx;
        }
        idx += 1;
        current = lines[idx].text;
    }
}

/// Parses a section header starting at `[`; returns the section name.
fn parse_section_header(header: &str, line: usize) -> Result<String, ParseError> {
    let inner = &header[1..];
    let Some(close) = inner.find(']') else {
        return Err(ParseError {
            line,
            kind: ParseErrorKind::UnterminatedSection(header.to_string()),
        });
    };
    let section = &inner[..close];
    let garbage = inner[close + 1..].trim();
    if !garbage.is_empty() {
        return Err(ParseError {
            line,
            kind: ParseErrorKind::GarbageAfterSection {
                section: section.to_string(),
                garbage: garbage.to_string(),
            },
        });
    }
    // Not trimmed: fleet keeps "[ Unit ]" as the section " Unit ".
    Ok(section.to_string())
}

impl UnitFile {
    /// Parses unit file text the way fleet v1.0 does (see the module docs for the quirks).
    pub fn parse(text: &str) -> Result<UnitFile, ParseError> {
        // systemd skips a UTF-8 byte order mark; fleet skipped it as pre-section noise.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let lines = split_lines(text);
        let mut options = Vec::new();
        let mut section: Option<String> = None;
        let mut idx = 0;
        while idx < lines.len() {
            check_length(&lines, idx)?;
            let lineno = idx + 1;
            let body = lines[idx].text.trim_start();

            let Some(current) = section.as_ref() else {
                // Before any header go-systemd skips character by character until it meets a
                // '[' (a header) or a comment character, so "Foo=[Bar]" opens section "Bar".
                match body.find(|c: char| c == '[' || is_comment_start(c)) {
                    Some(pos) if body[pos..].starts_with('[') => {
                        section = Some(parse_section_header(&body[pos..], lineno)?);
                    }
                    Some(pos) => idx = skip_comment(&lines, idx, &body[pos + 1..]),
                    None => {}
                }
                idx += 1;
                continue;
            };

            let Some(first) = body.chars().next() else {
                idx += 1;
                continue;
            };
            if is_comment_start(first) {
                idx = skip_comment(&lines, idx, &body[1..]) + 1;
                continue;
            }
            if first == '[' {
                section = Some(parse_section_header(body, lineno)?);
                idx += 1;
                continue;
            }

            let Some(eq) = body.find('=') else {
                return Err(ParseError {
                    line: lineno,
                    kind: ParseErrorKind::ExpectedKeyValue(body.to_string()),
                });
            };
            let name = body[..eq].trim();
            if name.contains('\r') {
                // go-systemd treats '\r' as a line break while reading a key.
                return Err(ParseError {
                    line: lineno,
                    kind: ParseErrorKind::ExpectedKeyValue(body.to_string()),
                });
            }

            // The value: go-systemd appends each continued physical line verbatim, keeping the
            // backslash and a '\n' (none when the backslash line ended the file), and stops at
            // a line without a trailing backslash or at a blank line (which it consumes).
            let mut partial = String::new();
            let mut chunk = &body[eq + 1..];
            let mut terminated = lines[idx].terminated;
            loop {
                if chunk.trim().is_empty() {
                    break;
                }
                partial.push_str(chunk);
                if !chunk.ends_with('\\') {
                    break;
                }
                if terminated {
                    partial.push('\n');
                }
                if idx + 1 >= lines.len() {
                    break;
                }
                idx += 1;
                check_length(&lines, idx)?;
                chunk = lines[idx].text;
                terminated = lines[idx].terminated;
            }
            // A continuation followed by a blank line or the end of the file leaves a final
            // '\n'; go-systemd keeps exactly that one after trimming.
            let value = if partial.ends_with('\n') {
                format!("{}\n", partial.trim())
            } else {
                partial.trim().to_string()
            };
            options.push(UnitOption {
                section: current.clone(),
                name: name.to_string(),
                value,
            });
            idx += 1;
        }
        Ok(UnitFile { options })
    }

    /// Wraps options as they are (e.g. from the API), without any checks.
    pub fn from_options(options: Vec<UnitOption>) -> UnitFile {
        UnitFile { options }
    }

    /// The options in file order.
    pub fn options(&self) -> &[UnitOption] {
        &self.options
    }

    /// Gives the options back, in file order.
    pub fn into_options(self) -> Vec<UnitOption> {
        self.options
    }

    /// Every value of `name` in `section`, in order (both compared exactly, case-sensitive).
    pub fn values<'a>(&'a self, section: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.options
            .iter()
            .filter(move |o| o.section == section && o.name == name)
            .map(|o| o.value.as_str())
    }

    /// Whether any option sits in `section`. A header with no options under it does not count:
    /// fleet's model has no trace of it.
    pub fn has_section(&self, section: &str) -> bool {
        self.options.iter().any(|o| o.section == section)
    }

    /// The first `Description=` of `[Unit]`, as fleet shows in `list-unit-files`.
    pub fn description(&self) -> Option<&str> {
        self.values("Unit", "Description").next()
    }

    /// fleet's serialisation (go-systemd `unit.Serialize`): sections in first-seen order, each
    /// as `[Section]\n` then its options as `Name=Value\n` in their order, with one blank line
    /// between sections. No options give the empty string. This is also what the agent writes
    /// to disk, so it is what systemd reads.
    pub fn to_canonical_string(&self) -> String {
        let mut sections: Vec<&str> = Vec::new();
        for option in &self.options {
            if !sections.contains(&option.section.as_str()) {
                sections.push(&option.section);
            }
        }
        let mut out = String::new();
        for (i, section) in sections.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let _ = writeln!(out, "[{section}]");
            for option in self.options.iter().filter(|o| o.section == *section) {
                let _ = writeln!(out, "{}={}", option.name, option.value);
            }
        }
        out
    }

    /// The unit's identity: SHA1 of [`to_canonical_string`](Self::to_canonical_string), as
    /// fleet computes it. Same options (grouped by section) give the same hash, whatever the
    /// comments or layout of the file they came from.
    pub fn hash(&self) -> UnitHash {
        let digest = Sha1::digest(self.to_canonical_string().as_bytes());
        UnitHash::from_bytes(digest.into())
    }

    /// fleet's API check on submitted options: their canonical text must parse again (this is
    /// how fleet rejects lines of [`LINE_MAX`] bytes or more, and names containing a line
    /// break). Like fleet, it does not require the re-parsed options to be equal.
    pub fn validate(&self) -> Result<(), ParseError> {
        self.normalized().map(|_| ())
    }

    /// The unit as fleet holds it after storing: fleet keeps only the canonical text in etcd
    /// and parses it again whenever it reads the unit back, so options that do not survive
    /// that trip (say a value with leading spaces, sent through the API) come back changed.
    /// Most options are unchanged; the hash fleet files the unit under is still the hash of
    /// the options as submitted.
    ///
    /// One trip is not always the end: a last value ending in `\` comes back with a `\n`
    /// (a continuation at the end of the file), which stays on the next trip. So the trip is
    /// repeated until the text no longer changes, and what is stored re-reads as stored.
    pub fn normalized(&self) -> Result<UnitFile, ParseError> {
        let mut file = UnitFile::parse(&self.to_canonical_string())?;
        // Each trip only trims or completes continuations; two more always settle it.
        for _ in 0..3 {
            let again = UnitFile::parse(&file.to_canonical_string())?;
            if again == file {
                break;
            }
            file = again;
        }
        Ok(file)
    }
}

impl From<Vec<UnitOption>> for UnitFile {
    fn from(options: Vec<UnitOption>) -> UnitFile {
        UnitFile::from_options(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(section: &str, name: &str, value: &str) -> UnitOption {
        UnitOption::new(section, name, value)
    }

    #[test]
    fn parse_table() {
        let cases: Vec<(&str, &str, Vec<UnitOption>)> =
            vec![
            (
                "simplest file",
                "[Service]\nExecStart=/bin/sleep 100\n",
                vec![opt("Service", "ExecStart", "/bin/sleep 100")],
            ),
            (
                "no final newline",
                "[Service]\nExecStart=/bin/true",
                vec![opt("Service", "ExecStart", "/bin/true")],
            ),
            (
                "whitespace around key and value is trimmed, inner kept",
                "[Unit]\n  Description =  Foo  bar \t\n",
                vec![opt("Unit", "Description", "Foo  bar")],
            ),
            (
                "'=' in the value is kept; the key ends at the first '='",
                "[Service]\nEnvironment=A=b=c\n",
                vec![opt("Service", "Environment", "A=b=c")],
            ),
            (
                "empty values, with or without spaces",
                "[Service]\nExecStop=\nExecStart=   \n",
                vec![opt("Service", "ExecStop", ""), opt("Service", "ExecStart", "")],
            ),
            (
                "'#' and ';' comments, also indented, and blank lines",
                "# top\n\n[Unit]\n;semi\n   # indented\n\nDescription=x # not a comment\n",
                vec![opt("Unit", "Description", "x # not a comment")],
            ),
            (
                "repeated keys kept in order",
                "[Service]\nExecStartPre=a\nExecStartPre=b\nExecStartPre=a\n",
                vec![
                    opt("Service", "ExecStartPre", "a"),
                    opt("Service", "ExecStartPre", "b"),
                    opt("Service", "ExecStartPre", "a"),
                ],
            ),
            (
                "repeated sections: options keep file order",
                "[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n",
                vec![opt("Unit", "A", "1"), opt("Service", "B", "2"), opt("Unit", "C", "3")],
            ),
            (
                "CRLF line ends",
                "[Unit]\r\nDescription=Foo\r\n\r\n[Service]\r\nExecStart=/bin/true\r\n",
                vec![opt("Unit", "Description", "Foo"), opt("Service", "ExecStart", "/bin/true")],
            ),
            (
                "continuation keeps the backslash, the newline and the next line's indent",
                "[Service]\nExecStart=echo \\\n  \"pi\\\n  ng\"\nExecStop=x\n",
                vec![
                    opt("Service", "ExecStart", "echo \\\n  \"pi\\\n  ng\""),
                    opt("Service", "ExecStop", "x"),
                ],
            ),
            (
                "continuation in a CRLF file joins with a bare newline (fleet did not continue)",
                "[Service]\r\nExecStart=echo \\\r\n  hi\r\n",
                vec![opt("Service", "ExecStart", "echo \\\n  hi")],
            ),
            (
                "a value may start with a continuation",
                "[Service]\nExecStop=\\\necho \"po\\\nng\"\n",
                vec![opt("Service", "ExecStop", "\\\necho \"po\\\nng\"")],
            ),
            (
                "comment-looking lines inside a continuation are part of the value",
                "[Service]\nExecStopPre=echo\\\n#pang\nExecStopPost=echo\\\n#peng\\\npung\n",
                vec![
                    opt("Service", "ExecStopPre", "echo\\\n#pang"),
                    opt("Service", "ExecStopPost", "echo\\\n#peng\\\npung"),
                ],
            ),
            (
                "a section header inside a continuation is part of the value",
                "[Service]\nA=x\\\n[Unit]\nB=y\n",
                vec![opt("Service", "A", "x\\\n[Unit]"), opt("Service", "B", "y")],
            ),
            (
                "a backslash followed by a space does not continue",
                "[Service]\nA=x\\ \nB=y\n",
                vec![opt("Service", "A", "x\\"), opt("Service", "B", "y")],
            ),
            (
                "continuation then blank line: value keeps one final newline",
                "[Service]\nA=x \\\n\nB=y\n",
                vec![opt("Service", "A", "x \\\n"), opt("Service", "B", "y")],
            ),
            (
                "continuation on the last line with a newline: final newline kept",
                "[Service]\nA=x\\\n",
                vec![opt("Service", "A", "x\\\n")],
            ),
            (
                "continuation on the last line without a newline: no newline added",
                "[Service]\nA=x\\",
                vec![opt("Service", "A", "x\\")],
            ),
            (
                "a comment ending in a backslash swallows the next line",
                "[Service]\n# note \\\nHidden=1\nShown=2\n",
                vec![opt("Service", "Shown", "2")],
            ),
            (
                "one trailing space after a comment's backslash still continues",
                "[Service]\n# note \\ \nHidden=1\nShown=2\n",
                vec![opt("Service", "Shown", "2")],
            ),
            (
                "two trailing spaces after a comment's backslash do not",
                "[Service]\n# note \\  \nShown=1\n",
                vec![opt("Service", "Shown", "1")],
            ),
            (
                "text before the first section is skipped (fleet's TestDeserialize)",
                "\nThis=Ignored\n>>>>>>>\n[Unit]\nA=1\n",
                vec![opt("Unit", "A", "1")],
            ),
            (
                "before any section, a '[' anywhere on a line opens a section",
                "Foo=[Bar]\nA=1\n",
                vec![opt("Bar", "A", "1")],
            ),
            (
                "before any section, a comment character anywhere starts a comment",
                "junk # x \\\n[Hidden]\n[Unit]\nA=1\n",
                vec![opt("Unit", "A", "1")],
            ),
            (
                "a byte order mark is skipped",
                "\u{feff}[Unit]\nA=1\n",
                vec![opt("Unit", "A", "1")],
            ),
            (
                "section names are not trimmed; trailing spaces after ']' are fine",
                "[ Unit ]  \nA=1\n",
                vec![opt(" Unit ", "A", "1")],
            ),
            (
                "any key is accepted as long as it has '=' (fleet's TestDeserializedUnitGarbage)",
                "[Service]\n<<<<<<<<<<<=bar\n",
                vec![opt("Service", "<<<<<<<<<<<", "bar")],
            ),
            (
                "an empty key is accepted, as in fleet",
                "[Service]\n=bar\n",
                vec![opt("Service", "", "bar")],
            ),
            (
                "sections without options leave nothing",
                "[Unit]\n\n[Service]\nA=1\n[Install]\n",
                vec![opt("Service", "A", "1")],
            ),
            ("empty file", "", vec![]),
            ("only comments", "# a\n; b\n", vec![]),
        ];
        for (rule, text, want) in cases {
            let got = UnitFile::parse(text).unwrap_or_else(|e| panic!("{rule}: {e}"));
            assert_eq!(got.options(), want.as_slice(), "{rule}");
        }
    }

    #[test]
    fn parse_errors() {
        let long = format!("[Service]\nA={}\n", "x".repeat(LINE_MAX - 2));
        let long_ok = format!("[Service]\nA={}\n", "x".repeat(LINE_MAX - 3));
        let long_continued = format!("[Service]\nA=x\\\n{}\n", "y".repeat(LINE_MAX));
        let cases: Vec<(&str, &str, usize, ParseErrorKind)> = vec![
            (
                "a line without '=' inside a section",
                "[Unit]\nnonsense upon stilts\n",
                2,
                ParseErrorKind::ExpectedKeyValue("nonsense upon stilts".into()),
            ),
            (
                "garbage line after options (fleet's TestBadUnitsFail)",
                "\n[Unit]\n\n[Service]\n<<<<<<<<<<<<<<<<\n",
                5,
                ParseErrorKind::ExpectedKeyValue("<<<<<<<<<<<<<<<<".into()),
            ),
            (
                "a key at the end of the file without '='",
                "[Unit]\nA=1\nB",
                3,
                ParseErrorKind::ExpectedKeyValue("B".into()),
            ),
            (
                "a carriage return inside a key",
                "[Unit]\nA\rB=1\n",
                2,
                ParseErrorKind::ExpectedKeyValue("A\rB=1".into()),
            ),
            (
                "an unclosed section header",
                "[Unit]\nA=1\n[Service\nB=2\n",
                3,
                ParseErrorKind::UnterminatedSection("[Service".into()),
            ),
            (
                "text after a section header",
                "[Unit] # comment\n",
                1,
                ParseErrorKind::GarbageAfterSection {
                    section: "Unit".into(),
                    garbage: "# comment".into(),
                },
            ),
            (
                "a physical line of LINE_MAX bytes",
                &long,
                2,
                ParseErrorKind::LineTooLong { len: LINE_MAX },
            ),
            (
                "a long continuation line",
                &long_continued,
                3,
                ParseErrorKind::LineTooLong { len: LINE_MAX },
            ),
        ];
        for (rule, text, line, kind) in cases {
            let err = UnitFile::parse(text).unwrap_err();
            assert_eq!(err, ParseError { line, kind }, "{rule}");
        }
        // one byte shorter is fine
        assert!(UnitFile::parse(&long_ok).is_ok());
    }

    #[test]
    fn error_display() {
        let err = UnitFile::parse("[Unit]\nA=1\nbad\n").unwrap_err();
        assert_eq!(err.to_string(), "line 3: expected key=value, found \"bad\"");
        let err = UnitFile::parse(&format!("[U]\nA={}", "x".repeat(3000))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: line too long (3002 bytes, max 2047)"
        );
    }

    #[test]
    fn canonical_string_table() {
        let cases: Vec<(&str, &str, &str)> = vec![
            (
                "one section, no trailing blank line",
                "[Service]\nExecStart=/bin/sleep 100\n",
                "[Service]\nExecStart=/bin/sleep 100\n",
            ),
            (
                "comments, blank lines and spaces around '=' disappear",
                "# c\n[Unit]\n\nDescription = Foo\n\n\n[Service]\n;x\nExecStart= /bin/true\n",
                "[Unit]\nDescription=Foo\n\n[Service]\nExecStart=/bin/true\n",
            ),
            (
                "repeated sections are grouped in first-seen order",
                "[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n[X-Fleet]\nD=4\n[Service]\nE=5\n",
                "[Unit]\nA=1\nC=3\n\n[Service]\nB=2\nE=5\n\n[X-Fleet]\nD=4\n",
            ),
            (
                "CRLF input gives LF output",
                "[Unit]\r\nA=1\r\n",
                "[Unit]\nA=1\n",
            ),
            (
                "continued values are written back verbatim",
                "[Service]\nExecStart=/bin/echo \\\n  hello\n",
                "[Service]\nExecStart=/bin/echo \\\n  hello\n",
            ),
            (
                "empty values",
                "[Service]\nExecStop=\n",
                "[Service]\nExecStop=\n",
            ),
            ("no options, no text", "[Unit]\n", ""),
        ];
        for (rule, text, want) in cases {
            let unit = UnitFile::parse(text).unwrap();
            let canonical = unit.to_canonical_string();
            assert_eq!(canonical, want, "{rule}");
            // the canonical text parses back to options with the same canonical text
            let again = UnitFile::parse(&canonical).unwrap();
            assert_eq!(again.to_canonical_string(), canonical, "{rule}: round trip");
        }
    }

    #[test]
    fn hash_vectors() {
        // Expected digests computed independently with coreutils:
        //   printf '<canonical text>' | sha1sum
        let cases: Vec<(&str, &str, &str)> = vec![
            (
                // printf '[Service]\nExecStart=/bin/sleep 100\n' | sha1sum
                // (also the vector in fleet's own unit_test.go TestUnitHash)
                "fleet's own test vector",
                "[Service]\nExecStart=/bin/sleep 100\n",
                "1c6fb6f3684bafb0c173d8b8b957ceff031180c1",
            ),
            (
                // printf '' | sha1sum
                "no options hash the empty string",
                "# only a comment\n[Unit]\n",
                "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            ),
            (
                // printf '[Unit]\nDescription=Foo\n\n[Service]\nExecStart=/bin/echo \\\n  hello\nExecStop=\n\n[X-Fleet]\nMachineMetadata="a=b" "c=d"\n' | sha1sum
                "several sections, a continuation, an empty value, quotes",
                "[Unit]\nDescription = Foo\n\n[Service]\nExecStart=/bin/echo \\\n  hello\nExecStop=\n# c\n[X-Fleet]\nMachineMetadata=\"a=b\" \"c=d\"\n",
                "310ddbf68c5a124b962c19c2f9a6ecc978a8a01b",
            ),
            (
                // printf '[Unit]\nDescription=A\nAfter=b.service\n\n[Service]\nExecStart=/bin/true\n' | sha1sum
                "interleaved sections hash as grouped",
                "[Unit]\nDescription=A\n[Service]\nExecStart=/bin/true\n[Unit]\nAfter=b.service\n",
                "e69b8ebc57dc401582e812139c324536e34d0a8b",
            ),
        ];
        for (rule, text, want) in cases {
            let hash = UnitFile::parse(text).unwrap().hash();
            assert_eq!(hash.to_string(), want, "{rule}");
            assert_eq!(hash.short(), &want[..7], "{rule}");
        }
    }

    #[test]
    fn same_options_same_hash() {
        let a = UnitFile::parse("[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n").unwrap();
        let b = UnitFile::parse(
            "# hi\r\n[Unit]\r\n Description = x \r\n\r\n[Service]\r\nExecStart=/bin/true",
        )
        .unwrap();
        assert_eq!(a.hash(), b.hash());
        // ...and the hash covers values, names, sections and option order within a section
        let variants = [
            "[Unit]\nDescription=y\n[Service]\nExecStart=/bin/true\n",
            "[Unit]\ndescription=x\n[Service]\nExecStart=/bin/true\n",
            "[Service]\nDescription=x\n[Service]\nExecStart=/bin/true\n",
            "[Service]\nExecStart=/bin/true\n[Unit]\nDescription=x\n",
        ];
        for text in variants {
            assert_ne!(UnitFile::parse(text).unwrap().hash(), a.hash(), "{text:?}");
        }
    }

    #[test]
    fn accessors() {
        let unit = UnitFile::parse(
            "[Unit]\nDescription=first\nDescription=second\n[Service]\nExecStartPre=a\nExecStartPre=b\n[Install]\n",
        )
        .unwrap();
        assert_eq!(
            unit.values("Service", "ExecStartPre").collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(unit.values("service", "ExecStartPre").count(), 0);
        assert_eq!(unit.description(), Some("first"));
        assert!(unit.has_section("Unit"));
        // a header without options is not a section in the model
        assert!(!unit.has_section("Install"));
        let options = unit.clone().into_options();
        assert_eq!(UnitFile::from_options(options), unit);
    }

    #[test]
    fn options_json_matches_fleet_api() {
        let unit = UnitFile::parse("[Service]\nExecStart=/bin/true\n").unwrap();
        let json = serde_json::to_string(&unit).unwrap();
        assert_eq!(
            json,
            r#"[{"section":"Service","name":"ExecStart","value":"/bin/true"}]"#
        );
        let back: UnitFile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, unit);
    }

    #[test]
    fn normalized_like_fleet_registry() {
        // options from the API that the canonical text does not preserve
        let raw = UnitFile::from_options(vec![
            opt("Service", " ExecStart ", "  /bin/true  "),
            opt("Service", "Environment", "A=1\\"),
            opt("Service", "After", "x.service"),
        ]);
        let stored = raw.normalized().unwrap();
        assert_eq!(
            stored.options(),
            [
                opt("Service", "ExecStart", "/bin/true"),
                opt("Service", "Environment", "A=1\\\nAfter=x.service"),
            ]
        );
        // hashing is over what was given, so the two differ
        assert_ne!(raw.hash(), stored.hash());
        // options that came from parsing are a fixed point
        let parsed = UnitFile::parse("[Unit]\nA= 1\n[Service]\nB=x \\\n  y\nC=z \\\n\n").unwrap();
        assert_eq!(parsed.normalized().unwrap(), parsed);
        // and so is what normalizing gives: a last value ending in a backslash (or in a
        // backslash then blanks) takes two trips to settle
        for value in ["x\\", "\\\t", "x\\ "] {
            let once = UnitFile::from_options(vec![opt("X-Fleet", "MachineID", value)])
                .normalized()
                .unwrap();
            assert_eq!(once.normalized().unwrap(), once, "{value:?}");
        }
    }

    #[test]
    fn validate_like_fleet_api() {
        // fine options
        let ok = UnitFile::from_options(vec![opt("Service", "ExecStart", "/bin/true")]);
        assert!(ok.validate().is_ok());
        // a value too long for systemd
        let long = UnitFile::from_options(vec![opt("Service", "A", &"x".repeat(LINE_MAX))]);
        assert!(matches!(
            long.validate().unwrap_err().kind,
            ParseErrorKind::LineTooLong { .. }
        ));
        // a name with a line break writes a line without '='
        let broken = UnitFile::from_options(vec![opt("Service", "A\nB", "1")]);
        assert_eq!(broken.validate().unwrap_err().line, 2);
    }
}
