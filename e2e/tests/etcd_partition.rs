//! Some machines lose etcd but still reach each other (etcd's addresses blackholed inside
//! them, `fleet-cluster cut-etcd`). A majority that loses etcd keeps its units: they confirm
//! to each other that none of them reaches etcd, and the engine, left with a minority, moves
//! nothing. A minority that loses etcd fences itself before its units start elsewhere, and
//! once back (etcd having compacted its history meanwhile) runs what is placed on it. Never
//! two copies: every node's systemd is sampled throughout, by `fleet_e2e::sampler` (about every
//! 80 ms) besides the checks here.

use std::time::{Duration, Instant};

use fleet_e2e::sampler::{Sampler, Samples};
use fleet_e2e::{cluster, eventually, Cluster, AGENT_TTL, NODES};

/// Panics unless the sampler saw every node often enough and no unit on two at once.
fn assert_never_twice(samples: &Samples) {
    let period = samples.median_period();
    assert!(
        period <= Duration::from_millis(150),
        "nodes sampled every {period:?}"
    );
    let doubles = samples.doubles(Duration::from_millis(500));
    assert!(doubles.is_empty(), "ran twice: {doubles:#?}");
}

/// Samples every node until `until` says stop or `deadline` passes; returns the samples in
/// which a unit ran on two nodes at once, and the last sample.
fn sample(
    c: &Cluster,
    names: &[String],
    deadline: Duration,
    mut until: impl FnMut(&[Vec<u32>]) -> bool,
) -> (Vec<String>, Vec<Vec<u32>>, bool) {
    let since = Instant::now();
    let mut doubles = Vec::new();
    loop {
        let on = c.running(names);
        for (name, nodes) in names.iter().zip(&on) {
            if nodes.len() > 1 {
                doubles.push(format!("{name} on {nodes:?} after {:?}", since.elapsed()));
            }
        }
        if until(&on) {
            return (doubles, on, true);
        }
        if since.elapsed() > deadline {
            return (doubles, on, false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_majority_cut_off_from_etcd_keeps_its_units_and_nothing_moves() {
    let c = cluster();
    let sampler = Sampler::start(c, &format!("majority*-{}-*", std::process::id()));
    let pinned = c.start_one_per_node("majority");
    let free = c.start_free("majority-free", 3);
    let mut names: Vec<String> = pinned.iter().map(|u| u.name.clone()).collect();
    names.extend(free.iter().map(|u| u.name.clone()));

    for n in [1, 2] {
        c.tool(&["cut-etcd", &format!("node{n}")])
            .expect_ok("cut node from etcd");
    }
    let mut stopped = Vec::new();
    let (doubles, _, _) = sample(c, &names, AGENT_TTL * 3, |on| {
        for (name, nodes) in names.iter().zip(on) {
            if nodes.is_empty() {
                stopped.push(name.clone());
            }
        }
        false
    });
    for n in [1, 2] {
        c.tool(&["heal-etcd", &format!("node{n}")])
            .expect_ok("heal node");
    }
    let back = eventually(AGENT_TTL + Duration::from_secs(10), || {
        let out = c.fleetctl_via(3, &["list-machines", "--no-legend"]);
        (out.stdout.lines().count() == NODES as usize).then_some(())
    });
    // Long enough for anything moved or restarted to show.
    std::thread::sleep(AGENT_TTL / 2);
    let samples = sampler.finish();

    assert_never_twice(&samples);
    assert!(doubles.is_empty(), "units ran twice: {doubles:?}");
    stopped.dedup();
    assert!(stopped.is_empty(), "units stopped: {stopped:?}");
    assert!(back.is_some(), "the machines did not register again");
    c.assert_unchanged(&pinned, "after the majority reached etcd again");
    c.assert_unchanged(&free, "after the majority reached etcd again");
    c.destroy_all(&pinned);
    c.destroy_all(&free);
}

#[test]
fn a_machine_cut_off_from_etcd_alone_fences_before_its_units_move() {
    let c = cluster();
    let sampler = Sampler::start(c, &format!("minority-{}-*", std::process::id()));
    let free = c.start_free("minority", 3);
    let cut = free[0].node;
    let names: Vec<String> = free.iter().map(|u| u.name.clone()).collect();
    let moving: Vec<usize> = (0..free.len()).filter(|i| free[*i].node == cut).collect();
    let survivor = (1..=NODES).find(|n| *n != cut).expect("another node");

    c.tool(&["cut-etcd", &format!("node{cut}")])
        .expect_ok("cut node from etcd");
    let (doubles, last, moved) = sample(c, &names, AGENT_TTL + Duration::from_secs(15), |on| {
        moving.iter().all(|i| on[*i].len() == 1 && on[*i][0] != cut)
    });
    // Meanwhile etcd compacts its history (as its auto-compaction does, here up to now): no
    // revision the cut machine knew can be read or watched from any more.
    c.compact_etcd();
    c.tool(&["heal-etcd", &format!("node{cut}")])
        .expect_ok("heal node");
    let back = eventually(AGENT_TTL + Duration::from_secs(10), || {
        let out = c.fleetctl_via(survivor, &["list-machines", "--no-legend"]);
        (out.stdout.lines().count() == NODES as usize).then_some(())
    });
    // Back, it runs what is placed on it after that (fleetctl start waits for it to run).
    let after = back.map(|()| c.start_one_per_node("minority-after"));
    // After healing, the returned machine starts no stale copy.
    let (doubles_after, _, _) = sample(c, &names, AGENT_TTL / 2, |_| false);
    let once = c.running(&names);
    let samples = sampler.finish();

    assert_never_twice(&samples);
    assert!(moved, "the cut-off machine's units did not move: {last:?}");
    assert!(doubles.is_empty(), "units ran twice: {doubles:?}");
    assert!(back.is_some(), "node{cut} did not register again");
    assert!(
        doubles_after.is_empty(),
        "units ran twice after healing: {doubles_after:?}"
    );
    for (name, on) in names.iter().zip(&once) {
        assert_eq!(on.len(), 1, "{name} runs on {on:?}");
    }
    for name in &names {
        c.fleetctl_via(survivor, &["destroy", name])
            .expect_ok("destroy");
    }
    if let Some(after) = after {
        c.destroy_all(&after);
    }
}
