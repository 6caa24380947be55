//! `[X-Fleet]` rules on a real cluster, one scenario per rule, as fleet's functional suite had.
//!
//! The nodes' metadata (see `fleet_e2e::METADATA`): node1 `role=web,az=a`, node2
//! `role=web,az=b`, node3 `role=db,az=b`, each also `hostname=nodeN`.

use std::time::Duration;

use fleet_e2e::{cluster, eventually, tag, unique, Cluster, NODES};

fn unit(c: &Cluster, name: &str, x_fleet: &str) -> String {
    let text = format!(
        "[Unit]\nDescription={name}\n\n[Service]\nExecStart=/bin/bash -c 'while true; do sleep 1; done'\n\n[X-Fleet]\n{x_fleet}\n"
    );
    c.unit_file(name, &text).to_string_lossy().into_owned()
}

fn destroy<S: AsRef<str>>(c: &Cluster, names: &[S]) {
    let mut args = vec!["destroy"];
    args.extend(names.iter().map(AsRef::as_ref));
    c.fleetctl(&args).expect_ok("destroy");
}

#[test]
fn machine_of_keeps_a_pair_together() {
    let c = cluster();
    let (leader, follower) = (unique("pair-leader"), unique("pair-follower"));
    let leader_path = unit(c, &leader, "");
    let follower_path = unit(c, &follower, &format!("MachineOf={leader}"));
    c.fleetctl(&["start", &follower_path, &leader_path])
        .expect_ok("start");
    let a = c.active_on(&leader).expect("leader active");
    let b = c.active_on(&follower).expect("follower active");
    destroy(c, &[&leader, &follower]);
    assert_eq!(a, b, "MachineOf units on different machines");
}

#[test]
fn five_mutually_conflicting_units_on_three_machines() {
    let c = cluster();
    let run = tag();
    let names: Vec<String> = (1..=5)
        .map(|i| format!("exclusive{i}-{run}.service"))
        .collect();
    let paths: Vec<String> = names
        .iter()
        .map(|n| unit(c, n, &format!("Conflicts=exclusive*-{run}.service")))
        .collect();
    let mut args = vec!["start", "--no-block"];
    args.extend(paths.iter().map(String::as_str));
    c.fleetctl(&args).expect_ok("start");
    let settled = eventually(Duration::from_secs(15), || {
        let placed: Vec<(String, Vec<u32>)> = names
            .iter()
            .map(|n| (n.clone(), c.nodes_of(n)))
            .filter(|(_, nodes)| !nodes.is_empty())
            .collect();
        (placed.len() == NODES as usize).then_some(placed)
    });
    let files = c.fleetctl(&["list-unit-files", "--no-legend", "--fields", "unit,reason"]);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    destroy(c, &refs);

    let placed = settled.expect("three of the five units placed");
    let mut nodes: Vec<u32> = placed.iter().flat_map(|(_, n)| n.clone()).collect();
    nodes.sort();
    assert_eq!(nodes, vec![1, 2, 3], "{placed:?}");
    let unplaced: Vec<&str> = files
        .stdout
        .lines()
        .filter(|l| l.starts_with("exclusive") && l.contains("conflicts with"))
        .collect();
    assert_eq!(
        unplaced.len(),
        2,
        "two units say why they wait: {}",
        files.stdout
    );
}

#[test]
fn a_one_way_conflict_keeps_units_apart() {
    let c = cluster();
    for _ in 0..2 {
        let (quiet, picky) = (unique("oneway-quiet"), unique("oneway-picky"));
        let quiet_path = unit(c, &quiet, "");
        let picky_path = unit(c, &picky, &format!("Conflicts={quiet}"));
        c.fleetctl(&["start", &quiet_path, &picky_path])
            .expect_ok("start");
        let a = c.active_on(&quiet).expect("quiet active");
        let b = c.active_on(&picky).expect("picky active");
        destroy(c, &[&quiet, &picky]);
        assert_ne!(a, b);
    }
}

