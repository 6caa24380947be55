//! fleetd reloads its configuration on SIGHUP, as fleet did ("Reloading configuration" in its
//! log), and a reload stops, restarts or moves no unit.

use std::time::Duration;

use fleet_e2e::{cluster, eventually, Cluster, NODES};

/// How many times fleetd on node `n` logged a reload.
fn reloads(c: &Cluster, n: u32) -> usize {
    c.fleetd_log_count(n, "Reloading configuration")
}

fn fleetd_pid(c: &Cluster, n: u32) -> String {
    c.exec(n, &["systemctl", "show", "-P", "MainPID", "fleet.service"])
        .stdout
        .trim()
        .to_string()
}

#[test]
fn sighup_reloads_the_configuration_and_restarts_no_unit() {
    let c = cluster();
    let units = c.start_one_per_node("reload");
    let pids: Vec<String> = (1..=NODES).map(|n| fleetd_pid(c, n)).collect();
    let before: Vec<usize> = (1..=NODES).map(|n| reloads(c, n)).collect();

    for n in 1..=NODES {
        // To fleetd alone: the journalctl children of followed journals are none of it.
        c.exec(
            n,
            &[
                "systemctl",
                "kill",
                "-s",
                "HUP",
                "--kill-who=main",
                "fleet.service",
            ],
        )
        .expect_ok("systemctl kill -s HUP");
    }

    for n in 1..=NODES {
        let want = before[n as usize - 1] + 1;
        let logged = eventually(Duration::from_secs(10), || {
            (reloads(c, n) >= want).then_some(())
        });
        assert!(
            logged.is_some(),
            "node{n}: no \"Reloading configuration\" in fleetd's journal"
        );
    }
    // Long enough for a stop, a restart or a move to show.
    std::thread::sleep(Duration::from_secs(3));
    for n in 1..=NODES {
        assert_eq!(
            fleetd_pid(c, n),
            pids[n as usize - 1],
            "node{n}: fleetd restarted"
        );
        c.fleetctl_via(n, &["list-machines", "--no-legend"])
            .expect_ok("the API answers after a reload");
    }
    c.assert_unchanged(&units, "after SIGHUP");
    c.destroy_all(&units);
}
