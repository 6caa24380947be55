//! Draining a machine on the real cluster: its units move elsewhere one at a time, each
//! stopped on the drained machine before systemd starts it on another, as their placement rules
//! allow; undrained, the machine takes units again.

use std::time::Duration;

use fleet_e2e::sampler::Sampler;
use fleet_e2e::{cluster, columns, eventually, tag, Cluster, NODES};

/// A service that takes a second to stop (`deactivating` meanwhile, its process still there),
/// so that a copy started elsewhere before it stopped would be seen running twice.
fn slow_stopping(c: &Cluster, name: &str, x_fleet: &str) -> String {
    let text = format!(
        "[Unit]\nDescription={name}\n\n[Service]\nExecStart=/bin/bash -c 'while true; do sleep 1; done'\nExecStop=/bin/sleep 1\n\n[X-Fleet]\n{x_fleet}\n"
    );
    c.unit_file(name, &text).to_string_lossy().into_owned()
}

/// The STATE column of `list-machines` for node `n`.
fn machine_state(c: &Cluster, n: u32) -> String {
    let out = c
        .fleetctl(&[
            "list-machines",
            "--no-legend",
            "--full",
            "--fields",
            "machine,state",
        ])
        .expect_ok("list-machines");
    let id = c.machine_id(n);
    out.stdout
        .lines()
        .map(columns)
        .find(|cols| cols.first() == Some(&id.as_str()))
        .and_then(|cols| cols.get(1).map(|s| s.to_string()))
        .unwrap_or_else(|| panic!("node {n} not listed: {}", out.stdout))
}

#[test]
fn a_drain_moves_a_machine_of_pair_and_a_conflicts_pair_away_never_running_two_copies() {
    let c = cluster();
    let run = tag();
    let leader = format!("drain-db-{run}.service");
    let follower = format!("drain-backup-{run}.service");
    let x = format!("drain-x-{run}.service");
    let y = format!("drain-y-{run}.service");
    let all = vec![leader.clone(), follower.clone(), x.clone(), y.clone()];
    let paths = [
        slow_stopping(c, &leader, ""),
        slow_stopping(c, &follower, &format!("MachineOf={leader}")),
        slow_stopping(c, &x, &format!("Conflicts={y}")),
        slow_stopping(c, &y, ""),
    ];
    // Every node's systemd is watched from before the units start to the drain's end.
    let sampler = Sampler::start(c, &format!("drain-*-{run}.service"));
    let mut args = vec!["start"];
    args.extend(paths.iter().map(String::as_str));
    c.fleetctl(&args).expect_ok("start");
    let drained = c.active_on(&leader).expect("the leader runs");
    for unit in &all {
        c.active_on(unit).expect("every unit runs");
    }
    let before = c.running(&all);

    // Drain the leader's machine.
    let machine = c.machine_id(drained);
    let out = c.fleetctl(&["drain", "--block-attempts", "120", &machine]);
    let samples = sampler.finish();
    let out = out.expect_ok("drain");
    assert!(
        out.stdout.contains("drained"),
        "drain says when it is done: {out:#?}"
    );
    // Once drained, everything runs elsewhere, by the rules.
    let after = eventually(Duration::from_secs(30), || {
        let on = c.running(&all);
        on.iter().all(|nodes| nodes.len() == 1).then_some(on)
    });
    let states: Vec<String> = (1..=NODES).map(|n| machine_state(c, n)).collect();
    let new_unit = format!("drain-new-{run}.service");
    let new_path = slow_stopping(c, &new_unit, &format!("MachineID={machine}"));
    let refused = c.fleetctl(&["start", "--no-block", &new_path]);
    let reasons = eventually(Duration::from_secs(10), || {
        let out = c.fleetctl(&["list-unit-files", "--no-legend", "--fields", "unit,reason"]);
        out.stdout
            .lines()
            .find(|l| l.starts_with(&new_unit) && l.contains("draining"))
            .map(str::to_string)
    });
    let events = c.fleetctl(&["events", "--no-legend", "--machine", &machine]);
    let undrain = c.fleetctl(&["undrain", &machine]);
    let placed_after_undrain = c.active_on(&new_unit);
    let state_after = machine_state(c, drained);
    let mut destroy = vec!["destroy"];
    destroy.extend(all.iter().map(String::as_str));
    destroy.push(&new_unit);
    c.fleetctl(&destroy).expect_ok("destroy");

    assert!(
        samples.count() >= 3 * NODES as usize,
        "the drain was sampled: {} samples",
        samples.count()
    );
    let doubles = samples.doubles(Duration::from_millis(500));
    assert!(doubles.is_empty(), "ran twice: {doubles:?}");
    let after = after.expect("every unit runs on one node after the drain");
    let node = |u: usize| after[u][0];
    assert!(
        after.iter().all(|nodes| nodes[0] != drained),
        "units left on the drained node {drained}: before {before:?}, after {after:?}"
    );
    assert_eq!(node(0), node(1), "MachineOf pair apart: {after:?}");
    assert_ne!(node(2), node(3), "Conflicts pair together: {after:?}");
    for (n, state) in (1..=NODES).zip(&states) {
        let want = if n == drained { "drained" } else { "active" };
        assert_eq!(state, want, "list-machines STATE of node {n}");
    }
    // The events of the drain: asked for, and each unit moved off because of it.
    let events = events.expect_ok("events of the drained machine");
    let kinds: Vec<(String, String)> = events
        .stdout
        .lines()
        .map(columns)
        .filter_map(|cols| Some((cols.get(1)?.to_string(), cols.get(2)?.to_string())))
        .collect();
    assert!(
        kinds.iter().any(|(kind, _)| kind == "drained"),
        "{}",
        events.stdout
    );
    for (unit, nodes) in all.iter().zip(&before) {
        if nodes.contains(&drained) {
            assert!(
                kinds.iter().any(|(kind, u)| kind == "moved" && u == unit),
                "{unit} moved off the drained machine: {}",
                events.stdout
            );
        }
    }
    refused.expect_ok("start a unit pinned to the drained machine");
    assert!(
        reasons.is_some(),
        "a unit pinned to the drained machine says it is draining"
    );
    undrain.expect_ok("undrain");
    assert_eq!(
        placed_after_undrain,
        Some(drained),
        "undrained, the machine takes the pinned unit"
    );
    assert_eq!(state_after, "active");
}
