//! Rolling updates on the real cluster: an update of six instances whose new version fails its
//! health check is reverted with never more than two of them down, as every node's systemd is
//! watched; an update goes on after fleetctl has exited and after the engine leader was killed.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_e2e::sampler::Sampler;
use fleet_e2e::{api_url, cluster, https, tag, Cluster, NODES};

/// A template whose instances print a line every second, with `exec` as their command when
/// given, and `x_fleet` as their `[X-Fleet]` section.
fn template(c: &Cluster, name: &str, exec: Option<&str>, x_fleet: &str) -> String {
    let exec = exec.unwrap_or("/bin/bash -c 'while true; do echo tick %i; sleep 1; done'");
    let text = format!(
        "[Unit]\nDescription=rolling %i\n\n[Service]\nExecStart={exec}\n\n[X-Fleet]\n{x_fleet}\n"
    );
    c.unit_file(name, &text).to_string_lossy().into_owned()
}

/// Starts `count` instances of the template at `path`; their names.
fn start_instances(c: &Cluster, path: &str, stem: &str, count: usize) -> Vec<String> {
    let names: Vec<String> = (1..=count).map(|i| format!("{stem}@{i}.service")).collect();
    let paths: Vec<String> = names
        .iter()
        .map(|n| {
            std::path::Path::new(path)
                .with_file_name(n)
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut args = vec!["start"];
    args.extend(paths.iter().map(String::as_str));
    c.fleetctl(&args).expect_ok("start the instances");
    names
}

/// The hash of each unit, as `list-unit-files` shows it in full.
fn hashes(c: &Cluster, units: &[String]) -> Vec<String> {
    let out = c
        .fleetctl(&[
            "list-unit-files",
            "--no-legend",
            "--full",
            "--fields",
            "unit,hash",
        ])
        .expect_ok("list-unit-files");
    units
        .iter()
        .map(|u| {
            out.stdout
                .lines()
                .map(fleet_e2e::columns)
                .find(|cols| cols.first() == Some(&u.as_str()))
                .and_then(|cols| cols.get(1).map(|h| h.to_string()))
                .unwrap_or_default()
        })
        .collect()
}

fn destroy(c: &Cluster, units: &[String]) {
    let mut args = vec!["destroy"];
    args.extend(units.iter().map(String::as_str));
    c.fleetctl(&args).expect_ok("destroy");
}

#[test]
fn an_update_failing_its_health_check_is_reverted_never_more_than_two_down() {
    let c = cluster();
    let stem = format!("roll-{}", tag());
    let old = template(c, &format!("{stem}@.service"), None, "");
    let sampler = Sampler::start(c, &format!("{stem}@*.service"));
    let units = start_instances(c, &old, &stem, 6);
    // The sampler has seen all six running before the update begins.
    let all_up = fleet_e2e::eventually(Duration::from_secs(20), || {
        sampler.snapshot().most_down(&units)
    });
    assert!(
        all_up.is_some(),
        "the sampler never saw all six instances running"
    );
    let before = hashes(c, &units);
    // The new version runs (systemd says active) but its health check fails on its machine.
    let bad = template(
        c,
        &format!("{stem}@.service"),
        Some("/bin/bash -c 'while true; do echo tock %i; sleep 1; done'"),
        "HealthCheck=/bin/sh -c 'echo unhealthy %i >&2; exit 3'",
    );
    let run = c.fleetctl(&[
        "update",
        "--max-parallel",
        "2",
        "--min-healthy",
        "2s",
        "--healthy-deadline",
        "6s",
        "--auto-revert",
        &bad,
    ]);
    // Back on the old content, every instance runs again.
    let back = fleet_e2e::eventually(Duration::from_secs(30), || {
        let on = c.running(&units);
        on.iter().all(|nodes| nodes.len() == 1).then_some(on)
    });
    let samples = sampler.finish();
    let after = hashes(c, &units);
    let events = c.fleetctl(&["events", "--no-legend", "--full", "-n", "500"]);
    destroy(c, &units);

    assert_eq!(run.code, Some(1), "a reverted update fails: {run:#?}");
    let last = run.stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains(" reverted: ") && last.contains("did not become healthy"),
        "{run:#?}"
    );
    assert!(back.is_some(), "every instance runs again after the revert");
    // The events: the instances' steps (one that failed is reverted in the same step, its
    // failure shown with `reverting`; which of the two fails first is a race), and the update
    // reverted.
    let events = events.expect_ok("events");
    let ours: Vec<&str> = events
        .stdout
        .lines()
        .filter(|l| l.contains(&stem))
        .collect();
    for step in [
        "updating",
        "reverting: not healthy within 6 s (active, health check failing: exit status: 3: \
         unhealthy",
        "reverted",
    ] {
        assert!(
            ours.iter()
                .any(|l| l.contains("update-step") && l.contains(&format!(": {step}"))),
            "{step}: {ours:#?}"
        );
    }
    assert!(
        ours.iter()
            .any(|l| fleet_e2e::columns(l).get(1) == Some(&"reverted")),
        "the update's revert names the unit that failed: {ours:#?}"
    );
    assert_eq!(after, before, "every instance has its old content back");
    assert!(
        samples.count() > 10 * NODES as usize,
        "sampled: {}",
        samples.count()
    );
    let most = samples.most_down(&units).unwrap_or(usize::MAX);
    assert!(most <= 2, "{most} instances down at once");
    assert!(most >= 1, "the update was seen taking instances down");
}

/// The node whose fleetd leads the engine, by its metrics.
fn engine_leader() -> Option<u32> {
    (1..=NODES).find(|&n| {
        https(
            "GET",
            &format!("{}/metrics", api_url(n)),
            Some("operator"),
            "ca/ca.pem",
            None,
            None,
        )
        .is_ok_and(|(code, body)| code == 200 && body.contains("\nfleet_engine_leader 1"))
    })
}

#[test]
fn an_update_goes_on_after_fleetctl_exits_and_after_the_engine_leader_is_killed() {
    let c = cluster();
    let stem = format!("roll-{}", tag());
    let old = template(c, &format!("{stem}@.service"), None, "");
    let units = start_instances(c, &old, &stem, 4);
    let before = hashes(c, &units);
    let new = template(
        c,
        &format!("{stem}@.service"),
        Some("/bin/bash -c 'while true; do echo tock %i; sleep 1; done'"),
        // A passing health check.
        "HealthCheck=/bin/true",
    );
    let run = c
        .fleetctl(&[
            "update",
            "--no-block",
            "--max-parallel",
            "1",
            "--min-healthy",
            "2s",
            &new,
        ])
        .expect_ok("update --no-block");
    let id = run
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("the update's id")
        .to_string();
    // fleetctl has exited; the first unit is under way. Kill the engine leader's fleetd.
    std::thread::sleep(Duration::from_secs(1));
    let leader = engine_leader().expect("an engine leader");
    c.exec(
        leader,
        &[
            "sh",
            "-c",
            "kill -KILL $(systemctl show -P MainPID fleet.service)",
        ],
    )
    .expect_ok("kill the engine leader's fleetd");
    let done = fleet_e2e::eventually(Duration::from_secs(90), || {
        let out = c.fleetctl(&["update-status", &id]);
        out.stdout
            .lines()
            .next()
            .filter(|l| l.contains(" done ") || l.contains(" failed") || l.contains(" reverted"))
            .map(str::to_string)
    });
    let running = c.running(&units);
    let after = hashes(c, &units);
    destroy(c, &units);

    let done = done.expect("the update ended");
    assert!(done.starts_with(&format!("Update {id} done")), "{done}");
    assert!(
        running.iter().all(|nodes| nodes.len() == 1),
        "every instance runs: {running:?}"
    );
    assert!(
        after.iter().all(|h| *h == after[0] && !before.contains(h)),
        "every instance has the new content: before {before:?}, after {after:?}"
    );
}

/// `list-units` rows of `unit`: (machine, hash, active), full.
fn states_of(c: &Cluster, unit: &str) -> Vec<(String, String, String)> {
    c.fleetctl(&[
        "list-units",
        "--no-legend",
        "--full",
        "--fields",
        "unit,machine,hash,active",
    ])
    .expect_ok("list-units")
    .stdout
    .lines()
    .map(fleet_e2e::columns)
    .filter(|cols| cols.first() == Some(&unit))
    .map(|cols| {
        let col = |i: usize| cols.get(i).map(|s| s.to_string()).unwrap_or_default();
        (col(1), col(2), col(3))
    })
    .collect()
}

#[test]
fn a_global_unit_is_updated_machine_by_machine() {
    let c = cluster();
    let name = format!("roll-global-{}.service", tag());
    let text = |version: &str, x_fleet: &str| {
        format!(
            "[Unit]\nDescription=global {version}\n\n[Service]\n\
             ExecStart=/bin/bash -c 'while true; do echo {version}; sleep 1; done'\n\n\
             [X-Fleet]\nGlobal=true\n{x_fleet}"
        )
    };
    let old = c.unit_file(&name, &text("v1", ""));
    let sampler = Sampler::start(c, &name);
    c.fleetctl(&["start", &old.to_string_lossy()])
        .expect_ok("start the global unit");
    let everywhere = fleet_e2e::eventually(Duration::from_secs(30), || {
        let seen = sampler.snapshot().most_nodes_without(&name);
        let states = states_of(c, &name);
        (seen.is_some() && states.len() == NODES as usize).then_some(states)
    });
    let before = everywhere.expect("the global unit runs on every node");
    // The new version runs and passes its health check.
    let new = c.unit_file(&name, &text("v2", "HealthCheck=/bin/true\n"));
    let run = c.fleetctl(&[
        "update",
        "--max-parallel",
        "1",
        "--min-healthy",
        "2s",
        "--healthy-deadline",
        "30s",
        "--auto-revert",
        &new.to_string_lossy(),
    ]);
    let file_hash = hashes(c, std::slice::from_ref(&name)).remove(0);
    let after = fleet_e2e::eventually(Duration::from_secs(20), || {
        let states = states_of(c, &name);
        (states.len() == NODES as usize
            && states
                .iter()
                .all(|(_, hash, active)| *hash == file_hash && active == "active"))
        .then_some(states)
    });
    let samples = sampler.finish();
    let events = c.fleetctl(&["events", "--no-legend", "--full", &name]);
    let journal = c.fleetctl(&["journal", "--lines", "3", &name]);
    let listed = c.fleetctl(&["list-updates", "--no-legend"]);
    c.fleetctl(&["destroy", &name]).expect_ok("destroy");

    assert_eq!(run.code, Some(0), "the update is done: {run:#?}");
    // Listed with each machine counted (a list of updates counts a global unit's machines
    // rather than listing them).
    let id = run.stdout.split_whitespace().nth(1).unwrap_or_default();
    let listed = listed.expect_ok("list-updates").stdout;
    assert!(
        listed
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .any(|l| l == [id, "done", &NODES.to_string(), &NODES.to_string(), "-"]),
        "{id}: {listed}"
    );
    assert!(
        run.stdout
            .lines()
            .last()
            .unwrap_or_default()
            .contains(" done"),
        "{run:#?}"
    );
    // Machine by machine: each node's step shown, then the unit's own content.
    for (machine, _, _) in &before {
        let short = machine.get(..8).unwrap_or(machine);
        assert!(
            run.stdout.contains(&format!("{name} on {short}: healthy")),
            "{short}: {run:#?}"
        );
    }
    assert!(
        run.stdout
            .contains(&format!("{name} (its own content): healthy")),
        "{run:#?}"
    );
    assert_ne!(
        before[0].1, file_hash,
        "the unit's own content is the new one"
    );
    assert!(after.is_some(), "every node runs the new content");
    assert!(
        samples.count() > 10 * NODES as usize,
        "sampled: {}",
        samples.count()
    );
    let most = samples.most_nodes_without(&name).unwrap_or(usize::MAX);
    assert!(most <= 1, "{most} nodes without the unit at once");
    assert!(most >= 1, "the update was seen restarting the unit");
    // The events: an update step on each machine.
    let events = events.expect_ok("events of the unit");
    let updating: BTreeSet<&str> = events
        .stdout
        .lines()
        .filter(|l| l.contains("update-step") && l.contains(": updating"))
        .filter_map(|l| fleet_e2e::columns(l).get(3).copied())
        .filter(|machine| *machine != "-")
        .collect();
    assert_eq!(updating.len(), NODES as usize, "{}", events.stdout);
    // Each node's journal (a section per machine) ends with the new version's lines.
    let journal = journal.expect_ok("journal");
    let sections: Vec<&str> = journal.stdout.split("=== ").skip(1).collect();
    assert_eq!(sections.len(), NODES as usize, "{journal:#?}");
    assert!(sections.iter().all(|s| s.contains("v2")), "{journal:#?}");
}
