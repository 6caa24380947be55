//! Under load no machine loses its lease: while 1,000 units start on the 3 machines, and while
//! one machine's CPUs are kept busy for three TTLs, every fleetd keeps renewing the lease it
//! had (keepalives are never starved by other work), so nothing is fenced and nothing moves.

use std::time::{Duration, Instant};

use fleet_e2e::{cluster, columns, eventually, tag, Cluster, AGENT_TTL, NODES};

/// The lease each node's fleetd holds (the file fleetd keeps it in across restarts).
fn leases(c: &Cluster) -> Vec<String> {
    (1..=NODES)
        .map(|n| {
            c.exec(n, &["cat", "/run/fleet/lease"])
                .expect_ok("read the lease file")
                .stdout
                .trim()
                .to_string()
        })
        .collect()
}

/// Lines of fleetd's journal on node `n` since `since` (a `journalctl --since` time) that say
/// it fenced itself or lost its lease.
fn lease_trouble(c: &Cluster, n: u32, since: &str) -> Vec<String> {
    c.exec(
        n,
        &[
            "journalctl",
            "-u",
            "fleet",
            "--no-pager",
            "-o",
            "cat",
            "--since",
            since,
        ],
    )
    .stdout
    .lines()
    .filter(|l| l.contains("fencing") || l.contains("lease expired") || l.contains("fenced"))
    .map(str::to_string)
    .collect()
}

fn running(c: &Cluster, stem: &str) -> usize {
    c.fleetctl(&["list-units", "--no-legend"])
        .stdout
        .lines()
        .filter(|l| l.starts_with(stem) && columns(l).ends_with(&["active", "running"]))
        .count()
}

/// How many of the units named `stem*` systemd has loaded, on all nodes together.
fn in_systemd(c: &Cluster, stem: &str) -> usize {
    let pattern = format!("{stem}*");
    (1..=NODES)
        .map(|n| {
            c.exec(
                n,
                &["systemctl", "list-units", "--all", "--no-legend", &pattern],
            )
            .stdout
            .lines()
            .count()
        })
        .sum()
}

#[test]
fn no_lease_is_lost_while_a_thousand_units_start_and_a_machine_is_cpu_bound() {
    let c = cluster();
    let before = leases(c);
    let since = c
        .exec(1, &["date", "+%Y-%m-%d %H:%M:%S"])
        .stdout
        .trim()
        .to_string();
    let stem = format!("load-{}-", tag());
    let names: Vec<String> = (0..1000).map(|i| format!("{stem}{i:04}.service")).collect();
    let paths: Vec<String> = names
        .iter()
        .map(|n| {
            c.unit_file(n, "[Service]\nExecStart=/bin/sleep infinity\n")
                .to_string_lossy()
                .into_owned()
        })
        .collect();

    // 1,000 units start, from one command: each agent gets its third of them at once.
    let mut args = vec!["start", "--no-block"];
    args.extend(paths.iter().map(String::as_str));
    c.fleetctl(&args).expect_ok("start --no-block");
    let all = eventually(Duration::from_secs(180), || {
        (running(c, &stem) == names.len()).then_some(())
    });
    let during_start = leases(c);

    // One machine's CPUs busy (twice as many spinning processes as the host has cores) for
    // three TTLs.
    let burners = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
    for i in 0..burners {
        c.exec(
            1,
            &[
                "systemd-run",
                &format!("--unit=burn-{i}"),
                "/bin/sh",
                "-c",
                "while :; do :; done",
            ],
        )
        .expect_ok("start a CPU burner");
    }
    let burned = Instant::now();
    std::thread::sleep(AGENT_TTL * 3);
    let during_burn = leases(c);
    for i in 0..burners {
        c.exec(1, &["systemctl", "stop", &format!("burn-{i}")]);
    }
    let still = running(c, &stem);
    let trouble: Vec<(u32, Vec<String>)> = (1..=NODES)
        .map(|n| (n, lease_trouble(c, n, &since)))
        .filter(|(_, lines)| !lines.is_empty())
        .collect();

    // And all of them go, from one command: each agent stops and unloads its third at once
    // (an agent that did not read systemd's signals while it worked hung here).
    let mut args = vec!["destroy"];
    args.extend(names.iter().map(String::as_str));
    c.fleetctl(&args);
    let gone = eventually(Duration::from_secs(180), || {
        (running(c, &stem) == 0 && in_systemd(c, &stem) == 0).then_some(())
    });

    assert!(
        all.is_some(),
        "the 1,000 units did not all run within 180 s"
    );
    assert!(
        gone.is_some(),
        "the 1,000 units were not all gone within 180 s of their destroy: fleet lists {} running, systemd has {} loaded",
        running(c, &stem),
        in_systemd(c, &stem)
    );
    assert_eq!(
        during_start, before,
        "a lease was lost while 1,000 units started"
    );
    assert!(burned.elapsed() >= AGENT_TTL * 3);
    assert_eq!(
        during_burn, before,
        "a lease was lost while node1 was CPU-bound"
    );
    assert_eq!(still, names.len(), "units stopped meanwhile");
    assert!(
        trouble.is_empty(),
        "fleetd fenced or lost its lease: {trouble:?}"
    );
}
