//! Chaos on the local cluster: a random schedule of node kills, partitions (whole and from etcd
//! only), etcd member kills, etcd outages and fleetd restarts, one at a time, while units are
//! started and destroyed; every node's systemd is sampled throughout ([`Sampler`]). What it
//! reports must hold for fleet's guarantees: no unit ever ran on two machines, none was lost
//! (every unit that should run runs once again within `agent_ttl` and a few seconds after each
//! fault ends), and none restarted on a machine the fault did not touch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::sampler::{Sampler, Samples};
use crate::{node_in, tag, ticker_unit, Cluster, AGENT_TTL, ETCD_MEMBERS, NODES};

/// What a chaos run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    /// The faults injected, in order.
    pub faults: Vec<String>,
    pub samples: Samples,
    /// Moments a unit ran on two machines (must be none).
    pub doubles: Vec<String>,
    /// Units that did not run once again within the deadline after a fault (must be none).
    pub lost: Vec<String>,
    /// Units restarted or stopped on a machine the fault did not touch (must be none).
    pub restarts: Vec<String>,
    /// Units started and destroyed along the way.
    pub started: usize,
    pub destroyed: usize,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.doubles.is_empty() && self.lost.is_empty() && self.restarts.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillNode(u32),
    CutNode(u32),
    CutEtcd(u32),
    /// Every node but one cut off from etcd: a majority that still reaches each other.
    CutEtcdMajority(u32),
    KillEtcdMember(u32),
    EtcdOutage,
    RestartFleetd(u32),
}

impl Fault {
    fn describe(self) -> String {
        match self {
            Fault::KillNode(n) => format!("node{n} killed, then booted again"),
            Fault::CutNode(n) => format!("node{n} cut off from everything, then healed"),
            Fault::CutEtcd(n) => format!("node{n} cut off from etcd only, then healed"),
            Fault::CutEtcdMajority(n) => format!("every node but node{n} cut off from etcd"),
            Fault::KillEtcdMember(m) => format!("etcd member {m} killed, then started"),
            Fault::EtcdOutage => "etcd stopped for everyone, then started".to_string(),
            Fault::RestartFleetd(n) => format!("fleetd restarted on node{n}"),
        }
    }

    /// The node whose units may stop and move (others must keep theirs running).
    fn touched(self) -> Option<u32> {
        match self {
            Fault::KillNode(n) | Fault::CutNode(n) | Fault::CutEtcd(n) => Some(n),
            _ => None,
        }
    }

    /// How long the fault lasts: long enough for a lost machine's units to move.
    fn hold(self) -> Duration {
        match self {
            Fault::KillNode(_) | Fault::CutNode(_) | Fault::CutEtcd(_) => {
                AGENT_TTL + Duration::from_secs(5)
            }
            Fault::CutEtcdMajority(_) | Fault::EtcdOutage => AGENT_TTL + Duration::from_secs(3),
            Fault::KillEtcdMember(_) => Duration::from_secs(5),
            Fault::RestartFleetd(_) => Duration::ZERO,
        }
    }
}

/// A small deterministic generator (xorshift64*), so that a seed replays a schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs faults for about `duration` (the fault under way is finished), starting from a healthy
/// cluster with `units` units of its own; `seed` picks the schedule.
pub fn run(c: &Cluster, duration: Duration, units: usize, seed: u64) -> Report {
    let mut rng = Rng(seed.max(1));
    let stem = format!("chaos-{}", tag());
    let mut report = Report {
        seed,
        ..Report::default()
    };
    let sampler = Sampler::start(c, &format!("{stem}-*"));
    let mut live: Vec<String> = Vec::new();
    let mut next = 0usize;
    let mut start = |live: &mut Vec<String>, report: &mut Report| {
        let name = format!("{stem}-{next}.service");
        next += 1;
        let path = c.unit_file(&name, &ticker_unit("chaos"));
        if c.fleetctl(&["start", &path.to_string_lossy()]).ok() {
            live.push(name);
            report.started += 1;
        }
    };
    for _ in 0..units {
        start(&mut live, &mut report);
    }
    let began = Instant::now();
    while began.elapsed() < duration {
        // Churn between faults: one unit destroyed, one started.
        if live.len() > 1 {
            let i = rng.below(live.len() as u64) as usize;
            if c.fleetctl(&["destroy", &live[i]]).ok() {
                live.remove(i);
                report.destroyed += 1;
            }
        }
        start(&mut live, &mut report);
        let wrong = settled(c, &live, AGENT_TTL + Duration::from_secs(10));
        if !wrong.is_empty() {
            report.lost.push(format!("before a fault: {wrong:?}"));
        }
        let fault = pick(&mut rng);
        report.faults.push(fault.describe());
        let before = invocations(c, &live);
        inject(c, fault);
        std::thread::sleep(fault.hold());
        recover(c, fault);
        let lost = settled(c, &live, AGENT_TTL + Duration::from_secs(15));
        for unit in lost {
            report
                .lost
                .push(format!("{unit} after '{}'", fault.describe()));
        }
        let after = invocations(c, &live);
        for ((unit, node), invocation) in &before {
            if Some(*node) == fault.touched() {
                continue;
            }
            if after.get(&(unit.clone(), *node)) != Some(invocation) {
                report.restarts.push(format!(
                    "{unit} on node{node} during '{}'",
                    fault.describe()
                ));
            }
        }
    }
    for name in &live {
        let _ = c.fleetctl(&["destroy", name]);
    }
    report.samples = sampler.finish();
    // Two samples of a node are at most this far apart when it is sampled normally.
    report.doubles = report.samples.doubles(Duration::from_millis(500));
    report
}

