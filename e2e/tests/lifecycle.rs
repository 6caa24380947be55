//! A unit's life on the cluster, as a user lives it: start, list, stop, unload, destroy.

use std::time::Duration;

use fleet_e2e::{cluster, columns, eventually, node_in, ticker_unit, unique, NODES};

#[test]
fn list_machines_shows_every_node() {
    let c = cluster();
    let out = c
        .fleetctl(&["list-machines", "--no-legend"])
        .expect_ok("list-machines");
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(rows.len(), NODES as usize, "{}", out.stdout);
    for n in 1..=NODES {
        assert!(
            rows.iter()
                .any(|r| r.starts_with(&format!("f1ee70{n:02}...\t"))
                    && r.contains(&format!("hostname=node{n}"))),
            "node{n} missing: {}",
            out.stdout
        );
    }
}

#[test]
fn start_stop_unload_destroy() {
    let c = cluster();
    let name = unique("lifecycle");
    let name = name.as_str();
    let path = c.unit_file(name, &ticker_unit("lifecycle"));
    let path = path.to_string_lossy();

    // A blocking start returns once systemd has started the unit, a stop once it stopped it.
    let out = c.fleetctl(&["start", &path]).expect_ok("start");
    assert!(
        out.stdout
            .starts_with(&format!("Unit {name} launched on f1ee70")),
        "{}",
        out.stdout
    );
    let node = node_in(&out.stdout).expect("start names the machine");
    assert_eq!(c.is_active(node, name), "active");

    let units = c
        .fleetctl(&["list-units", "--no-legend"])
        .expect_ok("list-units");
    let row = units
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name}\t")))
        .unwrap_or_else(|| panic!("no row: {}", units.stdout));
    assert_eq!(node_in(row), Some(node), "{row}");
    assert!(columns(row).ends_with(&["active", "running"]), "{row:?}");

    let bare = name.trim_end_matches(".service");
    let cat = c.fleetctl(&["cat", bare]).expect_ok("cat");
    assert_eq!(cat.stdout, ticker_unit("lifecycle"));

    let out = c.fleetctl(&["stop", name]).expect_ok("stop");
    assert!(
        out.stdout
            .starts_with(&format!("Unit {name} loaded on f1ee70")),
        "{}",
        out.stdout
    );
    assert_eq!(c.is_active(node, name), "inactive");

    let out = c.fleetctl(&["unload", name]).expect_ok("unload");
    assert_eq!(out.stdout, format!("Unit {name} inactive\n"));
    let files = c
        .fleetctl(&["list-unit-files", "--no-legend"])
        .expect_ok("list-unit-files");
    assert!(
        files
            .stdout
            .lines()
            .any(|l| columns(l).ends_with(&["inactive", "inactive", "-"])
                && l.starts_with(&format!("{name}\t"))),
        "{}",
        files.stdout
    );

    c.fleetctl(&["start", name]).expect_ok("start again");
    let out = c.fleetctl(&["destroy", name]).expect_ok("destroy");
    assert_eq!(out.stdout, format!("Destroyed {name}\n"));
    let gone = eventually(Duration::from_secs(10), || {
        let everywhere = (1..=NODES).all(|n| {
            c.exec(n, &["test", "-e", &format!("/run/fleet/units/{name}")])
                .code
                == Some(1)
                && c.is_active(n, name) != "active"
        });
        everywhere.then_some(())
    });
    assert!(gone.is_some(), "{name} still present on some node");
    let files = c
        .fleetctl(&["list-unit-files"])
        .expect_ok("list-unit-files");
    assert!(!files.stdout.contains(name), "{}", files.stdout);
    let units = c.fleetctl(&["list-units"]).expect_ok("list-units");
    assert!(!units.stdout.contains(name), "{}", units.stdout);
}

