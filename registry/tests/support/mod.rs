//! A real etcd per test (`fleet_testkit::Etcd`), and small builders for fleet's records.

#![allow(dead_code, unused_imports)]

use std::time::Duration;

use fleet_registry::{
    EtcdConfig, JobState, Leadership, Machine, MachineId, Placement, PlacementOp, Presence,
    PresenceStatus, Registry, Unit, UnitState,
};
pub use fleet_testkit::{closed_port, Etcd, TempDir};
use fleet_units::{UnitName, UnitOption};
use tokio::time::Instant;

/// How this test's registry reaches its etcd.
pub fn config(etcd: &Etcd) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: etcd.prefix.clone(),
        request_timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    }
}

/// A new client of this etcd, under this test's prefix.
pub async fn registry(etcd: &Etcd) -> Registry {
    Registry::connect(&config(etcd))
        .await
        .expect("cannot connect to the test etcd")
}

// ---- records --------------------------------------------------------------------------------

/// The lease TTL the presence tests use: short, so that expiry is quick.
pub const TTL: Duration = Duration::from_secs(2);

/// How long to wait for something that takes about one TTL.
pub const EXPIRY_DEADLINE: Duration = Duration::from_secs(15);

pub fn machine_id(n: u8) -> MachineId {
    MachineId::parse(&format!("{n:032x}")).unwrap()
}

pub fn machine(n: u8) -> Machine {
    Machine {
        id: machine_id(n),
        public_ip: format!("10.0.0.{n}"),
        metadata: Default::default(),
        version: "test".to_string(),
        peer_address: None,
    }
}

pub fn name(s: &str) -> UnitName {
    UnitName::parse(s).unwrap()
}

pub fn unit(name_: &str) -> Unit {
    Unit {
        name: name(name_),
        options: vec![UnitOption::new("Service", "ExecStart", "/bin/true")],
        desired_state: JobState::Launched,
    }
}

pub fn global_unit(name_: &str) -> Unit {
    let mut unit = unit(name_);
    unit.options
        .push(UnitOption::new("X-Fleet", "Global", "true"));
    unit
}

pub fn names<'a>(units: impl IntoIterator<Item = &'a Unit>) -> Vec<String> {
    units.into_iter().map(|u| u.name.to_string()).collect()
}

pub fn place(machine: &MachineId, unit_name: &str) -> PlacementOp {
    PlacementOp::Put {
        machine: machine.clone(),
        placement: Placement::for_unit(&unit(unit_name)),
    }
}

pub fn unplace(machine: &MachineId, unit_name: &str) -> PlacementOp {
    PlacementOp::Delete {
        machine: machine.clone(),
        name: name(unit_name),
    }
}

/// Registers machine `n` with the short TTL and no lease file.
pub async fn present(registry: &Registry, n: u8) -> (Presence, i64) {
    let presence = tokio::time::timeout(
        EXPIRY_DEADLINE,
        Presence::start(registry.clone(), machine(n), TTL, None),
    )
    .await
    .expect("registration hangs")
    .expect("registration fails");
    let lease = lease_of(&presence);
    (presence, lease)
}

/// Registers machine `n` (as [`present`]) and makes it the engine's leader.
pub async fn leading(registry: &Registry, n: u8) -> (Presence, Leadership) {
    let (presence, lease) = present(registry, n).await;
    let leadership = registry
        .campaign(&machine_id(n), lease)
        .await
        .expect("campaign")
        .expect("the machine leads");
    (presence, leadership)
}

pub fn lease_of(presence: &Presence) -> i64 {
    match presence.status() {
        PresenceStatus::Alive { lease } => lease,
        PresenceStatus::Fenced => panic!("presence is fenced"),
    }
}

/// Polls `check` until it holds, failing the test after `deadline`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= until {
            panic!("{what}: not so after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A launched, running state of `unit_name` on machine `machine`.
pub fn state(machine: u8, unit_name: &str) -> UnitState {
    UnitState {
        name: name(unit_name),
        hash: unit(unit_name).hash(),
        machine_id: machine_id(machine),
        job_state: JobState::Launched,
        systemd_load_state: "loaded".to_string(),
        systemd_active_state: "active".to_string(),
        systemd_sub_state: "running".to_string(),
        start_failure: None,
        health: None,
    }
}
