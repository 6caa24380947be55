//! Reading a unit from anywhere: `fleetctl journal`, `status` and `restart` through the API of
//! a machine that does not run the unit (its fleetd asks the right machine's peer endpoint).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use fleet_e2e::{
    api_url, cluster, eventually, fleetctl_command, https, node_in, node_ip, target_dir, unique,
    Cluster, NODES,
};

/// A service that prints `tick N`, N counting up, every second, on machine `machine_id`.
fn counter_unit(machine_id: &str) -> String {
    format!(
        "[Unit]\nDescription=counter\n\n[Service]\nExecStart=/bin/bash -c 'i=0; while true; do i=$$((i+1)); echo tick $$i; sleep 1; done'\n\n[X-Fleet]\nMachineID={machine_id}\n"
    )
}

fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| {
            l.rsplit_once("tick ")
                .and_then(|(_, n)| n.trim().parse().ok())
        })
        .collect()
}

/// A node other than `node`, whose API the test talks to.
fn other_than(node: u32) -> u32 {
    if node == 1 {
        2
    } else {
        1
    }
}

/// How many `journalctl` processes for `unit` run on node `n`.
fn journalctls(c: &Cluster, n: u32, unit: &str) -> usize {
    let script = format!(
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^journalctl --unit={unit}' || true"
    );
    let out = c.exec(n, &["/bin/bash", "-c", &script]);
    out.stdout.trim().parse().unwrap_or(usize::MAX)
}

