//! A machine dies: its unit is started on another machine within agent_ttl and a few seconds,
//! and the machine, booted again, starts no stale copy. A machine cut off fences itself.

use std::time::Duration;

use fleet_e2e::{cluster, eventually, node_in, ticker_unit, unique, AGENT_TTL, NODES};

#[test]
fn unit_moves_when_its_machine_is_killed_and_stays_when_it_returns() {
    let c = cluster();
    let name = unique("failover");
    let name = name.as_str();
    let path = c.unit_file(name, &ticker_unit("failover"));
    let out = c
        .fleetctl(&["start", &path.to_string_lossy()])
        .expect_ok("start");
    let first = node_in(&out.stdout).expect("machine in output");
    assert_eq!(c.is_active(first, name), "active");
    // The machine's declarations so far (earlier tests lost it too), oldest first.
    let dead_id = c.machine_id(first);
    let survivor = (1..=NODES).find(|n| *n != first).expect("another node");
    let declarations = || -> Option<Vec<String>> {
        let events = c.fleetctl_via(
            survivor,
            &["events", "--no-legend", "--full", "--machine", &dead_id],
        );
        events.ok().then(|| {
            events
                .stdout
                .lines()
                .filter(|l| l.contains("declared-dead"))
                .map(str::to_string)
                .collect()
        })
    };
    let earlier = declarations()
        .expect("fleetctl events before the kill")
        .len();

    c.tool(&["kill", &format!("node{first}")])
        .expect_ok("kill node");

    let moved = eventually(AGENT_TTL + Duration::from_secs(10), || {
        let units = c.fleetctl_via(survivor, &["list-units", "--no-legend"]);
        let row = units
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))?
            .to_string();
        let node = node_in(&row).filter(|n| *n != first)?;
        (c.is_active(node, name) == "active").then_some(node)
    });
    let result = moved.map(|n| {
        (
            n,
            c.fleetctl_via(survivor, &["list-machines", "--no-legend"]),
        )
    });
    // Nobody asked anybody whether it was cut off (the machine died): the engine waited only
    // the stop allowance after the members renewed, and its event (the newest) says so.
    let declared = eventually(Duration::from_secs(10), || {
        let all = declarations()?;
        (all.len() > earlier).then(|| all.last().cloned()).flatten()
    });

    // The dead machine boots again (and the cluster is whole for whoever runs next): it
    // comes back empty, and the unit keeps running once, where it moved.
    c.up();
    let mut copies = Vec::new();
    for _ in 0..30 {
        let running: Vec<u32> = (1..=NODES)
            .filter(|n| c.is_active(*n, name) == "active")
            .collect();
        copies.push(running);
        std::thread::sleep(Duration::from_millis(100));
    }
    let stale_file = c
        .exec(first, &["test", "-e", &format!("/run/fleet/units/{name}")])
        .code;
    c.fleetctl_via(survivor, &["destroy", name]);

    let (node, machines) =
        result.unwrap_or_else(|| panic!("{name} did not move to a live machine in time"));
    let declared = declared.unwrap_or_else(|| panic!("no declared-dead event for {dead_id}"));
    assert!(
        declared.contains("none of them lately asked") && declared.contains("(waited 1.1 s"),
        "the engine did not take the quiet wait: {declared}"
    );
    assert_ne!(node, first);
    assert!(
        !machines.stdout.contains(&format!("f1ee70{first:02}")),
        "dead machine still listed: {}",
        machines.stdout
    );
    assert!(
        copies.iter().all(|running| running == &vec![node]),
        "after node{first} came back, {name} ran on {copies:?} (sampled every 100 ms)"
    );
    assert_eq!(
        stale_file,
        Some(1),
        "node{first} came back with the unit's file"
    );
}

/// A machine cut off from etcd stops its units before they are started elsewhere
/// (self-fencing), so a unit never runs on two machines at once.
#[test]
fn a_partitioned_machine_fences_itself_before_its_unit_moves() {
    let c = cluster();
    let name = unique("fenced");
    let path = c.unit_file(&name, &ticker_unit("fenced"));
    let out = c
        .fleetctl(&["start", &path.to_string_lossy()])
        .expect_ok("start");
    let cut = node_in(&out.stdout).expect("machine in output");
    let survivor = (1..=NODES).find(|n| *n != cut).expect("another node");

    c.tool(&["cut", &format!("node{cut}")])
        .expect_ok("cut node");
    let mut overlap = false;
    let mut fenced = false;
    let moved = eventually(AGENT_TTL + Duration::from_secs(15), || {
        let on_cut = c.is_active(cut, &name) == "active";
        fenced |= !on_cut;
        let elsewhere = (1..=NODES)
            .filter(|n| *n != cut)
            .find(|n| c.is_active(*n, &name) == "active");
        overlap |= on_cut && elsewhere.is_some();
        elsewhere
    });
    c.tool(&["heal", &format!("node{cut}")])
        .expect_ok("heal node");
    let back = eventually(AGENT_TTL, || {
        let machines = c.fleetctl_via(survivor, &["list-machines", "--no-legend"]);
        machines
            .stdout
            .contains(&format!("f1ee70{cut:02}..."))
            .then_some(())
    });
    c.up();
    c.fleetctl_via(survivor, &["destroy", &name]);

    assert!(
        back.is_some(),
        "node{cut} did not register again after the partition healed"
    );
    assert!(fenced, "the cut-off machine kept running {name}");
    assert!(moved.is_some(), "{name} was not started elsewhere");
    assert!(!overlap, "{name} ran on two machines at once");
}
