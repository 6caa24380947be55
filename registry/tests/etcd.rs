//! The registry against a real etcd: each test starts its own (see `support`).

mod support;

use fleet_registry::JobState;
use support::*;

// ---- units ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn units_are_stored_listed_changed_and_deleted() {
    let etcd = Etcd::start().await;
    let registry = etcd.registry().await;

    registry.put_unit(&unit("web.service")).await.unwrap();
    registry.put_unit(&unit("db.service")).await.unwrap();
    assert_eq!(
        names(&registry.units().await.unwrap()),
        ["db.service", "web.service"]
    );
    assert_eq!(
        registry.unit(&name("web.service")).await.unwrap(),
        Some(unit("web.service"))
    );
    assert_eq!(registry.unit(&name("none.service")).await.unwrap(), None);

    assert!(registry
        .set_desired_state(&name("web.service"), JobState::Inactive)
        .await
        .unwrap());
    let web = registry.unit(&name("web.service")).await.unwrap().unwrap();
    assert_eq!(web.desired_state, JobState::Inactive);
    assert!(!registry
        .set_desired_state(&name("none.service"), JobState::Loaded)
        .await
        .unwrap());
    assert_eq!(registry.unit(&name("none.service")).await.unwrap(), None);

    assert!(registry.delete_unit(&name("web.service")).await.unwrap());
    assert!(!registry.delete_unit(&name("web.service")).await.unwrap());
    assert_eq!(names(&registry.units().await.unwrap()), ["db.service"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_global_unit_reaches_every_agent_until_it_is_made_local() {
    let etcd = Etcd::start().await;
    let registry = etcd.registry().await;
    registry
        .put_unit(&global_unit("log.service"))
        .await
        .unwrap();
    registry.put_unit(&unit("web.service")).await.unwrap();

    for machine in [machine_id(1), machine_id(2)] {
        let snapshot = registry.agent_snapshot(&machine).await.unwrap();
        assert_eq!(names(&snapshot.global_units), ["log.service"]);
    }

    // The agents see the desired state of the global copy change too.
    registry
        .set_desired_state(&name("log.service"), JobState::Loaded)
        .await
        .unwrap();
    let snapshot = registry.agent_snapshot(&machine_id(1)).await.unwrap();
    assert_eq!(snapshot.global_units[0].desired_state, JobState::Loaded);

    registry.put_unit(&unit("log.service")).await.unwrap();
    let snapshot = registry.agent_snapshot(&machine_id(1)).await.unwrap();
    assert!(snapshot.global_units.is_empty());
    assert_eq!(
        names(&registry.units().await.unwrap()),
        ["log.service", "web.service"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_global_unit_removes_it_from_the_agents() {
    let etcd = Etcd::start().await;
    let registry = etcd.registry().await;
    registry
        .put_unit(&global_unit("log.service"))
        .await
        .unwrap();

    assert!(registry.delete_unit(&name("log.service")).await.unwrap());
    let snapshot = registry.agent_snapshot(&machine_id(1)).await.unwrap();
    assert!(snapshot.global_units.is_empty());
}
