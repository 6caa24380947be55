//! etcd is down: fleetctl says so promptly instead of hanging, and running units keep running.

use fleet_e2e::{cluster, node_in, ticker_unit, unique};

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
