//! A machine dies: its unit is started on another machine within agent_ttl and a few seconds.

use std::time::Duration;

use fleet_e2e::{cluster, eventually, node_in, ticker_unit, AGENT_TTL, NODES};

#[test]
fn unit_moves_when_its_machine_is_killed() {
    let c = cluster();
    let path = c.unit_file("failover.service", &ticker_unit("failover"));
    let out = c
        .fleetctl(&["start", &path.to_string_lossy()])
        .expect_ok("start");
    let first = node_in(&out.stdout).expect("machine in output");
    assert_eq!(c.is_active(first, "failover.service"), "active");

    c.tool(&["kill", &format!("node{first}")])
        .expect_ok("kill node");
    let survivor = (1..=NODES).find(|n| *n != first).expect("another node");

    let moved = eventually(AGENT_TTL + Duration::from_secs(10), || {
        let units = c.fleetctl_via(survivor, &["list-units", "--no-legend"]);
        let row = units
            .stdout
            .lines()
            .find(|l| l.starts_with("failover.service\t"))?
            .to_string();
        let node = node_in(&row).filter(|n| *n != first)?;
        (c.is_active(node, "failover.service") == "active").then_some(node)
    });
    let result = moved.map(|n| {
        (
            n,
            c.fleetctl_via(survivor, &["list-machines", "--no-legend"]),
        )
    });

    // Put the cluster back for whoever runs next, whatever happened.
    c.up();
    c.fleetctl_via(survivor, &["destroy", "failover.service"]);

    let (node, machines) = result.expect("failover.service did not move to a live machine in time");
    assert_ne!(node, first);
    assert!(
        !machines.stdout.contains(&format!("f1ee70{first:02}")),
        "dead machine still listed: {}",
        machines.stdout
    );
}
