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
    present_with(registry, n, ttl, &[]).await
}

/// Machine `n` registered as [`present`] registers it, with this metadata.
pub async fn present_with(
    registry: &Registry,
    n: u8,
    ttl: Duration,
    metadata: &[(&str, &str)],
) -> Presence {
    let machine = Machine {
        id: id(n),
        public_ip: format!("10.0.0.{n}"),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        version: "test".into(),
        peer_address: None,
    };
    Presence::start(registry.clone(), machine, ttl, None)
        .await
        .expect("register")
}

/// Machines 1 to `count` registered ([`present`]).
pub async fn presences(registry: &Registry, count: u8, ttl: Duration) -> Vec<Presence> {
    let mut presences = Vec::new();
    for n in 1..=count {
        presences.push(present(registry, n, ttl).await);
    }
    presences
}

/// The engine of machine 1, whose `presence` it follows, on `registry`.
pub fn spawn_engine(
    registry: Registry,
    presence: &Presence,
    config: fleet_engine::EngineConfig,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(fleet_engine::run(
        registry,
        id(1),
        presence.subscribe(),
        config,
    ))
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

/// Waits until `check` holds, looking every 50 ms; panics saying `what` after 20 s.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not so in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the engine has placed `count` units (`eventually`).
pub async fn all_placed(registry: &Registry, count: usize) {
    eventually("all units placed", || async {
        registry
            .engine_snapshot()
            .await
            .expect("read")
            .placements
            .len()
            == count
    })
    .await;
}