/// Each unit goes to a machine running the fewest units (whatever other units the cluster
/// already runs).
#[test]
fn units_spread_over_machines() {
    let c = cluster();
    let names: Vec<String> = (1..=3).map(|_| unique("spread")).collect();
    let mut placed = Vec::new();
    for name in &names {
        let load = |n: u32| {
            c.fleetctl(&["list-units", "--no-legend"])
                .stdout
                .lines()
                .filter(|l| node_in(l) == Some(n))
                .count()
        };
        // Units other tests just destroyed may still be going: read until two reads agree.
        let loads = eventually(Duration::from_secs(10), || {
            let first: Vec<usize> = (1..=NODES).map(load).collect();
            std::thread::sleep(Duration::from_millis(300));
            let second: Vec<usize> = (1..=NODES).map(load).collect();
            (first == second).then_some(second)
        })
        .expect("the cluster's units keep changing");
        let path = c.unit_file(name, &ticker_unit(name));
        let out = c
            .fleetctl(&["start", &path.to_string_lossy()])
            .expect_ok("start");
        let node = node_in(&out.stdout).expect("machine in output");
        placed.push((node, loads));
    }
    for name in &names {
        c.fleetctl(&["destroy", name]).expect_ok("destroy");
    }
    for (node, loads) in placed {
        let fewest = loads.iter().min().copied().unwrap_or_default();
        assert_eq!(
            loads[node as usize - 1],
            fewest,
            "placed on node{node}, which ran {} units; loads were {loads:?}",
            loads[node as usize - 1]
        );
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let c = cluster();
    let before = c
        .fleetctl(&["list-unit-files"])
        .expect_ok("list-unit-files")
        .stdout;

    let bad_name = c.fleetctl(&["start", "bad name.service"]);
    assert_eq!(bad_name.code, Some(1), "{bad_name:#?}");
    assert!(
        bad_name.stderr.contains("invalid unit name"),
        "{}",
        bad_name.stderr
    );

    let path = c.unit_file(
        "broken.service",
        "[Unit]\nDescription=x\nthis line is bad\n",
    );
    let broken = c.fleetctl(&["submit", &path.to_string_lossy()]);
    assert_eq!(broken.code, Some(1), "{broken:#?}");
    assert!(broken.stderr.contains("line 3"), "{}", broken.stderr);

    let missing = c.fleetctl(&["start", "no-such-unit.service"]);
    assert_eq!(missing.code, Some(1), "{missing:#?}");

    let after = c
        .fleetctl(&["list-unit-files"])
        .expect_ok("list-unit-files")
        .stdout;
    assert_eq!(before, after);
}

/// A service that prints `word` every second.
fn echoing(word: &str) -> String {
    format!("[Service]\nExecStart=/bin/bash -c 'while true; do echo {word}; sleep 1; done'\n")
}

#[test]
fn replace_puts_new_content_in_place_of_the_running_unit() {
    let c = cluster();
    let name = unique("replaceme");
    let path = c.unit_file(&name, &echoing("first"));
    let path = path.to_string_lossy().into_owned();
    let out = c.fleetctl(&["start", &path]).expect_ok("start");
    let node = node_in(&out.stdout).expect("machine");
    let on_disk = |c: &fleet_e2e::Cluster| {
        c.exec(node, &["cat", &format!("/run/fleet/units/{name}")])
            .stdout
    };
    assert!(on_disk(c).contains("echo first"));

    c.unit_file(&name, &echoing("second"));
    let refused = c
        .fleetctl(&["submit", "--replace", &path])
        .expect_ok("submit --replace");
    assert!(refused.stderr.contains("can not replace"), "{refused:#?}");
    assert!(
        on_disk(c).contains("echo first"),
        "submit must not replace a launched unit"
    );

    let out = c
        .fleetctl(&["start", "--replace", &path])
        .expect_ok("start --replace");
    assert!(
        out.stdout.contains(&format!("Unit {name} launched on")),
        "{}",
        out.stdout
    );
    let content = on_disk(c);
    let active = c.is_active(node, &name);
    let cat = c.fleetctl(&["cat", &name]).expect_ok("cat");
    c.fleetctl(&["destroy", &name]).expect_ok("destroy");
    assert!(content.contains("echo second"), "{content}");
    assert_eq!(active, "active");
    assert!(cat.stdout.contains("echo second"), "{}", cat.stdout);
}

/// A unit replaced, then rolled back to its older hash: systemd on its machine runs the older
/// content again, and the history shows each step.
#[test]
fn a_unit_rolled_back_runs_its_older_content_again() {
    let c = cluster();
    let name = unique("rollback");
    let path = c.unit_file(&name, &echoing("first"));
    let path = path.to_string_lossy().into_owned();
    let out = c.fleetctl(&["start", &path]).expect_ok("start");
    let node = node_in(&out.stdout).expect("machine");
    c.unit_file(&name, &echoing("second"));
    c.fleetctl(&["start", "--replace", &path])
        .expect_ok("start --replace");

    let history = c
        .fleetctl(&["history", "--no-legend", &name])
        .expect_ok("history");
    let rows: Vec<Vec<&str>> = history
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{}", history.stdout);
    assert_eq!(rows[0].last(), Some(&"true"), "{}", history.stdout);
    assert_eq!(rows[1].last(), Some(&"false"), "{}", history.stdout);
    let (newer, older) = (rows[0][0].to_string(), rows[1][0].to_string());

    let out = c
        .fleetctl(&["rollback", &name, &older])
        .expect_ok("rollback");
    assert!(
        out.stdout
            .contains(&format!("Unit {name} rolled back from {newer} to {older}")),
        "{}",
        out.stdout
    );
    let on_disk = c
        .exec(node, &["cat", &format!("/run/fleet/units/{name}")])
        .stdout;
    let active = eventually(Duration::from_secs(10), || {
        (c.is_active(node, &name) == "active").then_some(())
    });
    let running = eventually(Duration::from_secs(10), || {
        let log = c.exec(node, &["journalctl", "-u", &name, "-n", "3", "-o", "cat"]);
        log.stdout
            .lines()
            .last()
            .is_some_and(|l| l == "first")
            .then_some(())
    });
    let after = c
        .fleetctl(&["history", "--no-legend", &name])
        .expect_ok("history");
    let events = c
        .fleetctl(&[
            "events",
            "--no-legend",
            "--full",
            "--fields",
            "kind,message",
            &name,
        ])
        .expect_ok("events");
    c.fleetctl(&["destroy", &name]).expect_ok("destroy");
    assert!(
        events.stdout.lines().any(|l| l.starts_with("reverted\t")
            && l.contains(&format!("rolled back by hand from {newer}"))
            && l.contains(&format!(" to {older}"))),
        "{}",
        events.stdout
    );
    assert!(on_disk.contains("echo first"), "{on_disk}");
    assert!(active.is_some(), "not active after the rollback");
    assert!(running.is_some(), "the older content does not run");
    let current: Vec<&str> = after
        .stdout
        .lines()
        .filter(|l| l.ends_with("true"))
        .collect();
    assert_eq!(current.len(), 1, "{}", after.stdout);
    assert!(current[0].starts_with(&older), "{}", after.stdout);
    assert_eq!(after.stdout.lines().count(), 3, "{}", after.stdout);
}

#[test]
fn list_commands_speak_json_for_scripts() {
    let c = cluster();
    let machines = c
        .fleetctl(&["list-machines", "--output", "json"])
        .expect_ok("list-machines --output json");
    let parsed: serde_json::Value =
        serde_json::from_str(&machines.stdout).expect("one JSON document");
    let list = parsed.as_array().expect("an array of machines");
    assert_eq!(list.len(), NODES as usize);
    assert!(list
        .iter()
        .all(|m| m["id"].as_str().is_some_and(|id| id.len() == 32) && m["primaryIP"].is_string()));

    let name = unique("json");
    let path = c.unit_file(&name, &ticker_unit("json"));
    c.fleetctl(&["start", &path.to_string_lossy()])
        .expect_ok("start");
    let units = c
        .fleetctl(&["list-units", "-o", "json"])
        .expect_ok("list-units -o json");
    let files = c
        .fleetctl(&["list-unit-files", "-o", "json"])
        .expect_ok("list-unit-files -o json");
    c.fleetctl(&["destroy", &name]).expect_ok("destroy");
    let states: serde_json::Value = serde_json::from_str(&units.stdout).expect("JSON");
    let state = states
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name.as_str()))
        .expect("the unit is listed");
    assert_eq!(state["systemdActiveState"], "active");
    let files: serde_json::Value = serde_json::from_str(&files.stdout).expect("JSON");
    let unit = files
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == name.as_str()))
        .expect("the unit is listed");
    assert_eq!(unit["desiredState"], "launched");
}