/// A GET as the operator, or as machine `as_machine`'s peer; the status and body.
fn get(url: &str, as_machine: Option<u32>) -> (u16, String) {
    let holder = as_machine.map(|n| format!("nodes/node{n}/machine"));
    https(
        "GET",
        url,
        Some(holder.as_deref().unwrap_or("operator")),
        "ca/ca.pem",
        None,
        None,
    )
    .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[test]
fn journal_status_restart_of_a_unit_on_another_machine() {
    let c = cluster();
    let name = unique("jcounter");
    let name = name.as_str();
    let path = c.unit_file(name, &counter_unit(&c.machine_id(2)));
    let out = c
        .fleetctl(&["start", &path.to_string_lossy()])
        .expect_ok("start");
    // MachineID pins the unit to node2 (placement.rs checks the rule). Everything below reads
    // it through another node's API, whose fleetd asks the unit's machine's peer endpoint.
    let node = node_in(&out.stdout).expect("start names the machine");
    let api = other_than(node);
    let fleetctl = |args: &[&str]| c.fleetctl_via(api, args);

    // The last 5 lines: 5 ticks once the unit has ticked long enough.
    let last = eventually(Duration::from_secs(20), || {
        let out = fleetctl(&["journal", "-n", "5", name]);
        (out.ok() && out.stdout.lines().count() == 5 && ticks(&out.stdout).len() == 5)
            .then_some(out.stdout)
    })
    .unwrap_or_else(|| panic!("no 5 ticks: {:#?}", fleetctl(&["journal", "-n", "5", name])));
    let numbers = ticks(&last);
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "not consecutive: {last}"
    );
    // The default is 10 lines.
    let ten = eventually(Duration::from_secs(15), || {
        let out = fleetctl(&["journal", name]);
        (ticks(&out.stdout).len() == 10).then_some(())
    });
    assert!(ten.is_some(), "journal without -n shows no 10 ticks");

    // Following: new lines arrive as the unit writes them; the child on the unit's machine
    // ends when the reader goes away.
    let mut child = fleetctl_command(&target_dir().join("debug"), "operator", api)
        .args(["journal", "-f", "-n", "1", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fleetctl journal -f");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("journal -f printed nothing");
    let first_tick = ticks(&first).first().copied().expect("a tick line");
    let newer = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no new line within 10 s");
        if let Some(n) = ticks(&line).first().copied() {
            break n;
        }
    };
    assert!(newer > first_tick, "{newer} after {first_tick}");
    assert_eq!(
        journalctls(c, node, name),
        1,
        "journalctl -f on the unit's machine"
    );
    child.kill().unwrap();
    let _ = child.wait();
    let gone = eventually(Duration::from_secs(10), || {
        (journalctls(c, node, name) == 0).then_some(())
    });
    assert!(
        gone.is_some(),
        "journalctl still runs after the reader left"
    );

    // Status: systemctl's text and exit code.
    let out = fleetctl(&["status", name]).expect_ok("status");
    assert!(
        out.stdout.contains("Active: active (running)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(name), "{}", out.stdout);
    // Flags fleet's scripts pass, accepted for compatibility: the same answers.
    let out = fleetctl(&["status", "--no-block", name]).expect_ok("status --no-block");
    assert!(
        out.stdout.contains("Active: active (running)"),
        "{}",
        out.stdout
    );
    let out = fleetctl(&["journal", "--sudo", "-n", "3", name]).expect_ok("journal --sudo");
    assert_eq!(ticks(&out.stdout).len(), 3, "{}", out.stdout);

    // Restart: fleet's messages, and running again (the counter starts over).
    let out = fleetctl(&["restart", name]).expect_ok("restart");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(
        lines[0].starts_with(&format!("Unit {name} loaded on f1ee70")),
        "{}",
        out.stdout
    );
    assert!(
        lines[1].starts_with(&format!("Unit {name} launched on f1ee70")),
        "{}",
        out.stdout
    );
    assert_eq!(node_in(lines[1]), Some(node), "{}", out.stdout);
    assert_eq!(c.is_active(node, name), "active");
    let restarted = eventually(Duration::from_secs(10), || {
        let out = fleetctl(&["journal", "-n", "3", name]);
        out.stdout.contains("tick 1\n").then_some(())
    });
    assert!(restarted.is_some(), "the counter did not start over");
    let out = fleetctl(&["restart", "--no-block", name]).expect_ok("restart --no-block");
    assert_eq!(
        out.stdout,
        format!("Triggered unit {name} stop\nTriggered unit {name} start\n")
    );
    let active = eventually(Duration::from_secs(10), || {
        (c.is_active(node, name) == "active").then_some(())
    });
    assert!(active.is_some(), "not active after restart --no-block");

    // A stopped unit: systemctl status's exit code 3 comes through.
    c.fleetctl(&["stop", name]).expect_ok("stop");
    let out = fleetctl(&["status", name]);
    assert_eq!(out.code, Some(3), "{out:#?}");
    assert!(out.stdout.contains("inactive (dead)"), "{}", out.stdout);
    // Restarting it starts it, as fleet v1.0 did: one step, since it is only loaded.
    let out = fleetctl(&["restart", name]).expect_ok("restart of a stopped unit");
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(
        out.stdout
            .starts_with(&format!("Unit {name} launched on f1ee70")),
        "{}",
        out.stdout
    );
    assert_eq!(c.is_active(node, name), "active");

    // The peer endpoint serves the units fleet placed on its machine, and nothing else there.
    let peer = format!("https://{}:49154/fleet/peer/v1", node_ip(node));
    let other_machine = Some(other_than(node));
    let (code, text) = get(&format!("{peer}/status?unit={name}"), other_machine);
    assert_eq!(code, 200, "{text}");
    for other in ["fleet.service", "systemd-journald.service"] {
        let (code, text) = get(&format!("{peer}/status?unit={other}"), other_machine);
        assert_eq!(code, 404, "{text}");
        assert!(text.contains("\"code\":404"), "{text}");
        let (code, text) = get(&format!("{peer}/journal?unit={other}"), other_machine);
        assert_eq!(code, 404, "{text}");
    }

    c.fleetctl(&["destroy", name]).expect_ok("destroy");
}

#[test]
fn missing_units_and_bad_requests_are_refused() {
    let c = cluster();
    let out = c.fleetctl(&["journal", "nosuch"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(out.stderr, "Unit nosuch.service does not exist.\n");
    let out = c.fleetctl(&["status", "nosuch.service"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(out.stderr, "Unit nosuch.service does not exist.\n");

    let api = format!("{}/fleet/v1", api_url(1));
    let (code, text) = get(&format!("{api}/units/nosuch.service/journal"), None);
    assert_eq!(code, 404, "{text}");
    assert!(text.contains("\"code\":404"), "{text}");
    for query in ["lines=0", "lines=abc", "lines=1000001", "follow=maybe"] {
        let (code, text) = get(&format!("{api}/units/nosuch.service/journal?{query}"), None);
        assert_eq!(code, 400, "{query}: {text}");
    }
    let (code, text) = get(&format!("{api}/units/bad%20name.service/status"), None);
    assert_eq!(code, 400, "{text}");

    // A unit known but placed nowhere.
    let idle = unique("jidle");
    let idle = idle.as_str();
    let path = c.unit_file(idle, &fleet_e2e::ticker_unit("idle"));
    c.fleetctl(&["submit", &path.to_string_lossy()])
        .expect_ok("submit");
    let out = c.fleetctl(&["journal", idle]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(
        out.stderr,
        format!("Unit {idle} does not appear to be running.\n")
    );
    // fleet v1.0 refused to restart it on stderr and went on: exit 0.
    let out = c.fleetctl(&["restart", idle]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(
        out.stderr,
        format!("Unable to restart unit {idle} in state inactive\n")
    );
    let (code, text) = get(&format!("{api}/units/{idle}/status"), None);
    assert_eq!(code, 404, "{text}");
    assert!(text.contains("does not run on any machine"), "{text}");
    c.fleetctl(&["destroy", idle]).expect_ok("destroy");
}

#[test]
fn a_global_unit_has_one_section_per_machine() {
    let c = cluster();
    let name = unique("jglobal");
    let name = name.as_str();
    let path = c.unit_file(
        name,
        "[Service]\nExecStart=/bin/bash -c 'while true; do echo gtick; sleep 1; done'\n\n[X-Fleet]\nGlobal=true\n",
    );
    c.fleetctl(&["start", &path.to_string_lossy()])
        .expect_ok("start");
    let headers = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("=== "))
            .map(str::to_string)
            .collect()
    };
    let all = eventually(Duration::from_secs(20), || {
        let out = c.fleetctl(&["journal", "-n", "2", name]);
        let h = headers(&out.stdout);
        (out.ok()
            && h.len() == NODES as usize
            && out.stdout.matches("gtick").count() >= 2 * NODES as usize)
            .then_some(out.stdout)
    })
    .unwrap_or_else(|| panic!("{:#?}", c.fleetctl(&["journal", "-n", "2", name])));
    for n in 1..=NODES {
        let want = format!("=== f1ee70{n:02}.../{} ===", node_ip(n));
        assert!(headers(&all).contains(&want), "{want} missing: {all}");
    }

    let out = c.fleetctl(&["journal", "-f", name]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("pick one with machineID"),
        "{}",
        out.stderr
    );
    let out = c.fleetctl(&["journal", "-n", "2", "--machine", "f1ee7003", name]);
    assert!(out.ok(), "{out:#?}");
    assert!(headers(&out.stdout).is_empty(), "{}", out.stdout);
    assert_eq!(out.stdout.matches("gtick").count(), 2, "{}", out.stdout);

    let out = c.fleetctl(&["status", name]).expect_ok("status");
    assert_eq!(headers(&out.stdout).len(), NODES as usize, "{}", out.stdout);
    assert_eq!(
        out.stdout.matches("Active: active (running)").count(),
        NODES as usize,
        "{}",
        out.stdout
    );
    c.fleetctl(&["destroy", name]).expect_ok("destroy");
}

#[test]
fn a_quiet_followed_journal_ends_with_its_reader() {
    let c = cluster();
    let name = unique("jquiet");
    let name = name.as_str();
    let path = c.unit_file(
        name,
        "[Service]\nExecStart=/bin/bash -c 'echo once; exec sleep infinity'\n",
    );
    let out = c
        .fleetctl(&["start", &path.to_string_lossy()])
        .expect_ok("start");
    let node = node_in(&out.stdout).expect("start names the machine");
    // Both ways: through another machine's peer endpoint, and read locally.
    for api in [other_than(node), node] {
        let mut child = fleetctl_command(&target_dir().join("debug"), "operator", api)
            .args(["journal", "-f", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run fleetctl journal -f");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let seen = eventually(Duration::from_secs(10), || {
            rx.try_recv().ok().filter(|l| l.ends_with("once"))
        });
        assert!(
            seen.is_some(),
            "journal -f via node{api} never showed the line"
        );
        assert_eq!(journalctls(c, node, name), 1, "via node{api}");
        child.kill().unwrap();
        let _ = child.wait();
        // Nothing more is written, yet the journalctl ends.
        let gone = eventually(Duration::from_secs(10), || {
            (journalctls(c, node, name) == 0).then_some(())
        });
        assert!(
            gone.is_some(),
            "journalctl outlives its reader via node{api}"
        );
    }
    c.fleetctl(&["destroy", name]).expect_ok("destroy");
}

/// A client may follow `fleet_api::follows::PER_CLIENT` journals at once through one fleetd;
/// the next is refused (429) until one ends, and others are not held up meanwhile.
#[test]
fn followed_journals_are_capped_per_client() {
    const PER_CLIENT: usize = 8;
    let c = cluster();
    let units = c.start_one_per_node("jcapped");
    let name = units[0].name.clone();
    let follow = |holder: &str| {
        let mut child = fleetctl_command(&target_dir().join("debug"), holder, 1)
            .args(["journal", "-f", "-n", "1", &name])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run fleetctl journal -f");
        // Admitted once it prints: its follow is counted from then on.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_err() || tx.send(()).is_err() {
                    break;
                }
            }
        });
        let printed = rx.recv_timeout(Duration::from_secs(10)).is_ok();
        (child, printed)
    };
    let mut held = Vec::new();
    for i in 0..PER_CLIENT {
        let (child, printed) = follow("viewer");
        assert!(printed, "follow {i} printed nothing");
        held.push(child);
    }
    // The next one: refused at once (never left following, which would hang this test).
    let mut refused = fleetctl_command(&target_dir().join("debug"), "viewer", 1)
        .args(["journal", "-f", "-n", "1", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fleetctl journal -f");
    let ended = eventually(Duration::from_secs(10), || {
        refused.try_wait().ok().flatten()
    });
    if ended.is_none() {
        let _ = refused.kill();
    }
    let out = refused.wait_with_output().expect("its output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("429"), "{stderr}");
    assert!(stderr.contains("journals"), "{stderr}");
    // Another client is not held up by the viewer's follows.
    let (mut other, printed) = follow("operator");
    assert!(printed, "the operator's follow printed nothing");
    let _ = other.kill();
    let _ = other.wait();
    // One ended: the viewer may follow again.
    let mut first = held.remove(0);
    let _ = first.kill();
    let _ = first.wait();
    let again = eventually(Duration::from_secs(10), || {
        let (mut child, printed) = follow("viewer");
        if printed {
            Some(child)
        } else {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    });
    let mut again = again.expect("a follow after one ended");
    let _ = again.kill();
    let _ = again.wait();
    for mut child in held {
        let _ = child.kill();
        let _ = child.wait();
    }
    c.destroy_all(&units);
}