#[test]
fn metadata_values_of_one_key_are_ored_and_keys_anded() {
    let c = cluster();
    let (and, or) = (unique("meta-and"), unique("meta-or"));
    // role=web (node1, node2) AND az=b (node2, node3): node2 only.
    let and_path = unit(c, &and, "MachineMetadata=role=web\nMachineMetadata=az=b");
    // role=db OR role=web, AND az=a: node1 only.
    let or_path = unit(c, &or, "MachineMetadata=\"role=db\" \"role=web\" \"az=a\"");
    c.fleetctl(&["start", &and_path, &or_path])
        .expect_ok("start");
    let and_node = c.active_on(&and);
    let or_node = c.active_on(&or);
    destroy(c, &[&and, &or]);
    assert_eq!(and_node, Some(2));
    assert_eq!(or_node, Some(1));
}

#[test]
fn a_global_unit_runs_where_its_metadata_matches() {
    let c = cluster();
    let name = unique("everywhere-web");
    let path = unit(c, &name, "Global=true\nMachineMetadata=role=web");
    let out = c.fleetctl(&["start", &path]).expect_ok("start");
    assert_eq!(out.stdout, format!("Triggered global unit {name} start\n"));
    let nodes = eventually(Duration::from_secs(15), || {
        let nodes = c.nodes_of(&name);
        let active = nodes.iter().all(|n| c.is_active(*n, &name) == "active");
        (nodes == vec![1, 2] && active).then_some(nodes)
    });
    // Never loaded on node3: systemd there does not know the unit at all.
    let on_db = c.is_active(3, &name);
    destroy(c, &[&name]);
    assert_eq!(nodes, Some(vec![1, 2]));
    assert_ne!(on_db, "active");
}

#[test]
fn machine_id_full_and_short() {
    let c = cluster();
    let (full, short) = (unique("pinned-full"), unique("pinned-short"));
    let full_path = unit(c, &full, &format!("MachineID={}", c.machine_id(3)));
    let short_path = unit(c, &short, &format!("MachineID={}", &c.machine_id(2)[..8]));
    c.fleetctl(&["start", &full_path, &short_path])
        .expect_ok("start");
    let on_full = c.active_on(&full);
    let on_short = c.active_on(&short);
    destroy(c, &[&full, &short]);
    assert_eq!(on_full, Some(3));
    assert_eq!(on_short, Some(2));
}

#[test]
fn replaces_moves_the_replaced_unit_away() {
    let c = cluster();
    let (replaced, replacer) = (unique("replaced"), unique("replacer"));
    let old = unit(c, &replaced, "MachineMetadata=az=b");
    c.fleetctl(&["start", &old]).expect_ok("start replaced");
    let first = c.active_on(&replaced).expect("replaced active");
    let new = unit(
        c,
        &replacer,
        &format!("Replaces={replaced}\nMachineMetadata=hostname=node{first}"),
    );
    c.fleetctl(&["start", &new]).expect_ok("start replacer");
    let on = c.active_on(&replacer);
    let moved = eventually(Duration::from_secs(15), || {
        let n = c.active_on(&replaced)?;
        (n != first).then_some(n)
    });
    destroy(c, &[&replaced, &replacer]);
    assert_eq!(on, Some(first));
    let moved = moved.expect("the replaced unit moved");
    assert!(
        moved == 2 || moved == 3,
        "replaced.service must stay in az=b: node{moved}"
    );
}