/// A start that systemd carried out but that failed there is an error naming the unit, the
/// machine and what systemd said, whether the start job itself failed (a oneshot) or the
/// service's process failed at once (systemd reports such a start job as done). `--no-block`
/// only triggers.
#[test]
fn a_start_that_fails_in_systemd_is_an_error() {
    let c = cluster();
    let cases = [
        (
            "false",
            "[Service]\nExecStart=/bin/false\n",
            "exited with status 1",
        ),
        (
            "missing",
            "[Service]\nExecStart=/nonexistent/fleet-e2e\n",
            "exited with status 203",
        ),
        (
            "oneshot",
            "[Service]\nType=oneshot\nExecStart=/bin/false\n",
            "start job failed",
        ),
    ];
    for (stem, text, says) in cases {
        let name = unique(stem);
        let path = c.unit_file(&name, text);
        let out = c.fleetctl(&["start", &path.to_string_lossy()]);
        let listed = c
            .fleetctl(&["list-units", "--no-legend"])
            .expect_ok("list-units");
        c.fleetctl(&["destroy", &name]).expect_ok("destroy");
        assert_eq!(out.code, Some(1), "{stem}: {out:#?}");
        assert_eq!(out.stdout, "", "{stem}: nothing is launched");
        let said = format!("Error waiting for units: unit {name} failed to start on f1ee70");
        assert!(out.stderr.starts_with(&said), "{stem}: {}", out.stderr);
        assert!(node_in(&out.stderr).is_some(), "{stem}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{stem}: {}", out.stderr);
        let row = listed
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("{stem}: no row: {}", listed.stdout));
        assert!(
            columns(row).ends_with(&["failed", "failed"]),
            "{stem}: {row:?}"
        );
    }

    let name = unique("false-noblock");
    let path = c.unit_file(&name, "[Service]\nExecStart=/bin/false\n");
    let out = c.fleetctl(&["start", "--no-block", &path.to_string_lossy()]);
    c.fleetctl(&["destroy", &name]).expect_ok("destroy");
    assert!(out.ok(), "{out:#?}");
    assert_eq!(out.stdout, format!("Triggered unit {name} start\n"));
}

