//! The states and machines of named units, read by those units' own keys (the `placed/`
//! index, the `global/` copy, point reads of states), against a real etcd: the answers are
//! the ones reading every state and placement gave, and a read costs the same number of keys
//! and requests in a cluster of 3 units on 2 machines as in one of 300 more units on 20
//! machines (a global unit's, one more key per live machine).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_registry::{
    Leadership, MachineId, PlacementOp, Presence, Registry, UnitMachines, UnitState,
};
use fleet_units::UnitName;
use support::*;

/// Long enough that no lease expires during a test on a busy machine.
const LEASE: Duration = Duration::from_secs(30);

/// The units every read is about: placed with a state, placed without one, global with
/// states on machines 1 and 2, a unit placed nowhere, one placed on a machine that is not
/// live (machine 30, never registered), and a name that is no unit.
const ASKED: [&str; 6] = [
    "web.service",
    "idle.service",
    "log.service",
    "wait.service",
    "lost.service",
    "gone.service",
];

/// A cluster under construction: machines registered with one registry, the reads measured
/// with another, so that what the machines' presences read (the members, when one joins) is
/// not counted.
struct Cluster {
    _etcd: Etcd,
    setup: Registry,
    reader: Registry,
    machines: Vec<(Presence, i64)>,
    leadership: Option<Leadership>,
}

impl Cluster {
    async fn start() -> Cluster {
        let etcd = Etcd::start();
        let setup = registry(&etcd).await;
        let reader = registry(&etcd).await;
        Cluster {
            _etcd: etcd,
            setup,
            reader,
            machines: Vec::new(),
            leadership: None,
        }
    }

    /// Registers machines up to `n` in all; the first leads.
    async fn machines(&mut self, n: u8) {
        for i in self.machines.len() as u8 + 1..=n {
            let presence = Presence::start(self.setup.clone(), machine(i), LEASE, None)
                .await
                .expect("register");
            let lease = lease_of(&presence);
            self.machines.push((presence, lease));
        }
        if self.leadership.is_none() {
            let lease = self.machines[0].1;
            self.leadership = self
                .setup
                .campaign(&machine_id(1), lease)
                .await
                .expect("campaign");
        }
    }

    async fn apply(&self, ops: &[PlacementOp]) {
        let leadership = self.leadership.expect("a leader");
        self.setup
            .apply_placements(leadership, ops)
            .await
            .expect("place");
    }

    /// `name` published as running on machine `n`.
    async fn publish(&self, n: u8, name: &str) {
        let lease = self.machines[n as usize - 1].1;
        self.setup
            .publish_state(lease, &state(n, name))
            .await
            .expect("publish");
    }

    /// The units of `ASKED`.
    async fn asked_units(&self) {
        for name in [
            "web.service",
            "idle.service",
            "wait.service",
            "lost.service",
        ] {
            self.setup.put_unit(&unit(name)).await.expect("put");
        }
        self.setup
            .put_unit(&global_unit("log.service"))
            .await
            .expect("put");
        self.apply(&[
            place(&machine_id(1), "web.service"),
            place(&machine_id(2), "idle.service"),
            place(&machine_id(30), "lost.service"),
        ])
        .await;
        self.publish(1, "web.service").await;
        self.publish(1, "log.service").await;
        self.publish(2, "log.service").await;
    }

    /// `count` other units, each placed on one of the machines in turn with a state there,
    /// and a global unit with a state on every machine.
    async fn others(&self, count: usize) {
        let machines = self.machines.len();
        let mut ops = Vec::new();
        for i in 0..count {
            let name = format!("other{i:03}.service");
            self.setup.put_unit(&unit(&name)).await.expect("put");
            let n = (i % machines) as u8 + 1;
            ops.push(place(&machine_id(n), &name));
            self.publish(n, &name).await;
        }
        self.apply(&ops).await;
        self.setup
            .put_unit(&global_unit("everywhere.service"))
            .await
            .expect("put");
        for n in 1..=machines as u8 {
            self.publish(n, "everywhere.service").await;
        }
    }
}