#[test]
fn units_replacing_each_other_both_run_as_in_fleet() {
    // fleet skipped a pair of units that replace each other (a circular replacement) when
    // checking a machine's units, so neither pushes the other: both run, even together.
    let c = cluster();
    let (a, b) = (unique("circular-a"), unique("circular-b"));
    let a_path = unit(
        c,
        &a,
        &format!("Replaces={b}\nMachineMetadata=hostname=node2"),
    );
    let b_path = unit(
        c,
        &b,
        &format!("Replaces={a}\nMachineMetadata=hostname=node2"),
    );
    c.fleetctl(&["start", &a_path]).expect_ok("start a");
    c.fleetctl(&["start", &b_path]).expect_ok("start b");
    let a_on = c.active_on(&a);
    let b_on = c.active_on(&b);
    let invocations = (c.invocation_id(2, &a), c.invocation_id(2, &b));
    // Long enough for a push, and for a push back, to show.
    std::thread::sleep(Duration::from_secs(5));
    let still = (c.invocation_id(2, &a), c.invocation_id(2, &b));
    let nodes = (c.nodes_of(&a), c.nodes_of(&b));
    destroy(c, &[&a, &b]);
    assert_eq!((a_on, b_on), (Some(2), Some(2)));
    assert_eq!(still, invocations, "a unit was restarted");
    assert_eq!(nodes, (vec![2], vec![2]), "a unit moved");
}

#[test]
fn a_template_instance_uses_its_instance_as_metadata() {
    let c = cluster();
    let stem = format!("pinned{}", tag().replace('-', "x"));
    let (template_name, instance_name) =
        (format!("{stem}@.service"), format!("{stem}@node3.service"));
    let template = unit(c, &template_name, "MachineMetadata=hostname=%i");
    let instance = std::path::Path::new(&template)
        .with_file_name(&instance_name)
        .to_string_lossy()
        .into_owned();
    let submitted = c
        .fleetctl(&["submit", &template])
        .expect_ok("submit template");
    assert_eq!(submitted.stdout, "");
    c.fleetctl(&["start", &instance])
        .expect_ok("start instance");
    let node = c.active_on(&instance_name);
    let template_start = c.fleetctl(&["start", &template_name]);
    destroy(c, &[&instance_name, &template_name]);
    assert_eq!(node, Some(3));
    assert_eq!(
        template_start.code,
        Some(1),
        "a template cannot be started: {template_start:#?}"
    );
}

#[test]
fn a_metadata_change_through_the_api_moves_a_unit() {
    let c = cluster();
    let name = unique("follows-role");
    let path = unit(c, &name, "MachineMetadata=role=web");
    c.fleetctl(&["start", &path]).expect_ok("start");
    let first = c.active_on(&name).expect("active");
    let client = c.api_client(1);
    let id = c.machine_id(first);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(client.set_machine_metadata(&id, "role", Some("cache")))
        .expect("PATCH /machines");
    let moved = eventually(Duration::from_secs(15), || {
        let n = c.active_on(&name)?;
        (n != first).then_some(n)
    });
    // The old machine stops its copy on its own time, not in step with the new one starting.
    let stopped_there = eventually(Duration::from_secs(10), || {
        (c.is_active(first, &name) != "active").then_some(())
    });
    runtime
        .block_on(client.set_machine_metadata(&id, "role", Some("web")))
        .expect("restore metadata");
    destroy(c, &[&name]);
    let moved = moved.expect("the unit moved off the machine that lost role=web");
    assert!(
        moved == 1 || moved == 2,
        "role=web is node1 and node2, got node{moved}"
    );
    assert!(
        stopped_there.is_some(),
        "node{first} still runs the unit after losing role=web"
    );
}

#[test]
fn an_unplaceable_unit_says_why() {
    let c = cluster();
    let name = unique("nowhere");
    let path = unit(c, &name, "MachineMetadata=role=mainframe");
    let out = c.fleetctl(&["start", "--block-attempts", "4", &path]);
    let files = c
        .fleetctl(&["list-unit-files", "--no-legend", "--fields", "unit,reason"])
        .expect_ok("list-unit-files");
    destroy(c, &[&name]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    for n in 1..=NODES {
        assert!(
            out.stderr
                .contains(&format!("f1ee70{n:02}: metadata role=mainframe")),
            "node{n} reason missing: {}",
            out.stderr
        );
    }
    let row = files
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name}\t")))
        .expect("row");
    assert!(row.contains("metadata role=mainframe"), "{row}");
}