/// The API's unix socket is root's alone: whoever can talk to fleetd runs anything as root on
/// every machine.
#[test]
fn the_api_socket_is_for_root_only() {
    let c = cluster();
    for n in 1..=NODES {
        let out = c
            .exec(n, &["stat", "-L", "-c", "%a %U %F", "/var/run/fleet.sock"])
            .expect_ok("stat the socket");
        assert_eq!(out.stdout, "600 root socket\n", "node{n}");
    }
}

/// fleetd logs to the journal with its fields as journal fields: what it did with one unit is
/// one query away on the unit's machine.
#[test]
fn fleetd_logs_each_unit_to_the_journal_with_fields() {
    let c = cluster();
    let name = unique("journaled");
    let path = c.unit_file(&name, &ticker_unit("journaled"));
    let out = c
        .fleetctl(&["start", &path.to_string_lossy()])
        .expect_ok("start");
    let node = node_in(&out.stdout).expect("start names the machine");
    c.fleetctl(&["stop", &name]).expect_ok("stop");
    let field = format!("FLEET_UNIT={name}");
    let query = [
        "journalctl",
        "-u",
        "fleet",
        "--no-pager",
        "-o",
        "cat",
        &field,
    ];
    // journald stores what it is sent on its own time.
    let logged = eventually(Duration::from_secs(10), || {
        let out = c.exec(node, &query);
        out.stdout
            .contains(&format!("stopped unit={name}"))
            .then_some(out.stdout)
    });
    c.fleetctl(&["destroy", &name]).expect_ok("destroy");
    let logged = logged.unwrap_or_else(|| {
        panic!(
            "node{node}: no entries with {field}: {:#?}",
            c.exec(node, &query)
        )
    });
    let steps: Vec<&str> = logged
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|w| w.trim_end_matches(':'))
        .filter(|w| *w != "placed") // by the engine, if it leads on this machine
        .collect();
    assert_eq!(
        steps,
        ["loading", "starting", "started", "stopping", "stopped"],
        "{logged}"
    );
    assert!(
        logged.lines().all(|l| l.contains(&format!("unit={name}"))),
        "an entry without the field matched: {logged}"
    );
    // A field of its own, not only text: the entry's fields as journald stores them.
    let verbose = c.exec(
        node,
        &[
            "journalctl",
            "-u",
            "fleet",
            "--no-pager",
            "-o",
            "verbose",
            &field,
            "-n",
            "1",
        ],
    );
    assert!(
        verbose.stdout.contains(&format!("    FLEET_UNIT={name}\n")),
        "{}",
        verbose.stdout
    );
    assert!(
        verbose.stdout.contains("    PRIORITY="),
        "{}",
        verbose.stdout
    );
    assert!(
        verbose.stdout.contains("    SYSLOG_IDENTIFIER=fleetd\n"),
        "{}",
        verbose.stdout
    );
}
