//! A minute of chaos (`fleet_e2e::chaos`): random node kills, partitions, etcd member kills,
//! etcd outages and fleetd restarts while units start and stop, every node's systemd sampled
//! throughout. No unit ever runs twice, none is lost, none restarts on an untouched machine.
//! `fleet-bench chaos` runs it longer.

use std::time::Duration;

use fleet_e2e::{chaos, cluster};

#[test]
fn a_minute_of_chaos_runs_nothing_twice_and_loses_nothing() {
    let c = cluster();
    // A new schedule each run, printed so that a failure can be replayed.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let report = chaos::run(c, Duration::from_secs(60), 6, seed);
    c.up();
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
