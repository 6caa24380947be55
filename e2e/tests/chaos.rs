//! A minute of chaos (`fleet_e2e::chaos`): random node kills, partitions, etcd member kills,
//! etcd outages and fleetd restarts while units start and stop, every node's systemd sampled
//! throughout. No unit ever runs twice, none is lost, none restarts on an untouched machine.
//! `fleet-bench chaos` runs it longer.

use std::time::Duration;

use fleet_e2e::{chaos, cluster, NODES};

#[test]
fn a_minute_of_chaos_runs_nothing_twice_and_loses_nothing() {
    let c = cluster();
    // A new schedule each run, printed so that a failure can be replayed.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let began = std::time::Instant::now();
    let report = chaos::run(c, Duration::from_secs(60), 6, seed);
    c.up();
    if !report.passed() {
        // What each fleetd said about its lease meanwhile: enough to tell a needless fence
        // from a lost unit the next time this fails somewhere nobody can look.
        let since = format!("-{}s", began.elapsed().as_secs() + 30);
        for n in 1..=NODES {
            let log = c.exec(
                n,
                &[
                    "journalctl",
                    "-u",
                    "fleet",
                    "--since",
                    &since,
                    "-o",
                    "short-precise",
                    "--no-pager",
                ],
            );
            let lines: Vec<&str> = log
                .stdout
                .lines()
                .filter(|l| !l.contains("cannot renew this machine's lease"))
                .filter(|l| {
                    [
                        "lease", "fenc", "majority", "round", "Monitor", "declared", "register",
                    ]
                    .iter()
                    .any(|w| l.contains(w))
                })
                .collect();
            eprintln!("node{n}'s fleetd on its lease:\n{}", lines.join("\n"));
        }
    }
    eprintln!(
        "chaos seed {seed}: faults {:#?}; {} samples, every {:?} per node",
        report.faults,
        report.samples.count(),
        report.samples.median_period()
    );

    assert!(
        report.faults.len() >= 2,
        "too few faults: {:?}",
        report.faults
    );
    assert!(
        report.samples.median_period() <= Duration::from_millis(150),
        "nodes sampled too rarely: every {:?}",
        report.samples.median_period()
    );
    assert!(
        report.doubles.is_empty(),
        "ran twice: {:#?}",
        report.doubles
    );
    assert!(report.lost.is_empty(), "lost: {:#?}", report.lost);
    assert!(
        report.restarts.is_empty(),
        "restarted on untouched machines: {:#?}",
        report.restarts
    );
}