fn pick(rng: &mut Rng) -> Fault {
    let node = 1 + rng.below(NODES as u64) as u32;
    match rng.below(7) {
        0 => Fault::KillNode(node),
        1 => Fault::CutNode(node),
        2 => Fault::CutEtcd(node),
        3 => Fault::CutEtcdMajority(node),
        4 => Fault::KillEtcdMember(1 + rng.below(ETCD_MEMBERS as u64) as u32),
        5 => Fault::EtcdOutage,
        _ => Fault::RestartFleetd(node),
    }
}

fn inject(c: &Cluster, fault: Fault) {
    let node = |n: u32| format!("node{n}");
    let run = match fault {
        Fault::KillNode(n) => c.tool(&["kill", &node(n)]),
        Fault::CutNode(n) => c.tool(&["cut", &node(n)]),
        Fault::CutEtcd(n) => c.tool(&["cut-etcd", &node(n)]),
        Fault::CutEtcdMajority(keep) => {
            for n in (1..=NODES).filter(|n| *n != keep) {
                c.tool(&["cut-etcd", &node(n)]);
            }
            return;
        }
        Fault::KillEtcdMember(m) => c.tool(&["etcd-kill", &m.to_string()]),
        Fault::EtcdOutage => c.tool(&["etcd-stop"]),
        Fault::RestartFleetd(n) => c.exec(n, &["systemctl", "restart", "fleet"]),
    };
    if !run.ok() {
        eprintln!(
            "chaos: injecting '{}' failed: {}",
            fault.describe(),
            run.stderr
        );
    }
}

fn recover(c: &Cluster, fault: Fault) {
    let node = |n: u32| format!("node{n}");
    match fault {
        Fault::KillNode(n) => {
            c.tool(&["start", &node(n)]);
        }
        Fault::CutNode(n) => {
            c.tool(&["heal", &node(n)]);
        }
        Fault::CutEtcd(n) => {
            c.tool(&["heal-etcd", &node(n)]);
        }
        Fault::CutEtcdMajority(keep) => {
            for n in (1..=NODES).filter(|n| *n != keep) {
                c.tool(&["heal-etcd", &node(n)]);
            }
        }
        Fault::KillEtcdMember(m) => {
            c.tool(&["etcd-start", &m.to_string()]);
        }
        Fault::EtcdOutage => {
            c.tool(&["etcd-start"]);
        }
        Fault::RestartFleetd(_) => {}
    }
}

/// Waits until every unit of `live` runs on exactly one node and fleet lists it there;
/// returns those that still do not when `deadline` passes.
fn settled(c: &Cluster, live: &[String], deadline: Duration) -> Vec<String> {
    let since = Instant::now();
    loop {
        let running = c.running(live);
        let listed = c.fleetctl(&["list-units", "--no-legend", "--full"]);
        let wrong: Vec<String> = live
            .iter()
            .zip(&running)
            .filter(|(name, on)| {
                let listed_on: Vec<u32> = listed
                    .stdout
                    .lines()
                    .filter(|l| l.starts_with(&format!("{name}\t")))
                    .filter_map(node_in)
                    .collect();
                !(on.len() == 1 && listed_on == **on)
            })
            .map(|(name, on)| format!("{name} running on {on:?}"))
            .collect();
        if wrong.is_empty() || since.elapsed() >= deadline {
            return wrong;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Each running unit's node and systemd `InvocationID` (new at every start).
fn invocations(c: &Cluster, live: &[String]) -> BTreeMap<(String, u32), String> {
    let mut found = BTreeMap::new();
    if live.is_empty() {
        return found;
    }
    for n in 1..=NODES {
        let mut cmd = vec![
            "systemctl",
            "show",
            "--property=Id,ActiveState,InvocationID",
        ];
        cmd.extend(live.iter().map(String::as_str));
        let out = c.exec(n, &cmd);
        for block in out.stdout.split("\n\n") {
            let field = |k: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                    .unwrap_or("")
                    .to_string()
            };
            if field("ActiveState") == "active" {
                found.insert((field("Id"), n), field("InvocationID"));
            }
        }
    }
    found
}
