use proptest::prelude::*;

use super::*;
use crate::UpdateState;

fn machine(n: usize) -> MachineId {
    MachineId::parse(&format!("{n:032x}")).expect("32 hex digits")
}

fn name(s: &str) -> UnitName {
    UnitName::parse(s).expect("a valid unit name")
}

fn hash(n: u8) -> UnitHash {
    format!("{n:040x}").parse().expect("40 hex digits")
}

fn update(units: Vec<UpdateUnit>) -> Update {
    Update {
        id: "1a2b".into(),
        created_ms: 1,
        options: vec![],
        max_parallel: 2,
        min_healthy_ms: 1_000,
        healthy_deadline_ms: 60_000,
        auto_revert: true,
        state: UpdateState::Running,
        reason: None,
        ended_ms: None,
        units,
        previous: vec![],
        stamped_by: 7,
    }
}

/// A global unit's entries as the API makes them: one per machine, then its own content.
fn global(unit: &str, from: UnitHash, machines: usize) -> Vec<UpdateUnit> {
    let mut entries: Vec<UpdateUnit> = (0..machines)
        .map(|m| UpdateUnit {
            machine: Some(machine(m)),
            global: true,
            ..UpdateUnit::pending(name(unit), from)
        })
        .collect();
    entries.push(UpdateUnit {
        global: true,
        ..UpdateUnit::pending(name(unit), from)
    });
    entries
}

/// What a reader of the record and its lists finds.
fn read_back(u: &Update) -> Result<Update, LayoutError> {
    let record = encode_listed(u)?;
    let mut lists = Lists::default();
    for (rest, value) in machine_lists(u)? {
        assert!(lists.add(&format!("{}/{rest}", u.id), &value));
    }
    let ids = lists.ids(&u.id);
    let (read, omitted) = decode_listed(serde_json::from_slice(&record)?, Some(&ids))?;
    assert!(omitted.is_empty());
    Ok(read)
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::Pending),
        Just(Phase::Updating),
        Just(Phase::Healthy),
        Just(Phase::Failed),
        Just(Phase::Reverting),
        Just(Phase::Reverted),
    ]
}

proptest! {
    // Each case lays out thousands of entries (past one key of machines).
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the phases, times and failures of its entries, a listed update reads back as
    /// it was, but for the times of machine entries at rest (`as_listed`); its other entries
    /// (units placed on one machine, each global unit's own content) whole.
    #[test]
    fn a_listed_update_reads_back_as_written(
        sizes in prop::collection::vec(0usize..7_000, 1..4),
        plain in 0usize..3,
        seed in prop::collection::vec((phase(), any::<Option<u64>>(), any::<Option<u64>>(), any::<bool>()), 64),
    ) {
        let mut units = Vec::new();
        for p in 0..plain {
            units.push(UpdateUnit::pending(name(&format!("plain{p}.service")), hash(1)));
        }
        for (g, &size) in sizes.iter().enumerate() {
            units.extend(global(&format!("global{g}.service"), hash(g as u8 + 2), size.max(1)));
        }
        for (i, entry) in units.iter_mut().enumerate() {
            let (phase, since, up, failed) = &seed[(i * 7 + i / 5) % seed.len()];
            entry.phase = *phase;
            entry.since_ms = *since;
            entry.up_since_ms = *up;
            entry.failure = failed.then(|| format!("failure {i}"));
        }
        let u = update(units);
        let read = read_back(&u).expect("it reads back");
        prop_assert_eq!(&read, &as_listed(&u));
        // What a step judges by: the times of every entry in flight, and every failure.
        for (was, is) in u.units.iter().zip(&read.units) {
            prop_assert_eq!(&was.failure, &is.failure);
            if matches!(was.phase, Phase::Updating | Phase::Reverting | Phase::Failed) {
                prop_assert_eq!((was.since_ms, was.up_since_ms), (is.since_ms, is.up_since_ms));
            }
        }
    }
}

/// The record of a global unit on 10,000 machines halfway through, two in flight and one
/// failed, is a few hundred bytes: what each step rewrites does not grow with the machines.
/// Its machines take two keys, written once.
#[test]
fn a_listed_record_does_not_grow_with_the_machines() {
    let mut units = global("monitor.service", hash(2), 10_000);
    for (i, entry) in units.iter_mut().enumerate().take(10_000) {
        entry.phase = match i {
            0..5_000 => Phase::Healthy,
            5_000 | 5_001 => Phase::Updating,
            5_002 => Phase::Failed,
            _ => Phase::Pending,
        };
        if entry.phase != Phase::Pending {
            entry.since_ms = Some(1_700_000_000_000 + i as u64);
        }
        if entry.phase == Phase::Failed {
            entry.failure = Some("systemd reports it failed".into());
        }
    }
    let u = update(units);
    let record = encode_listed(&u).unwrap();
    assert!(
        record.len() < 1_000,
        "{} bytes: {}",
        record.len(),
        String::from_utf8_lossy(&record)
    );
    let lists = machine_lists(&u).unwrap();
    assert_eq!(lists.len(), 2);
    assert_eq!(lists[1].0, "1");
    assert_eq!(read_back(&u).unwrap(), as_listed(&u));
    // Inline, every step rewrote about 1.5 MB.
    assert!(serde_json::to_vec(&u).unwrap().len() > 1_000_000);
}

