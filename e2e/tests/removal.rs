//! A cluster that lost a majority of its machines for good: nothing moves (one machine of
//! three is no majority) until the operator removes the lost machines by hand
//! (`fleetctl remove-machine`), each releasing its own units; then every unit runs on the
//! machine left, once. A live machine is not removed. The lost machines, booted again, come
//! back as new members and start none of their old units.

use std::time::Duration;

use fleet_e2e::{cluster, eventually, AGENT_TTL, NODES};

#[test]
fn units_of_a_lost_majority_move_once_the_lost_machines_are_removed_by_hand() {
    let c = cluster();
    // node1 (which serves fleetctl) is left; nodes 2 and 3 are lost.
    let units = c.start_free("removal", 9);
    let all: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
    let destroy = || {
        let mut args = vec!["destroy"];
        args.extend(all.iter().map(String::as_str));
        c.fleetctl(&args)
    };
    let on = |n: u32| -> Vec<String> {
        units
            .iter()
            .filter(|u| u.node == n)
            .map(|u| u.name.clone())
            .collect()
    };
    let (two, three) = (on(2), on(3));
    if two.is_empty() || three.is_empty() {
        destroy();
        panic!("the 9 units did not go to every node: {units:?}");
    }
    let active_on_one = |names: &[String]| names.iter().all(|n| c.is_active(1, n) == "active");
    // Removals of node2 recorded so far (the cluster's etcd outlives a run).
    let removals = || {
        c.fleetctl(&[
            "events",
            "--no-legend",
            "--full",
            "--machine",
            &c.machine_id(2),
        ])
        .stdout
        .lines()
        .filter(|l| l.contains("declared-dead") && l.contains("removed by hand"))
        .count()
    };
    let earlier = removals();

    let refused_live = c.fleetctl(&["remove-machine", &c.machine_id(1)]);
    let refused_prefix = c.fleetctl(&["remove-machine", "f1ee7002"]);
    for n in [2, 3] {
        c.tool(&["kill", &format!("node{n}")])
            .expect_ok("kill node");
    }
    let gone = eventually(AGENT_TTL + Duration::from_secs(10), || {
        let machines = c.fleetctl(&["list-machines", "--no-legend"]);
        (machines.ok() && machines.stdout.lines().count() == 1).then_some(())
    });
    // Held: a few seconds more, beyond the engine's longest wait, and none has moved.
    std::thread::sleep(Duration::from_secs(5));
    let held = two
        .iter()
        .chain(&three)
        .all(|n| c.is_active(1, n) != "active");

    let removed_two = c.fleetctl(&["remove-machine", &c.machine_id(2)]);
    let two_moved = eventually(Duration::from_secs(20), || {
        active_on_one(&two).then_some(())
    });
    let three_held = three.iter().all(|n| c.is_active(1, n) != "active");
    let removed_three = c.fleetctl(&["remove-machine", &c.machine_id(3)]);
    let all_moved = eventually(Duration::from_secs(20), || {
        active_on_one(&all).then_some(())
    });
    let removed_again = c.fleetctl(&["remove-machine", &c.machine_id(3)]);
    let recorded = removals() - earlier;

    // The lost machines boot again (and the cluster is whole for whoever runs next): new
    // members, running none of their old units; sampled 10 times over about 3 s, to see a
    // late stale start.
    c.up();
    let mut copies: Vec<(String, Vec<u32>)> = Vec::new();
    for _ in 0..10 {
        copies.extend(all.iter().map(|n| {
            let running = (1..=NODES)
                .filter(|m| c.is_active(*m, n) == "active")
                .collect();
            (n.clone(), running)
        }));
        std::thread::sleep(Duration::from_millis(300));
    }
    destroy();

    assert!(
        !refused_live.ok(),
        "a live machine was removed: {refused_live:?}"
    );
    assert!(
        refused_live.stderr.contains("holds its lease"),
        "{refused_live:?}"
    );
    assert!(
        !refused_prefix.ok() && refused_prefix.stderr.contains("full id"),
        "{refused_prefix:?}"
    );
    assert!(gone.is_some(), "nodes 2 and 3 still listed");
    assert!(held, "units moved with no majority and nothing removed");
    let removed_two = removed_two.expect_ok("remove-machine node2");
    assert!(
        removed_two
            .stdout
            .contains(&format!("{} units released", two.len())),
        "{removed_two:?}"
    );
    assert!(
        two_moved.is_some(),
        "node2's units not active on node1: {two:?}"
    );
    assert!(three_held, "node3's units moved before it was removed");
    removed_three.expect_ok("remove-machine node3");
    assert!(
        all_moved.is_some(),
        "not every unit active on node1: {all:?}"
    );
    assert!(!removed_again.ok(), "removed twice: {removed_again:?}");
    assert_eq!(recorded, 1, "events of node2's removal");
    for (name, running) in copies {
        assert_eq!(
            running,
            vec![1],
            "{name} runs on {running:?} after the nodes came back"
        );
    }
}
