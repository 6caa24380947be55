//! Units' history and rollback against a real etcd: each test starts its own.

mod support;

use fleet_registry::{
    HashPrefix, JobState, Registry, RollbackError, Unit, UnitHistory, HISTORY_DEPTH,
};
use fleet_units::{UnitHash, UnitOption};
use support::*;

fn version(name_: &str, exec: &str) -> Unit {
    Unit {
        name: name(name_),
        options: vec![UnitOption::new("Service", "ExecStart", exec)],
        desired_state: JobState::Launched,
    }
}

async fn history(registry: &Registry, name_: &str) -> UnitHistory {
    registry
        .unit_history(&name(name_))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{name_} has no history"))
}

fn hashes(history: &UnitHistory) -> Vec<UnitHash> {
    history.versions.iter().map(|v| v.hash).collect()
}

/// The keys of `name`'s history, read from etcd directly.
async fn history_keys(etcd: &Etcd, name_: &str) -> usize {
    let prefix = format!("{}history/{name_}/", etcd.prefix);
    etcd.key_space()
        .await
        .keys
        .iter()
        .filter(|k| k.key.starts_with(prefix.as_bytes()))
        .count()
}

fn prefix(hash: &UnitHash, len: usize) -> HashPrefix {
    HashPrefix::parse(&hash.to_string()[..len]).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_unit_keeps_its_previous_content_and_can_go_back_to_it() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (a, b) = (
        version("web.service", "/bin/a"),
        version("web.service", "/bin/b"),
    );
    registry.put_unit(&a).await.unwrap();
    let created = history(&registry, "web.service").await;
    assert_eq!(hashes(&created), [a.hash()]);
    assert!(created.versions[0].current && created.versions[0].since.is_some());

    registry.put_unit(&b).await.unwrap();
    // A change of desired state is not a version.
    registry
        .set_desired_state(&name("web.service"), JobState::Loaded)
        .await
        .unwrap();
    let replaced = history(&registry, "web.service").await;
    assert_eq!(hashes(&replaced), [b.hash(), a.hash()]);
    let previous = &replaced.versions[1];
    assert!(!previous.current);
    assert_eq!(previous.options, a.options);
    assert_eq!(previous.since, created.versions[0].since);
    assert_eq!(previous.until, replaced.versions[0].since);
    assert_eq!(history_keys(&etcd, "web.service").await, 2);

    // Back to the previous version: its content, the desired state kept.
    let done = registry
        .rollback_unit(&name("web.service"), None)
        .await
        .unwrap();
    assert_eq!((done.from, done.to), (b.hash(), a.hash()));
    let unit = registry.unit(&name("web.service")).await.unwrap().unwrap();
    assert_eq!(unit.options, a.options);
    assert_eq!(unit.desired_state, JobState::Loaded);
    // The engine places (and the agents run) what the unit says: the old content.
    assert_eq!(
        registry.engine_snapshot().await.unwrap().units[0].hash(),
        a.hash()
    );
    // The rollback is itself recorded, so that it can be undone.
    let rolled = history(&registry, "web.service").await;
    assert_eq!(hashes(&rolled), [a.hash(), b.hash(), a.hash()]);
    let undone = registry
        .rollback_unit(&name("web.service"), Some(&prefix(&b.hash(), 7)))
        .await
        .unwrap();
    assert_eq!(undone.to, b.hash());
    // Asking for the current version changes nothing.
    let before = etcd.key_space().await;
    let same = registry
        .rollback_unit(&name("web.service"), Some(&prefix(&b.hash(), 40)))
        .await
        .unwrap();
    assert_eq!((same.from, same.to), (b.hash(), b.hash()));
    assert_eq!(etcd.key_space().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_is_bounded() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let versions: Vec<Unit> = (0..HISTORY_DEPTH + 5)
        .map(|i| version("web.service", &format!("/bin/{i}")))
        .collect();
    for v in &versions {
        registry.put_unit(v).await.unwrap();
    }
    let kept = history(&registry, "web.service").await;
    let newest: Vec<UnitHash> = versions
        .iter()
        .rev()
        .take(HISTORY_DEPTH + 1)
        .map(Unit::hash)
        .collect();
    assert_eq!(hashes(&kept), newest);
    assert_eq!(history_keys(&etcd, "web.service").await, HISTORY_DEPTH + 1);
    // The oldest version is gone: it cannot be rolled back to.
    let err = registry
        .rollback_unit(&name("web.service"), Some(&prefix(&versions[0].hash(), 40)))
        .await
        .expect_err("a version no longer kept");
    assert!(matches!(err, RollbackError::UnknownVersion { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_rollback_changes_nothing() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    registry
        .put_unit(&version("single.service", "/bin/a"))
        .await
        .unwrap();
    // Enough versions for two to share a first hex digit.
    let versions: Vec<Unit> = (0..HISTORY_DEPTH)
        .map(|i| version("web.service", &format!("/bin/{i}")))
        .collect();
    for v in &versions {
        registry.put_unit(v).await.unwrap();
    }
    let shared = versions
        .iter()
        .map(|v| v.hash().to_string()[..1].to_string())
        .find(|d| {
            versions
                .iter()
                .filter(|v| v.hash().to_string().starts_with(d.as_str()))
                .count()
                > 1
        })
        .expect("ten hashes share a first digit");
    let before = etcd.key_space().await;
    type Expected = fn(&RollbackError) -> bool;
    let cases: Vec<(&str, Option<HashPrefix>, Expected)> = vec![
        ("none.service", None, |e| {
            matches!(e, RollbackError::NoSuchUnit(_))
        }),
        ("single.service", None, |e| {
            matches!(e, RollbackError::NoPrevious(_))
        }),
        (
            "web.service",
            Some(prefix(&version("x.service", "/bin/none").hash(), 40)),
            |e| matches!(e, RollbackError::UnknownVersion { .. }),
        ),
        (
            "web.service",
            Some(HashPrefix::parse(&shared).unwrap()),
            |e| matches!(e, RollbackError::Ambiguous { hashes, .. } if hashes.len() > 1),
        ),
    ];
    for (unit, target, expected) in cases {
        let err = registry
            .rollback_unit(&name(unit), target.as_ref())
            .await
            .expect_err(unit);
        assert!(expected(&err), "{unit} {target:?}: {err}");
    }
    assert_eq!(etcd.key_space().await, before, "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destroyed_unit_takes_its_history_with_it() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    registry
        .put_unit(&version("web.service", "/bin/a"))
        .await
        .unwrap();
    registry
        .put_unit(&version("web.service", "/bin/b"))
        .await
        .unwrap();
    assert!(registry.delete_unit(&name("web.service")).await.unwrap());
    assert_eq!(history_keys(&etcd, "web.service").await, 0);
    assert_eq!(
        registry.unit_history(&name("web.service")).await.unwrap(),
        None
    );

    // History left without its unit (by a fleetd that keeps none destroying it) is not a unit,
    // and is not the history of a new unit of that name.
    etcd.put_raw(
        "history/web.service/00000000000000000007",
        br#"{"hash":"0000000000000000000000000000000000000001","options":[]}"#,
    )
    .await;
    assert!(!registry.delete_unit(&name("web.service")).await.unwrap());
    etcd.put_raw(
        "history/web.service/00000000000000000007",
        br#"{"hash":"0000000000000000000000000000000000000001","options":[]}"#,
    )
    .await;
    let c = version("web.service", "/bin/c");
    registry.put_unit(&c).await.unwrap();
    assert_eq!(hashes(&history(&registry, "web.service").await), [c.hash()]);
    assert_eq!(history_keys(&etcd, "web.service").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_back_to_a_global_version_makes_the_unit_global_again() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let global = global_unit("log.service");
    registry.put_unit(&global).await.unwrap();
    registry.put_unit(&unit("log.service")).await.unwrap();
    let agent = registry.agent_snapshot(&machine_id(1)).await.unwrap();
    assert!(agent.global_units.is_empty());
    registry
        .rollback_unit(&name("log.service"), None)
        .await
        .unwrap();
    let agent = registry.agent_snapshot(&machine_id(1)).await.unwrap();
    assert_eq!(names(&agent.global_units), ["log.service"]);
    assert_eq!(agent.global_units[0].hash(), global.hash());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_replacements_each_leave_a_version() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    registry
        .put_unit(&version("web.service", "/bin/first"))
        .await
        .unwrap();
    let writers = HISTORY_DEPTH - 1;
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let registry = registry.clone();
            tokio::spawn(async move {
                registry
                    .put_unit(&version("web.service", &format!("/bin/{i}")))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let after = history(&registry, "web.service").await;
    let mut seen = hashes(&after);
    assert_eq!(seen.len(), writers + 1, "{after:#?}");
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        writers + 1,
        "a version is missing or twice: {after:#?}"
    );
    // Each version took over from the one before it.
    for pair in after.versions.windows(2) {
        assert_eq!(pair[1].until, pair[0].since);
    }
    let current = registry.unit(&name("web.service")).await.unwrap().unwrap();
    assert_eq!(after.versions[0].hash, current.hash());
}

/// Creations made at the same moment go to etcd together, in as few transactions as etcd's
/// limits allow, each unit with its history as if created alone; a unit that exists, and a
/// second creation of one unit in the same burst, get what exists, and the others are created.
#[tokio::test(flavor = "current_thread")]
async fn units_created_at_once_go_together_and_each_gets_its_own_answer() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let there = version("there.service", "/bin/old");
    registry.put_unit(&there).await.unwrap();

    // 60 new units: two transactions (42 fit in one) on this single-threaded runtime, where
    // every creation is waiting before the first is sent.
    let units: Vec<Unit> = (0..60)
        .map(|i| version(&format!("burst-{i:02}.service"), "/bin/true"))
        .collect();
    let before = registry.kv_requests();
    let answers =
        futures_util::future::join_all(units.iter().map(|u| registry.create_unit(u))).await;
    let requests = registry.kv_requests() - before;
    assert!(answers.iter().all(|a| matches!(a, Ok(None))), "{answers:?}");
    assert_eq!(requests, 2, "60 creations in {requests} requests");
    for unit in &units {
        assert_eq!(
            registry.unit(&unit.name).await.unwrap().as_ref(),
            Some(unit)
        );
        let h = history(&registry, unit.name.as_str()).await;
        assert_eq!(hashes(&h), [unit.hash()]);
        assert!(h.versions[0].current && h.versions[0].since.is_some());
    }

    // A burst with a unit that exists and one unit twice.
    let again = version("burst-new.service", "/bin/true");
    let burst = [
        version("there.service", "/bin/new"),
        again.clone(),
        version("burst-other.service", "/bin/true"),
        version("burst-new.service", "/bin/other"),
    ];
    let answers: Vec<Option<Unit>> =
        futures_util::future::join_all(burst.iter().map(|u| registry.create_unit(u)))
            .await
            .into_iter()
            .map(|a| a.unwrap())
            .collect();
    assert_eq!(answers[0], Some(there.clone()));
    assert_eq!(answers[2], None);
    // One of the two creations of one unit made it, and the other was told what it made.
    let winner = match (&answers[1], &answers[3]) {
        (None, Some(other)) if *other == again => again.clone(),
        (Some(other), None) if *other == burst[3] => burst[3].clone(),
        other => panic!("both or neither created: {other:?}"),
    };
    assert_eq!(registry.unit(&there.name).await.unwrap(), Some(there));
    assert_eq!(registry.unit(&again.name).await.unwrap(), Some(winner));
    assert!(registry
        .unit(&name("burst-other.service"))
        .await
        .unwrap()
        .is_some());
}
