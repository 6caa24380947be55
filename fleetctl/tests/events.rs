//! `fleetctl events` against the real API over a real etcd with the real engine recording its
//! decisions, and a simulated machine (see `support`): by unit, by machine, the newest N, as
//! JSON, followed live, and bad arguments refused.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use support::*;

fn args(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// The rows of a table, split into cells.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| {
            l.split('\t')
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

/// The next line `fleetctl events -f` printed.
async fn next_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(15), lines.recv())
        .await
        .expect("a line of fleetctl events -f in time")
        .expect("fleetctl events -f goes on")
}

const MACHINE: &str = "00000000000000000000000000000001";

#[tokio::test(flavor = "multi_thread")]
async fn events_are_listed_by_unit_and_machine_and_followed() {
    let fleet = Fleet::start().await;
    for name in ["web.service", "db.service"] {
        let path = fleet.unit_file(name, &service(name));
        let run = fleet.fleetctl(&args(&["start", &path])).await;
        assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    }

    // A unit's events, by its name as on any command line (`.service` added).
    let run = fleet.fleetctl(&args(&["events", "web"])).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let table = rows(&run.out);
    assert_eq!(table[0], ["TIME", "KIND", "UNIT", "MACHINE", "MESSAGE"]);
    assert_eq!(table.len(), 2, "{}", run.out);
    assert_eq!(
        table[1][1..],
        [
            "placed",
            "web.service",
            "00000000...",
            "the only machine (load 0)"
        ]
    );
    // To the second, as RFC 3339 in UTC.
    assert_eq!(table[1][0].len(), 20, "{}", table[1][0]);
    assert!(table[1][0].ends_with('Z'));

    // By machine (a prefix of a live machine's id), without the legend, every column whole.
    let run = fleet
        .fleetctl(&args(&[
            "events",
            "--machine",
            "0000000",
            "--no-legend",
            "--full",
        ]))
        .await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let table = rows(&run.out);
    let units: Vec<&str> = table.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(units, ["web.service", "db.service"], "{}", run.out);
    assert!(table.iter().all(|r| r[3] == MACHINE), "{}", run.out);
    // With milliseconds when whole.
    assert_eq!(table[0][0].len(), 24, "{}", table[0][0]);

    // The newest one; as JSON, the API's objects.
    let run = fleet
        .fleetctl(&args(&[
            "events",
            "-n",
            "1",
            "--no-legend",
            "--fields",
            "unit,kind",
        ]))
        .await;
    assert_eq!(rows(&run.out), [["db.service", "placed"]], "{}", run.err);
    let run = fleet.fleetctl(&args(&["events", "-o", "json"])).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let json: serde_json::Value = serde_json::from_str(&run.out).expect("JSON");
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(json[0]["unit"], "web.service");
    assert_eq!(json[0]["machine"], MACHINE);
    assert_eq!(json[0]["source"], MACHINE);

    // Followed: the newest first, then what is recorded meanwhile.
    let mut follower = support::fleetctl_command()
        .args(["--endpoint", &fleet.endpoint, "events", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fleetctl events -f");
    let (lines_out, mut lines_in) = tokio::sync::mpsc::unbounded_channel();
    let stdout = follower.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_out.send(line).is_err() {
                return;
            }
        }
    });
    assert!(next_line(&mut lines_in).await.starts_with("TIME"));
    assert!(next_line(&mut lines_in).await.contains("db.service"));
    let path = fleet.unit_file("cache.service", &service("cache"));
    let run = fleet.fleetctl(&args(&["start", &path])).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    let line = next_line(&mut lines_in).await;
    let cells = rows(&line).remove(0);
    assert_eq!(cells[1..3], ["placed", "cache.service"], "{line}");
    let _ = follower.kill();
    let _ = follower.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_arguments_are_refused_before_anything_is_asked() {
    let fleet = Fleet::start().await;
    for (bad, says) in [
        (&["events", "@x"][..], "invalid unit name"),
        (&["events", "--fields", "time,hash"], "invalid fields"),
        (
            &["events", "--machine", "ffff"],
            "machine \"ffff\": machine does not exist",
        ),
    ] {
        let run = fleet.fleetctl(&args(bad)).await;
        assert_eq!(run.code, Some(1), "{bad:?}: {}", run.out);
        assert!(run.err.contains(says), "{bad:?}: {}", run.err);
        assert!(run.out.is_empty(), "{bad:?}: {}", run.out);
    }
}
