//! fleetd itself stops and starts (killed, restarted, replaced by a new binary): the units it
//! runs never restart and nothing moves. Restarts are told by systemd's `InvocationID`, which
//! changes each time a unit is started.

use std::time::Duration;

use fleet_e2e::{cluster, eventually, ticker_unit, unique, Cluster, PinnedUnit, NODES};

/// fleetd's main process on node `n`.
fn fleetd_pid(c: &Cluster, n: u32) -> String {
    c.exec(n, &["systemctl", "show", "-P", "MainPID", "fleet.service"])
        .stdout
        .trim()
        .to_string()
}

/// Waits until each node runs a new fleetd (not one of `before`) whose agent has been through
/// its loop at least once (it started a probe unit placed on it), then checks that each unit
/// still runs, on its node, under the same invocation, and that fleet reports it there.
fn nothing_restarted(c: &Cluster, units: &[PinnedUnit], before: &[String], what: &str) {
    for n in 1..=NODES {
        let pid = &before[n as usize - 1];
        let new = eventually(Duration::from_secs(20), || {
            let now = fleetd_pid(c, n);
            (now != *pid && now != "0" && !now.is_empty()).then_some(())
        });
        assert!(
            new.is_some(),
            "{what}: fleetd on node{n} did not start again"
        );
        // The agent handles events in order: once it started the probe, it had recovered
        // and reconciled what it found, and would have restarted a unit by then.
        let probe = unique("probe");
        let text = format!(
            "{}\n[X-Fleet]\nMachineID={}\n",
            ticker_unit("probe"),
            c.machine_id(n)
        );
        let path = c.unit_file(&probe, &text);
        c.fleetctl_via(n, &["start", &path.to_string_lossy()])
            .expect_ok("start a probe");
        c.fleetctl_via(n, &["destroy", &probe])
            .expect_ok("destroy the probe");
    }
    c.assert_unchanged(units, what);
}

fn pids(c: &Cluster) -> Vec<String> {
    (1..=NODES).map(|n| fleetd_pid(c, n)).collect()
}

#[test]
fn fleetd_killed_restarted_or_replaced_restarts_no_unit() {
    let c = cluster();
    let units = c.start_one_per_node("steady");

    // SIGKILL: systemd starts fleetd again (Restart=always); it takes its lease back.
    let before = pids(c);
    for n in 1..=NODES {
        c.exec(
            n,
            &[
                "/bin/sh",
                "-c",
                "kill -KILL $(systemctl show -P MainPID fleet.service)",
            ],
        )
        .expect_ok("kill fleetd");
    }
    nothing_restarted(c, &units, &before, "after SIGKILL");

    // A clean restart, one node after another.
    let before = pids(c);
    for n in 1..=NODES {
        c.exec(n, &["systemctl", "restart", "fleet.service"])
            .expect_ok("restart fleetd");
    }
    nothing_restarted(c, &units, &before, "after systemctl restart");

    // A new binary: a different file (same code, a marker appended past the ELF image), then
    // a restart, as an upgrade does it.
    c.replace_fleetd_binary();
    let before = pids(c);
    for n in 1..=NODES {
        c.exec(n, &["systemctl", "restart", "fleet.service"])
            .expect_ok("restart fleetd on the new binary");
    }
    nothing_restarted(c, &units, &before, "after a new binary");

    c.destroy_all(&units);
}