fn unit_names(names: &[&str]) -> BTreeSet<UnitName> {
    names.iter().map(|n| name(n)).collect()
}

fn machine_ids(ns: &[u8]) -> BTreeSet<MachineId> {
    ns.iter().map(|n| machine_id(*n)).collect()
}

// ---- what reading every state and placement answered ----------------------------------------

/// `GET /state` with filters, by scanning every state.
async fn scanned_states(
    registry: &Registry,
    units: &BTreeSet<UnitName>,
    machines: &BTreeSet<MachineId>,
) -> Vec<UnitState> {
    registry
        .unit_states()
        .await
        .expect("states")
        .into_iter()
        .filter(|s| units.is_empty() || units.contains(&s.name))
        .filter(|s| machines.is_empty() || machines.contains(&s.machine_id))
        .collect()
}

/// `GET /state/{name}` from every placement and state: the placed machine's state, else the
/// first by machine.
async fn scanned_state(registry: &Registry, name: &UnitName) -> Option<UnitState> {
    let placed = registry
        .placements()
        .await
        .expect("placements")
        .into_iter()
        .find(|(_, p)| p.name == *name)
        .map(|(m, _)| m);
    let mut states: Vec<UnitState> = registry
        .unit_states()
        .await
        .expect("states")
        .into_iter()
        .filter(|s| s.name == *name)
        .collect();
    match states
        .iter()
        .position(|s| Some(&s.machine_id) == placed.as_ref())
    {
        Some(i) => Some(states.swap_remove(i)),
        None => states.into_iter().next(),
    }
}

/// A journal's machines from every placement, state and machine: the placed one, or for a
/// global unit every one reporting it, among the live ones.
async fn scanned_machines(registry: &Registry, name: &UnitName) -> Option<UnitMachines> {
    let global = registry.unit(name).await.expect("unit")?.is_global();
    let placed = registry
        .placements()
        .await
        .expect("placements")
        .into_iter()
        .find(|(_, p)| p.name == *name)
        .map(|(m, _)| m);
    let reporting: Vec<MachineId> = registry
        .unit_states()
        .await
        .expect("states")
        .into_iter()
        .filter(|s| s.name == *name)
        .map(|s| s.machine_id)
        .collect();
    let ids: Vec<MachineId> = match global {
        true => reporting,
        false => placed.into_iter().collect(),
    };
    let machines = registry
        .machines()
        .await
        .expect("machines")
        .into_iter()
        .filter(|m| ids.contains(&m.id))
        .collect();
    Some(UnitMachines { global, machines })
}

// ---- the reads ------------------------------------------------------------------------------

/// One read's answer (as text, to compare) and what it cost: keys etcd answered, requests.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Read {
    what: String,
    /// Whether it reads a global unit's states on every live machine.
    global: bool,
    answer: String,
    keys: u64,
    requests: u64,
}

