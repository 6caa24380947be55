//! What the engine's tests share: a registry on the test's own etcd, machine ids, machines
//! registered, and units.

#![allow(dead_code)]

use std::time::Duration;

use fleet_registry::{EtcdConfig, JobState, Machine, MachineId, Presence, Registry, Unit};
use fleet_testkit::Etcd;
use fleet_units::{UnitName, UnitOption};

/// A registry on `etcd`, under the test's prefix.
pub async fn connect(etcd: &Etcd) -> Registry {
    Registry::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: etcd.prefix.clone(),
        request_timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    })
    .await
    .expect("registry")
}

/// Machine `n`'s id.
pub fn id(n: u8) -> MachineId {
    MachineId::parse(&format!("{n:032x}")).expect("id")
}

/// Machine `n` (id `id(n)`, address 10.0.0.n) registered on a lease of `ttl`.
pub async fn present(registry: &Registry, n: u8, ttl: Duration) -> Presence {
    let machine = Machine {
        id: id(n),
        public_ip: format!("10.0.0.{n}"),
        metadata: Default::default(),
        version: "test".into(),
        peer_address: None,
    };
    Presence::start(registry.clone(), machine, ttl, None)
        .await
        .expect("register")
}

/// A unit running `/bin/true`, to be launched.
pub fn unit(name: &str) -> Unit {
    Unit {
        name: UnitName::parse(name).expect("name"),
        options: vec![UnitOption::new("Service", "ExecStart", "/bin/true")],
        desired_state: JobState::Launched,
    }
}

/// Writes `count` units `u0.service`, `u1.service`, ... ([`unit`]).
pub async fn write_units(registry: &Registry, count: usize) {
    for n in 0..count {
        registry
            .put_unit(&unit(&format!("u{n}.service")))
            .await
            .expect("put unit");
    }
}
