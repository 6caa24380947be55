//! etcd with three members loses one (its leader or a follower, killed or restarted): no unit
//! restarts, nothing moves, and every fleetd's API answers again within an election's time.
//! Restarts are told by systemd's `InvocationID`.

use std::time::{Duration, Instant};

use fleet_e2e::{cluster, eventually, Cluster, ETCD_MEMBERS, NODES};

/// The etcd member that leads, waiting for an election if there is none.
fn leader(c: &Cluster) -> u32 {
    eventually(Duration::from_secs(15), || {
        let out = c.tool(&["etcd-leader"]);
        out.stdout.trim().parse().ok().filter(|_| out.ok())
    })
    .expect("no etcd member leads")
}

/// Every node's API lists the units, from the host: what the first that did not answer said.
fn all_answer(c: &Cluster) -> Result<(), String> {
    for n in 1..=NODES {
        let out = c.fleetctl_via(n, &["--request-timeout", "2", "list-units", "--no-legend"]);
        if !out.ok() {
            return Err(format!("node{n}: {}", out.stderr.trim()));
        }
    }
    Ok(())
}

/// After a member went away: every API answers again within 15 s (an election takes about
/// one; fleetd moves to another member after one failed request), and then keeps answering
/// (a client that still sent some requests to the lost member would fail some of these);
/// returns how long it took.
fn answering_again(c: &Cluster, what: &str) -> Duration {
    let since = Instant::now();
    let back = eventually(Duration::from_secs(15), || all_answer(c).ok());
    assert!(
        back.is_some(),
        "{what}: the API did not answer again within 15 s"
    );
    let took = since.elapsed();
    for round in 0..10 {
        if let Err(e) = all_answer(c) {
            panic!("{what}: a request failed again (round {round}): {e}");
        }
    }
    took
}

#[test]
fn losing_an_etcd_member_restarts_and_moves_nothing() {
    let c = cluster();
    const _: () = assert!(
        ETCD_MEMBERS >= 3,
        "this story needs an etcd of three members"
    );
    let units = c.start_one_per_node("quorum");

    // The leader dies.
    let l = leader(c);
    c.tool(&["etcd-kill", &l.to_string()])
        .expect_ok("kill the etcd leader");
    let took = answering_again(c, "leader killed");
    // A few seconds more: a machine that had fenced would show by now.
    std::thread::sleep(Duration::from_secs(3));
    c.assert_unchanged(&units, "leader killed");
    c.tool(&["etcd-start", &l.to_string()])
        .expect_ok("start the member again");
    eprintln!("leader killed: every API answered again after {took:?}");

    // A follower dies.
    let l = leader(c);
    let follower = (1..=ETCD_MEMBERS).find(|m| *m != l).expect("a follower");
    c.tool(&["etcd-kill", &follower.to_string()])
        .expect_ok("kill an etcd follower");
    let took = answering_again(c, "follower killed");
    c.assert_unchanged(&units, "follower killed");
    c.tool(&["etcd-start", &follower.to_string()])
        .expect_ok("start the member again");
    eprintln!("follower killed: every API answered again after {took:?}");

    // Each member restarted in turn, as an upgrade of etcd does it.
    for m in 1..=ETCD_MEMBERS {
        c.tool(&["etcd-stop", &m.to_string()])
            .expect_ok("stop a member");
        c.tool(&["etcd-start", &m.to_string()])
            .expect_ok("start it again");
        let took = answering_again(c, &format!("member {m} restarted"));
        eprintln!("member {m} restarted: every API answered again after {took:?}");
    }
    c.assert_unchanged(&units, "each member restarted in turn");

    c.destroy_all(&units);
}
