//! etcd is down: fleetctl says so promptly instead of hanging, and running units keep running.

use std::time::{Duration, Instant};

use fleet_e2e::{cluster, eventually, node_in, ticker_unit, unique, AGENT_TTL, NODES};

#[test]
fn stopped_etcd_gives_a_clear_error_and_running_units_stay() {
    let c = cluster();
    let name = unique("survivor");
    let name = name.as_str();
    let path = c.unit_file(name, &ticker_unit("survivor"));
    let out = c
        .fleetctl(&["start", &path.to_string_lossy()])
        .expect_ok("start");
    let node = node_in(&out.stdout).expect("machine in output");

    c.tool(&["etcd-stop"]).expect_ok("etcd-stop");
    // fleetd must answer (503) rather than leave fleetctl to time out.
    let list = c.fleetctl(&["--request-timeout", "5", "list-units"]);
    let start = c.fleetctl(&["start", &unique("another")]);
    let still_active = c.is_active(node, name);
    c.tool(&["etcd-start"]).expect_ok("etcd-start");
    c.up();

    assert_eq!(list.code, Some(1), "{list:#?}");
    assert!(
        list.stderr.contains("etcd cluster unavailable"),
        "{}",
        list.stderr
    );
    assert_eq!(start.code, Some(1), "{start:#?}");
    assert!(start.stderr.contains("etcd"), "{}", start.stderr);
    assert_eq!(
        still_active, "active",
        "a running unit was stopped while etcd was down"
    );

    c.fleetctl(&["destroy", name]).expect_ok("destroy");
}

/// etcd down for everyone, longer than the machines' lease TTL: every machine confirms with
/// the others that none reaches etcd, so none fences; no unit stops, restarts or moves, during
/// the outage or after etcd returns. fleetctl says etcd is unavailable meanwhile and works
/// again by itself.
#[test]
fn etcd_down_for_everyone_past_the_ttl_stops_restarts_and_moves_nothing() {
    let c = cluster();
    let pinned = c.start_one_per_node("outage");
    let free = c.start_free("outage-free", 3);
    let mut names: Vec<String> = pinned.iter().map(|u| u.name.clone()).collect();
    names.extend(free.iter().map(|u| u.name.clone()));

    // fleet's words when the heartbeat fails, which operators grep for: once per machine
    // and per outage.
    let monitor = "Server monitor triggered: Monitor timed out before successful heartbeat";
    let triggered = |c: &fleet_e2e::Cluster| -> Vec<usize> {
        (1..=NODES)
            .map(|n| c.fleetd_log_count(n, monitor))
            .collect()
    };
    let before = triggered(c);
    c.tool(&["etcd-stop"]).expect_ok("etcd-stop");
    let outage = AGENT_TTL * 2 + Duration::from_secs(5);
    let since = Instant::now();
    let mut stopped = Vec::new();
    while since.elapsed() < outage {
        for (name, on) in names.iter().zip(c.running(&names)) {
            if on.len() != 1 {
                stopped.push(format!("{name} on {on:?} after {:?}", since.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let during = c.fleetctl(&["--request-timeout", "5", "list-units"]);
    c.tool(&["etcd-start"]).expect_ok("etcd-start");
    let answers = eventually(Duration::from_secs(15), || {
        c.fleetctl(&["list-units", "--no-legend"])
            .ok()
            .then_some(())
    });
    // Long enough for a machine that had lost its lease to show it.
    std::thread::sleep(AGENT_TTL);
    let after = triggered(c);

    assert!(
        stopped.is_empty(),
        "units stopped during the outage: {stopped:?}"
    );
    assert_eq!(during.code, Some(1), "{during:#?}");
    assert!(during.stderr.contains("etcd"), "{}", during.stderr);
    assert!(
        answers.is_some(),
        "fleetctl did not work again after etcd returned"
    );
    c.assert_unchanged(&pinned, "after the outage");
    c.assert_unchanged(&free, "after the outage");
    let once: Vec<usize> = before.iter().map(|b| b + 1).collect();
    assert_eq!(after, once, "\"{monitor}\" logged per node");
    c.destroy_all(&pinned);
    c.destroy_all(&free);
}