/// A fleetd that knows only the whole layout cannot read a listed record: it would take it
/// for an update without machines and write the units' own content at once.
#[test]
fn a_listed_record_is_no_whole_record() {
    let u = update(global("monitor.service", hash(2), 3));
    let record = encode_listed(&u).unwrap();
    assert!(serde_json::from_slice::<Update>(&record).is_err());
    assert!(is_listed(&serde_json::from_slice(&record).unwrap()));
    assert!(!is_listed(&serde_json::to_value(&u).unwrap()));
}

#[test]
fn machine_lists_that_do_not_match_the_record_are_an_error() {
    let u = update(global("monitor.service", hash(2), 3));
    let record: serde_json::Value = serde_json::from_slice(&encode_listed(&u).unwrap()).unwrap();
    let two = [machine(0), machine(1)];
    assert!(matches!(
        decode_listed(record.clone(), Some(&two)),
        Err(LayoutError::Lists {
            count: 3,
            found: 2,
            ..
        })
    ));
    assert!(decode_listed(record, Some(&[])).is_err());
}

/// Machine entries that are not each global unit's, right before its own content's entry,
/// all from one content, are not laid out (the API never makes them).
#[test]
fn machine_entries_out_of_place_are_not_laid_out() {
    let mut stray = global("monitor.service", hash(2), 2);
    stray.pop();
    stray.push(UpdateUnit::pending(name("other.service"), hash(1)));
    assert!(matches!(
        encode_listed(&update(stray)),
        Err(LayoutError::Unlisted(_))
    ));
    let mut mixed = global("monitor.service", hash(2), 2);
    mixed[1].from = hash(3);
    assert!(encode_listed(&update(mixed)).is_err());
    let mut unended = global("monitor.service", hash(2), 2);
    unended.pop();
    assert!(encode_listed(&update(unended)).is_err());
}

#[test]
fn list_keys_name_their_update_and_number() {
    let mut lists = Lists::default();
    assert!(lists.add("1a2b/1", br#"["00000000000000000000000000000002"]"#));
    assert!(lists.add("1a2b/0", br#"["00000000000000000000000000000001"]"#));
    assert!(lists.add("1a2b-1/0", br#"["00000000000000000000000000000009"]"#));
    assert!(!lists.add("1a2b", b"{}"));
    assert!(!lists.add("1a2b/first", b"[]"));
    assert_eq!(lists.ids("1a2b"), [machine(1), machine(2)]);
    assert!(lists.remove("1a2b/0"));
    assert_eq!(lists.ids("1a2b"), [machine(2)]);
    lists.forget("1a2b");
    assert!(lists.ids("1a2b").is_empty());
    assert_eq!(lists.ids("1a2b-1"), [machine(9)]);
}

/// The machines of several global units are listed together, in the order of the entries:
/// as many keys as their number takes, whatever the number of units.
#[test]
fn the_machines_of_many_global_units_take_few_keys() {
    let mut units = Vec::new();
    for g in 0..120 {
        units.extend(global(&format!("g{g}.service"), hash(2), 50));
    }
    let u = update(units);
    let lists = machine_lists(&u).unwrap();
    assert_eq!(
        lists.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["0", "1"]
    );
    assert_eq!(read_back(&u).unwrap(), u);
}

/// Read without its machine lists, a listed update has its other entries and says how many
/// machines of each global unit are in each phase.
#[test]
fn a_listed_update_read_without_its_machines_counts_them_by_phase() {
    let mut units = vec![UpdateUnit::pending(name("plain.service"), hash(1))];
    units.extend(global("a.service", hash(2), 7));
    units.extend(global("b.service", hash(3), 2));
    for entry in &mut units[1..4] {
        entry.phase = Phase::Healthy;
    }
    units[4].phase = Phase::Failed;
    let u = update(units);
    let record = serde_json::from_slice(&encode_listed(&u).unwrap()).unwrap();
    let (read, omitted) = decode_listed(record, None).unwrap();
    let kept: Vec<&UpdateUnit> = u.units.iter().filter(|e| e.machine.is_none()).collect();
    assert_eq!(read.units.iter().collect::<Vec<_>>(), kept);
    assert_eq!(
        omitted,
        Omitted::from([
            (
                name("a.service"),
                BTreeMap::from([(Phase::Healthy, 3), (Phase::Failed, 1), (Phase::Pending, 3)])
            ),
            (name("b.service"), BTreeMap::from([(Phase::Pending, 2)])),
        ])
    );
    assert!(is_over(&serde_json::json!({"state": "done"})));
    assert!(!is_over(&serde_json::json!({"state": "paused"})));
}
