//! What the engine's tests share: a registry on the test's own etcd, and machine ids.

#![allow(dead_code)]

use std::time::Duration;

use fleet_registry::{EtcdConfig, MachineId, Registry};
use fleet_testkit::Etcd;

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
