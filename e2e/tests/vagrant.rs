//! What the Vagrant machines run, run here: a bare node set up by `vagrant/provision.sh`
//! (as `vagrant up` sets up a member machine) joins the cluster and runs units.

use std::time::Duration;

use fleet_e2e::{cluster, eventually, node_in, ticker_unit, unique, AGENT_TTL, NODES};

#[test]
fn a_machine_set_up_by_the_vagrant_provisioner_joins_and_runs_units() {
    let c = cluster();
    let extra = NODES + 1;
    let node = format!("node{extra}");
    let provisioned = c.tool(&["vagrant-node", &node]);
    let joined = eventually(AGENT_TTL, || {
        let machines = c.fleetctl(&["list-machines", "--no-legend"]).stdout;
        machines
            .contains(&format!(
                "f1ee70{extra:02}...\t10.233.0.{}\thostname={node}",
                10 + extra
            ))
            .then_some(machines)
    });
    let name = unique("on-vagrant");
    let unit = format!(
        "{}\n[X-Fleet]\nMachineMetadata=hostname={node}\n",
        ticker_unit("on the provisioned machine")
    );
    let path = c.unit_file(&name, &unit);
    let started = c.fleetctl(&["start", &path.to_string_lossy()]);
    let active = c.is_active(extra, &name);
    c.fleetctl(&["destroy", &name]);

    c.tool(&["kill", &node])
        .expect_ok("kill the provisioned node");
    let gone = eventually(AGENT_TTL + Duration::from_secs(10), || {
        let machines = c.fleetctl(&["list-machines", "--no-legend"]).stdout;
        (machines.lines().count() == NODES as usize).then_some(())
    });

    assert!(provisioned.ok(), "vagrant-node failed: {provisioned:#?}");
    assert!(joined.is_some(), "{node} did not join the cluster");
    assert!(started.ok(), "{started:#?}");
    assert_eq!(
        node_in(&started.stdout),
        None,
        "it ran on a test node: {}",
        started.stdout
    );
    assert!(
        started
            .stdout
            .contains(&format!("/10.233.0.{}", 10 + extra)),
        "{}",
        started.stdout
    );
    assert_eq!(active, "active");
    assert!(
        gone.is_some(),
        "{node} did not leave the cluster after it was killed"
    );
}
