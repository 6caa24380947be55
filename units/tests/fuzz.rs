//! Arbitrary input to everything that reads text from users and the network: no panic, and
//! what is accepted re-reads as itself.

use std::collections::BTreeMap;

use fleet_units::{
    check_metadata, is_global, name_with_default_type, unit_name_from_arg, Requirements, UnitFile,
    UnitName, UnitOption, X_FLEET,
};
use proptest::prelude::*;

/// Text shaped like unit files, so that most cases reach past the first line: headers (some
/// broken), options, continuations, comments, blank lines, CRLF and stray characters.
fn unit_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        3 => "\\[[A-Za-z -]{0,8}\\][ \t]{0,2}",
        1 => Just("[X-Fleet]".to_string()),
        6 => "[ \t]{0,2}[A-Za-z-]{0,8}[ \t]{0,2}=[^\n]{0,24}\\\\?",
        3 => "(MachineID|MachineOf|MachineMetadata|Conflicts|Global|Replaces|X-Conflicts)=[^\n]{0,24}",
        2 => "[#;][^\n]{0,16}\\\\?",
        2 => "[ \t\r]{0,3}",
        1 => "\\[?[^\n]{0,12}",
    ];
    (
        proptest::collection::vec((line, prop_oneof![Just("\n"), Just("\r\n")]), 0..24),
        any::<bool>(),
    )
        .prop_map(|(lines, last_newline)| {
            let mut text: String = lines.iter().map(|(l, end)| format!("{l}{end}")).collect();
            if !last_newline {
                text.pop();
            }
            text
        })
}

/// What a unit file must satisfy once it parsed: its canonical text parses again, and the
/// canonical form is a fixpoint (parse → serialise → parse changes nothing more). The first
/// trip may change it: fleet's parser keeps a final `\n` after a `\` that ends the file.
fn assert_canonical_round_trip(file: &UnitFile) -> Result<(), TestCaseError> {
    let _ = file.hash();
    let once = file.normalized();
    prop_assert!(once.is_ok(), "canonical text does not parse: {once:?}");
    let once = once.unwrap_or_default();
    let twice = once.normalized();
    prop_assert_eq!(twice.as_ref(), Ok(&once));
    prop_assert_eq!(
        UnitFile::parse(&once.to_canonical_string()).map(|f| f.to_canonical_string()),
        Ok(once.to_canonical_string())
    );
    Ok(())
}

fn requirements_of(name: &UnitName, file: &UnitFile) {
    let _ = is_global(file);
    if let Ok((requirements, _warnings)) = Requirements::from_unit(name, file) {
        let _ = requirements.machine_id_matches("0123456789abcdef0123456789abcdef");
        let _ = requirements.metadata_matches(&BTreeMap::new());
        let _ = requirements.conflicts_with(name.as_str());
        let _ = requirements.replaces(name.as_str());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(file) = UnitFile::parse(&text) {
            assert_canonical_round_trip(&file)?;
        }
    }

    #[test]
    fn unit_like_text_round_trips(text in unit_text()) {
        match UnitFile::parse(&text) {
            Ok(file) => {
                assert_canonical_round_trip(&file)?;
                requirements_of(&UnitName::parse("web@a.service").expect("a valid name"), &file);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn options_from_the_api_never_panic(
        options in proptest::collection::vec(
            (
                prop_oneof![Just(X_FLEET.to_string()), "(?s).{0,8}"],
                prop_oneof![
                    Just("MachineMetadata".to_string()),
                    Just("Global".to_string()),
                    Just("Conflicts".to_string()),
                    Just("MachineOf".to_string()),
                    Just("Replaces".to_string()),
                    Just("MachineID".to_string()),
                    "(?s).{0,8}",
                ],
                "(?s).{0,40}",
            ),
            0..8,
        ),
        name in "[a-z@%.]{0,6}\\.(service|socket|timer)",
    ) {
        let file = UnitFile::from_options(
            options.into_iter().map(|(s, n, v)| UnitOption::new(s, n, v)).collect(),
        );
        let _ = file.hash();
        if let Ok(normalized) = file.normalized() {
            assert_canonical_round_trip(&normalized)?;
        }
        if let Ok(name) = UnitName::parse(&name) {
            requirements_of(&name, &file);
        }
    }

    #[test]
    fn any_string_is_a_unit_name_or_refused(s in "(?s).{0,300}") {
        let _ = unit_name_from_arg(&s);
        let _ = name_with_default_type(&s);
        match UnitName::parse(&s) {
            Ok(name) => {
                prop_assert_eq!(name.as_str(), s.as_str());
                prop_assert_eq!(UnitName::parse(name.as_str()), Ok(name.clone()));
                let _ = (name.prefix(), name.instance(), name.template(), name.unit_type());
                let _ = name.name_without_type();
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn unit_like_names_round_trip(s in "[a-zA-Z0-9:_.\\\\@-]{0,20}\\.(service|socket|target|timer|mount|x)") {
        if let Ok(name) = UnitName::parse(&s) {
            let shown = name.to_string();
            prop_assert_eq!(UnitName::parse(&shown), Ok(name.clone()));
            if let Some(template) = name.template() {
                prop_assert!(template.is_template());
            }
        }
    }

    /// Metadata `check_metadata` lets through is matched by the quoted item naming it.
    #[test]
    fn accepted_metadata_is_matchable(key in ".{0,12}", value in ".{0,12}") {
        if check_metadata(&key, &value).is_ok() {
            let text = format!("[X-Fleet]\nMachineMetadata=\"{key}={value}\"\n");
            let file = UnitFile::parse(&text);
            prop_assert!(file.is_ok(), "{text:?}: {file:?}");
            let name = UnitName::parse("web@1.service").expect("a valid name");
            let (requirements, _) = Requirements::from_unit(&name, &file.unwrap_or_default())
                .unwrap_or_default();
            let machine = BTreeMap::from([(key.clone(), value.clone())]);
            prop_assert!(requirements.metadata_matches(&machine), "{key:?}={value:?}");
        }
    }
}

/// The generator is worth its name: a good share of what it makes parses into options (the
/// rest exercises the errors).
#[test]
fn unit_like_text_mostly_parses() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let parsed = (0..1000)
        .filter(|_| {
            let text = unit_text()
                .new_tree(&mut runner)
                .expect("a value")
                .current();
            UnitFile::parse(&text).is_ok_and(|f| !f.options().is_empty())
        })
        .count();
    assert!(parsed > 250, "{parsed} of 1000");
}
