//! `fleetctl drain`, `undrain` and `list-machines`' state against the real API over a real
//! etcd with the real engine, and a simulated machine (see `support`): the only machine, so a
//! unit drained off it waits, unplaceable, until the drain ends.

mod support;

use support::*;

fn args(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_is_drained_shown_drained_and_undrained() {
    let fleet = Fleet::start().await;
    let paths: Vec<String> = ["a.service", "b.service"]
        .iter()
        .map(|n| fleet.unit_file(n, &service(n)))
        .collect();
    let mut start = args(&["start"]);
    start.extend(paths.iter().cloned());
    let run = fleet.fleetctl(&start).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);

    // A prefix that names no machine changes nothing.
    let run = fleet.fleetctl(&args(&["drain", "ffff"])).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.err.trim(),
        "Unable to drain ffff: machine \"ffff\": machine does not exist"
    );
    let run = fleet
        .fleetctl(&args(&["list-machines", "--no-legend"]))
        .await;
    assert_eq!(
        lines(&run.out),
        ["00000000...\t10.0.0.1\t-"],
        "no STATE column"
    );

    let run = fleet.fleetctl(&args(&["drain", "0000"])).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    let out = lines(&run.out);
    assert_eq!(
        out.first(),
        Some(&"Draining machine 00000000..."),
        "{}",
        run.out
    );
    assert_eq!(
        out.last(),
        Some(&"Machine 00000000... drained"),
        "{}",
        run.out
    );
    let run = fleet.fleetctl(&args(&["list-machines"])).await;
    assert_eq!(
        lines(&run.out),
        [
            "MACHINE\t\tIP\t\tMETADATA\tSTATE",
            "00000000...\t10.0.0.1\t-\t\tdrained"
        ]
    );
    let run = fleet
        .fleetctl(&args(&[
            "list-unit-files",
            "--no-legend",
            "--fields",
            "unit,reason",
        ]))
        .await;
    for line in lines(&run.out) {
        assert!(line.ends_with("00000000: machine is draining"), "{line:?}");
    }

    // Undrained, it takes its units again; a second undrain says there is no drain.
    let run = fleet.fleetctl(&args(&["undrain", "00000000"])).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    assert_eq!(run.out.trim(), "Machine 00000000... takes units again");
    let mut wait = args(&["start"]);
    wait.extend(["a.service".to_string(), "b.service".to_string()]);
    let run = fleet.fleetctl(&wait).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    let run = fleet.fleetctl(&args(&["undrain", "0000"])).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.err.trim(), "Machine 00000000... is not being drained.");
}