/// Every read by unit, each checked against what the scans answer and measured.
async fn reads(cluster: &Cluster) -> Vec<Read> {
    let (reader, scanner) = (&cluster.reader, &cluster.setup);
    let mut reads = Vec::new();
    let measure = |what: String, global: bool, answer: String, before: (u64, u64)| Read {
        what,
        global,
        answer,
        keys: reader.keys_read() - before.0,
        requests: reader.kv_requests() - before.1,
    };
    let mut filters: Vec<(Vec<&str>, Vec<u8>)> = ASKED.iter().map(|n| (vec![*n], vec![])).collect();
    filters.extend([
        (ASKED.to_vec(), vec![]),
        (vec!["web.service", "log.service"], vec![1]),
        (vec!["log.service", "idle.service"], vec![2, 3]),
    ]);
    for (units, machines) in filters {
        let (units, machines) = (unit_names(&units), machine_ids(&machines));
        let before = (reader.keys_read(), reader.kv_requests());
        let page = reader
            .unit_states_page(None, 100, &machines, &units)
            .await
            .expect("states");
        let what = format!("states of {units:?} on {machines:?}");
        assert_eq!(
            page.items,
            scanned_states(scanner, &units, &machines).await,
            "{what}"
        );
        assert!(page.next.is_none(), "{what}: one page");
        let global = machines.is_empty() && units.contains(&name("log.service"));
        reads.push(measure(what, global, format!("{:?}", page.items), before));
    }
    for asked in ASKED {
        let unit = name(asked);
        let before = (reader.keys_read(), reader.kv_requests());
        let state = reader.unit_state(&unit).await.expect("state");
        assert_eq!(
            state,
            scanned_state(scanner, &unit).await,
            "state of {asked}"
        );
        let global = asked == "log.service";
        reads.push(measure(
            format!("state of {asked}"),
            global,
            format!("{state:?}"),
            before,
        ));

        let before = (reader.keys_read(), reader.kv_requests());
        let machines = reader.unit_machines(&unit).await.expect("machines");
        assert_eq!(
            machines,
            scanned_machines(scanner, &unit).await,
            "machines of {asked}"
        );
        reads.push(measure(
            format!("machines of {asked}"),
            global,
            format!("{machines:?}"),
            before,
        ));
    }
    reads
}

#[tokio::test(flavor = "multi_thread")]
async fn a_units_states_cost_the_same_whatever_else_the_cluster_holds() {
    let mut cluster = Cluster::start().await;
    cluster.machines(2).await;
    cluster.asked_units().await;
    let small = reads(&cluster).await;

    // 18 more machines, 300 more units placed on all of them, one more global unit on each.
    cluster.machines(20).await;
    cluster.others(300).await;
    assert!(cluster.reader.unit_states().await.expect("states").len() > 300);
    let large = reads(&cluster).await;

    for (small, large) in small.iter().zip(&large) {
        assert_eq!(small.what, large.what);
        assert_eq!(small.answer, large.answer, "{}: another answer", small.what);
        assert_eq!(small.requests, large.requests, "{}: requests", small.what);
        // A global unit's machines are every live machine: one key more for each (their
        // record's key), whatever the units; anything else, not a key more.
        let more = if small.global { 18 } else { 0 };
        assert_eq!(large.keys, small.keys + more, "{}: keys", small.what);
        assert!(small.keys <= 20, "{small:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn states_by_unit_are_paged_by_machine_then_unit() {
    let mut cluster = Cluster::start().await;
    cluster.machines(3).await;
    cluster.asked_units().await;
    cluster.others(12).await;
    let reader = &cluster.reader;
    let cases: [(&[&str], &[u8]); 4] = [
        (&["log.service", "web.service", "everywhere.service"], &[]),
        (
            &["everywhere.service", "other004.service", "other001.service"],
            &[],
        ),
        (
            &["everywhere.service", "log.service", "other002.service"],
            &[3, 1],
        ),
        (&["gone.service", "wait.service", "idle.service"], &[]),
    ];
    for (units, machines) in cases {
        let (units, machines) = (unit_names(units), machine_ids(machines));
        let whole = scanned_states(&cluster.setup, &units, &machines).await;
        for limit in [1, 2, 3, 100] {
            let (mut listed, mut after, mut pages) = (Vec::new(), None, 0);
            loop {
                let page = reader
                    .unit_states_page(after.as_ref(), limit, &machines, &units)
                    .await
                    .expect("page");
                assert!(page.items.len() <= limit);
                pages += 1;
                listed.extend(page.items);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
                assert!(pages < 100, "paging does not end");
            }
            assert_eq!(listed, whole, "{units:?} on {machines:?} by {limit}");
            assert!(pages <= whole.len().div_ceil(limit) + 1, "{pages} pages");
        }
    }
}
