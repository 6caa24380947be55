//! The registry against a real etcd: each test starts its own (see `support`).

mod support;

use std::time::Duration;

use fleet_registry::{
    Error, EtcdConfig, JobState, Placement, PlacementOp, Presence, PresenceStatus, Registry,
    MAX_REQUEST_BYTES,
};
use fleet_units::UnitOption;
use support::*;

/// Long enough for etcd to deliver an event that is coming; the tests never rely on it being
/// fast, only on it not hanging.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);
/// How long a watch must stay quiet to say that a change did not concern it.
const QUIET: Duration = Duration::from_millis(500);

// ---- units ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn units_are_stored_listed_changed_and_deleted() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;

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

/// A desired state set to the one the unit has is written anyway. A write of another state
/// that timed out may still be applied, conditioned on the record it read: it must then be
/// refused, so that a `stop` after a `start` that timed out leaves the unit stopped.
#[tokio::test(flavor = "multi_thread")]
async fn a_desired_state_set_again_refuses_an_earlier_write_still_on_its_way() {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let web = name("web.service");
    let mut loaded = unit("web.service");
    loaded.desired_state = JobState::Loaded;
    registry.put_unit(&loaded).await.unwrap();
    let key = format!("{}units/web.service", etcd.prefix);
    let read = etcd
        .key_space()
        .await
        .keys
        .into_iter()
        .find(|k| k.key == key.as_bytes())
        .expect("the unit's record")
        .mod_revision;

    // `fleetctl stop` of the loaded unit.
    assert!(registry
        .set_desired_state(&web, JobState::Loaded)
        .await
        .unwrap());
    // The `start` sent before it, as `set_desired_state` writes it, applied only now.
    let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let launched = serde_json::to_vec(&unit("web.service")).unwrap();
    let late = client
        .txn(
            Txn::new()
                .when(vec![Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    read,
                )])
                .and_then(vec![TxnOp::put(key.as_str(), launched, None)]),
        )
        .await
        .unwrap();
    assert!(!late.succeeded(), "the late start went through");
    let now = registry.unit(&web).await.unwrap().expect("the unit");
    assert_eq!(now.desired_state, JobState::Loaded);

    // A global unit's `global/` key is not written again: a rolling update's versions are
    // tied to its revision.
    registry.put_unit(&global_unit("g.service")).await.unwrap();
    let revision = |key: String| {
        let etcd = &etcd;
        async move {
            etcd.key_space()
                .await
                .keys
                .into_iter()
                .find(|k| k.key == key.as_bytes())
                .map(|k| k.mod_revision)
        }
    };
    let unit_key = format!("{}units/g.service", etcd.prefix);
    let global_key = format!("{}global/g.service", etcd.prefix);
    let (unit_before, global_before) = (
        revision(unit_key.clone()).await,
        revision(global_key.clone()).await,
    );
    assert!(global_before.is_some(), "no global/ key");
    assert!(registry
        .set_desired_state(&name("g.service"), JobState::Launched)
        .await
        .unwrap());
    assert_ne!(revision(unit_key).await, unit_before, "not fenced");
    assert_eq!(revision(global_key).await, global_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_global_unit_reaches_every_agent_until_it_is_made_local() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
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
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    registry
        .put_unit(&global_unit("log.service"))
        .await
        .unwrap();

    assert!(registry.delete_unit(&name("log.service")).await.unwrap());
    let snapshot = registry.agent_snapshot(&machine_id(1)).await.unwrap();
    assert!(snapshot.global_units.is_empty());
}

/// A unit carrying about `bytes` bytes of option values, in lines short enough for a unit file.
fn bulky(name_: &str, bytes: usize, global: bool) -> fleet_registry::Unit {
    let mut unit = if global {
        global_unit(name_)
    } else {
        unit(name_)
    };
    for i in 0..bytes.div_ceil(1000) {
        let len = (bytes - i * 1000).min(1000);
        unit.options
            .push(UnitOption::new("Service", "Environment", "x".repeat(len)));
    }
    unit
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unit_too_large_for_one_etcd_request_is_refused_before_it_is_sent() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    // A global unit is written twice in one transaction: at about 1 MiB it does not fit.
    let err = registry
        .put_unit(&bulky("big.service", 1024 * 1024, true))
        .await
        .expect_err("a global unit of 1 MiB");
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(!err.is_unavailable());
    assert!(err.to_string().contains("global unit big.service"), "{err}");
    assert!(
        registry.units().await.unwrap().is_empty(),
        "nothing written"
    );
    registry
        .put_unit(&bulky("big.service", 1024 * 1024, false))
        .await
        .expect("stored once, 1 MiB fits");

    // The largest global unit put_unit accepts is one etcd takes: the budget leaves room for
    // etcd's framing. Bisection is cheap: a refusal is decided before anything is sent.
    let (mut accepted, mut refused) = (0, MAX_REQUEST_BYTES);
    while refused - accepted > 1 {
        let size = (accepted + refused) / 2;
        match registry.put_unit(&bulky("edge.service", size, true)).await {
            Err(Error::TooLarge { .. }) => refused = size,
            Ok(()) => accepted = size,
            Err(e) => {
                panic!("etcd refused a global unit of {size} bytes put_unit let through: {e}")
            }
        }
    }
    assert!(accepted > 700 * 1024, "{accepted}");
}

// ---- presence -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_started_machine_is_listed() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;

    let (_presence, lease) = present(&registry, 1).await;

    assert_eq!(registry.machines().await.unwrap(), [machine(1)]);
    let snapshot = registry.engine_snapshot().await.unwrap();
    assert_eq!(snapshot.machines[0].lease, lease);
}

/// A renewal is one keepalive: opening the keepalive stream sends one and takes its answer,
/// which renews the lease; later renewals go on the same stream, one keepalive each.
#[tokio::test(flavor = "multi_thread")]
async fn each_renewal_sends_etcd_one_keepalive() {
    const STREAMS: &str = "grpc_server_started_total";
    const MESSAGES: &str = "grpc_server_msg_received_total";
    const KEEPALIVE: &str = "grpc_method=\"LeaseKeepAlive\"";
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    // Renewals every 3 s: the counts below are read well between two of them.
    let ttl = Duration::from_secs(9);
    let presence = Presence::start(registry.clone(), machine(1), ttl, None)
        .await
        .expect("register");
    let lease = lease_of(&presence);

    eventually("the keepalive stream is opened", EVENT_DEADLINE, || async {
        etcd.metric(STREAMS, KEEPALIVE) >= 1.0
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(etcd.metric(STREAMS, KEEPALIVE), 1.0);
    assert_eq!(
        etcd.metric(MESSAGES, KEEPALIVE),
        1.0,
        "the first renewal sent more than the stream's opening keepalive"
    );

    eventually("the second renewal", EVENT_DEADLINE, || async {
        etcd.metric(MESSAGES, KEEPALIVE) >= 2.0
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(etcd.metric(MESSAGES, KEEPALIVE), 2.0);
    assert_eq!(
        etcd.metric(STREAMS, KEEPALIVE),
        1.0,
        "the stream was not kept"
    );
    assert_eq!(presence.status(), PresenceStatus::Alive { lease });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_fleetd_with_the_same_machine_id_waits_until_the_first_is_gone() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (first, first_lease) = present(&registry, 1).await;

    let mut second = tokio::spawn(Presence::start(registry.clone(), machine(1), TTL, None));
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut second)
            .await
            .is_err(),
        "a second fleetd registered while the first is alive"
    );

    drop(first);
    let second = tokio::time::timeout(EXPIRY_DEADLINE, second)
        .await
        .expect("the second fleetd is still waiting after the first's lease expired")
        .unwrap()
        .unwrap();
    let second_lease = lease_of(&second);
    assert_ne!(second_lease, first_lease);
    let snapshot = registry.engine_snapshot().await.unwrap();
    assert_eq!(snapshot.machines.len(), 1);
    assert_eq!(snapshot.machines[0].lease, second_lease);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_with_the_lease_file_takes_back_the_same_lease() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let dir = TempDir::new("lease");
    let lease_file = dir.path().join("lease");

    let first = Presence::start(registry.clone(), machine(1), TTL, Some(lease_file.clone()))
        .await
        .unwrap();
    let lease = lease_of(&first);
    drop(first);

    let second = tokio::time::timeout(
        EXPIRY_DEADLINE,
        Presence::start(registry.clone(), machine(1), TTL, Some(lease_file)),
    )
    .await
    .expect("the restarted fleetd waits for its own lease")
    .unwrap();
    assert_eq!(lease_of(&second), lease);
    let snapshot = registry.engine_snapshot().await.unwrap();
    assert_eq!(snapshot.machines.len(), 1);
    assert_eq!(snapshot.machines[0].lease, lease);

    // The lease taken back is kept alive: the machine outlives several TTLs.
    tokio::time::sleep(TTL * 3).await;
    let snapshot = registry.engine_snapshot().await.unwrap();
    assert_eq!(snapshot.machines.len(), 1);
    assert_eq!(snapshot.machines[0].lease, lease);
}

// ---- liveness -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_machine_takes_its_states_with_it_and_its_placements_wait_for_the_engine() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (dying, dying_lease) = present(&registry, 1).await;
    let (_living, living_lease) = present(&registry, 2).await;
    let leadership = registry
        .campaign(&machine_id(2), living_lease)
        .await
        .unwrap()
        .unwrap();
    registry
        .publish_state(dying_lease, &state(1, "web.service"))
        .await
        .unwrap();
    registry
        .publish_state(living_lease, &state(2, "db.service"))
        .await
        .unwrap();
    registry
        .apply_placements(
            leadership,
            &[
                place(&machine_id(1), "web.service"),
                place(&machine_id(2), "db.service"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(registry.unit_states().await.unwrap().len(), 2);
    assert_eq!(registry.placements().await.unwrap().len(), 2);

    drop(dying);

    eventually("machine 1 is gone", EXPIRY_DEADLINE, || async {
        registry.machines().await.unwrap() == [machine(2)]
    })
    .await;
    assert!(registry
        .machine_states(&machine_id(1))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        registry.unit_states().await.unwrap(),
        [state(2, "db.service")]
    );
    // It may still run what was placed on it, and it is still a member.
    assert_eq!(registry.placements().await.unwrap().len(), 2);
    let (_, members) = registry.cluster_members().await.unwrap();
    assert_eq!(members.len(), 2);
    let judged = members
        .iter()
        .find(|e| e.member.machine.id == machine_id(1))
        .expect("machine 1 is a member")
        .mod_revision;
    // Each registered with the members it read: machine 1 alone, machine 2 after it.
    let seen: Vec<(String, usize)> = members
        .iter()
        .map(|e| (e.member.machine.id.to_string(), e.member.seen_members))
        .collect();
    assert_eq!(
        seen,
        [
            (machine_id(1).to_string(), 1),
            (machine_id(2).to_string(), 2)
        ]
    );

    let web = fleet_units::UnitName::parse("web.service").unwrap();
    // Judged on another registration of it: refused.
    assert!(!registry
        .declare_dead(
            leadership,
            &machine_id(1),
            judged - 1,
            std::slice::from_ref(&web)
        )
        .await
        .unwrap());
    assert_eq!(registry.placements().await.unwrap().len(), 2);
    // A reading it recorded since (a write that etcd applied late, say), in its own key:
    // judged on the reading before it, refused; on this one, declared.
    let later = fleet_registry::Member {
        machine: machine(1),
        seen_revision: judged,
        seen_members: 2,
    };
    assert!(registry.record_reading(&later).await.unwrap());
    let (_, members) = registry.cluster_members().await.unwrap();
    assert_eq!(
        members[0].mod_revision, judged,
        "a reading wrote the member record"
    );
    assert!(!registry
        .declare_dead(
            leadership,
            &machine_id(1),
            judged,
            std::slice::from_ref(&web)
        )
        .await
        .unwrap());
    assert_eq!(registry.placements().await.unwrap().len(), 2);
    let snapshot = registry.engine_snapshot().await.unwrap();
    let now = snapshot.judged(&snapshot.members[0]);
    assert_eq!(now.reading, later.reading());
    assert!(now.revision > judged);
    assert!(registry
        .declare_dead(
            leadership,
            &machine_id(1),
            now.revision,
            std::slice::from_ref(&web)
        )
        .await
        .unwrap());
    assert!(
        !registry
            .engine_snapshot()
            .await
            .unwrap()
            .readings
            .contains_key(&machine_id(1)),
        "its reading outlived the declaration"
    );
    let placements = registry.placements().await.unwrap();
    assert_eq!(placements.len(), 1);
    assert_eq!(placements[0].0, machine_id(2));
    let (_, members) = registry.cluster_members().await.unwrap();
    let ids: Vec<_> = members
        .iter()
        .map(|e| e.member.machine.id.clone())
        .collect();
    assert_eq!(ids, [machine_id(2)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_member_record_counts_against_majorities_until_its_machine_registers() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    etcd.put_raw(
        &format!("members/{}", machine_id(1)),
        br#"{"id":"an older format"}"#,
    )
    .await;

    let (_, members) = registry.cluster_members().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].member.machine.id, machine_id(1));
    assert_eq!(members[0].member.seen_members, usize::MAX);

    let (_one, _) = present(&registry, 1).await;
    let (_, members) = registry.cluster_members().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].member.machine, machine(1));
    assert_eq!(members[0].member.seen_members, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_registered_again_is_not_declared_dead() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_one, _) = present(&registry, 1).await;
    let (_two, lease) = present(&registry, 2).await;
    let leadership = registry
        .campaign(&machine_id(2), lease)
        .await
        .unwrap()
        .unwrap();
    registry
        .apply_placements(leadership, &[place(&machine_id(1), "web.service")])
        .await
        .unwrap();
    let (_, members) = registry.cluster_members().await.unwrap();
    let judged = members
        .iter()
        .find(|e| e.member.machine.id == machine_id(1))
        .expect("machine 1 is a member")
        .mod_revision;
    let before = etcd.key_space().await;

    let web = fleet_units::UnitName::parse("web.service").unwrap();
    let declared = registry
        .declare_dead(leadership, &machine_id(1), judged, &[web])
        .await
        .unwrap();

    assert!(!declared);
    assert_eq!(etcd.key_space().await.keys, before.keys);
}

/// A witness that no member answers, and that remembers whom it was last asked about: the
/// members its machine counts over, itself left out.
#[derive(Default)]
struct Unanswered {
    asked: std::sync::Mutex<Option<Vec<fleet_registry::MachineId>>>,
}

impl fleet_registry::Witness for Unanswered {
    fn since_renewal(
        &self,
        members: Vec<fleet_registry::Machine>,
        _timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, Vec<Duration>> {
        let mut ids: Vec<_> = members.into_iter().map(|m| m.id).collect();
        ids.sort();
        *self.asked.lock().unwrap() = Some(ids);
        Box::pin(async { Vec::new() })
    }

    fn renew_now(
        &self,
        _members: Vec<fleet_registry::Machine>,
        _timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, Vec<fleet_registry::Renewal>> {
        Box::pin(async { Vec::new() })
    }
}

/// Machine `n`'s member record: the revision it was created at, and the reading it is judged
/// over (`seen_revision`, `seen_members`: its `readings/` key's), as the engine reads them.
async fn member_record(registry: &Registry, n: u8) -> Option<(i64, (i64, usize))> {
    let snapshot = registry.engine_snapshot().await.unwrap();
    snapshot
        .members
        .iter()
        .find(|e| e.member.machine.id == machine_id(n))
        .map(|e| {
            let reading = snapshot.judged(e).reading;
            (
                e.create_revision,
                (reading.seen_revision, reading.seen_members),
            )
        })
}

/// Machine `n`'s member record as etcd stores it.
async fn stored_member_record(etcd: &Etcd, n: u8) -> fleet_testkit::StoredKey {
    etcd.key_space()
        .await
        .keys
        .into_iter()
        .find(|k| {
            k.key
                .ends_with(format!("members/{}", machine_id(n)).as_bytes())
        })
        .unwrap_or_else(|| panic!("machine {n}'s member record"))
}

/// Powers machine `n` off (drops its presence), waits for its lease to expire, and declares it
/// dead as machine 2's engine, leading on `lease_two`.
async fn lose_and_declare_dead(others: &Registry, presence: Presence, n: u8, lease_two: i64) {
    drop(presence);
    eventually(
        &format!("machine {n}'s lease expires"),
        EXPIRY_DEADLINE,
        || async {
            !others
                .machines()
                .await
                .unwrap()
                .iter()
                .any(|m| m.id == machine_id(n))
        },
    )
    .await;
    let leadership = others
        .campaign(&machine_id(2), lease_two)
        .await
        .unwrap()
        .unwrap();
    let snapshot = others.engine_snapshot().await.unwrap();
    let judged = snapshot
        .members
        .iter()
        .find(|e| e.member.machine.id == machine_id(n))
        .map(|e| snapshot.judged(e).revision)
        .unwrap();
    assert!(others
        .declare_dead(leadership, &machine_id(n), judged, &[])
        .await
        .unwrap());
}

/// A machine that asks the members follows them from one watch: it records and then counts
/// over each join and departure, and another member recording its own reading (in a key of
/// its own, which members do not follow) costs it no read and no write.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_follows_joins_and_departures_and_nothing_else() {
    let etcd = Etcd::start();
    let others = registry(&etcd).await;
    let (_two, lease_two) = present(&others, 2).await;
    // Its own client, so that what it reads and writes is counted apart.
    let follower = registry(&etcd).await;
    let witness = std::sync::Arc::new(Unanswered::default());
    let options = fleet_registry::PresenceOptions {
        witness: Some(witness.clone()),
        ..Default::default()
    };
    let _one = Presence::start_with(follower.clone(), machine(1), TTL, options)
        .await
        .unwrap();
    // Registering read the members (machine 2's record), once.
    assert_eq!(follower.keys_read(), 1);
    let requests = follower.kv_requests();
    let recorded = |n: u8, reading: (i64, usize)| {
        let others = others.clone();
        async move {
            eventually(
                &format!("machine 1 records {reading:?} after machine {n}"),
                EXPIRY_DEADLINE,
                || async { member_record(&others, 1).await.map(|(_, r)| r) == Some(reading) },
            )
            .await
        }
    };

    // A join: recorded with the revision of the join. A reading is two requests: etcd counts
    // the members at the view's revision (sending no record), then the reading is written.
    let (three, _) = present(&others, 3).await;
    let (joined, _) = member_record(&others, 3).await.unwrap();
    recorded(3, (joined, 3)).await;
    assert_eq!(follower.kv_requests(), requests + 2);

    // Readings of another member: no set of members changes.
    for seen in 1..=10 {
        let reading = fleet_registry::Member {
            machine: machine(2),
            seen_revision: seen,
            seen_members: seen as usize,
        };
        assert!(others.record_reading(&reading).await.unwrap());
    }
    // A join after them: the watch delivered them before it.
    let (_four, _) = present(&others, 4).await;
    let (joined, _) = member_record(&others, 4).await.unwrap();
    recorded(4, (joined, 4)).await;
    assert_eq!(
        follower.kv_requests(),
        requests + 4,
        "only the readings counted and written"
    );
    assert_eq!(follower.keys_read(), 1, "the members read again");

    // A departure: machine 3 lost and declared dead.
    lose_and_declare_dead(&others, three, 3, lease_two).await;
    eventually(
        "machine 1 records machine 3's departure",
        EXPIRY_DEADLINE,
        || async {
            matches!(member_record(&others, 1).await, Some((_, (seen, 3))) if seen > joined)
        },
    )
    .await;
    assert_eq!(follower.kv_requests(), requests + 6);
    assert_eq!(follower.keys_read(), 1);

    // What it counts over: the members it recorded, as its guard asks them when renewals fail.
    etcd.pause();
    eventually("machine 1 asks the members", EXPIRY_DEADLINE, || async {
        witness.asked.lock().unwrap().is_some()
    })
    .await;
    etcd.resume();
    assert_eq!(
        *witness.asked.lock().unwrap(),
        Some(vec![machine_id(2), machine_id(4)])
    );
}

/// A key under `members/` that names no machine as fleet writes it (written by hand, say) is
/// no member, even holding a copy of a member's record, and does not keep a machine that
/// follows the members from recording its readings: its view is checked against etcd's count
/// of the keys before each reading is recorded; such keys are learnt once, then followed.
#[tokio::test(flavor = "multi_thread")]
async fn keys_among_the_members_that_name_no_machine_are_no_members_and_stop_no_reading() {
    let etcd = Etcd::start();
    let others = registry(&etcd).await;
    let (_two, _) = present(&others, 2).await;
    let two = stored_member_record(&etcd, 2).await;
    etcd.put_raw("members/not-a-machine", b"{}").await;
    etcd.put_raw("members/backup", &two.value).await;
    // An id, but not as fleet writes it.
    etcd.put_raw("members/0000000000000000000000000000ABCD", &two.value)
        .await;
    let follower = registry(&etcd).await;
    let options = fleet_registry::PresenceOptions {
        witness: Some(std::sync::Arc::new(Unanswered::default())),
        ..Default::default()
    };
    let _one = Presence::start_with(follower.clone(), machine(1), TTL, options)
        .await
        .unwrap();
    let (_three, _) = present(&others, 3).await;
    let (joined, _) = member_record(&others, 3).await.unwrap();
    eventually(
        "machine 1 records machine 3's join",
        EXPIRY_DEADLINE,
        || async { member_record(&others, 1).await.map(|(_, r)| r) == Some((joined, 3)) },
    )
    .await;
    // Nobody counts machine 2 twice, nor the copies as members.
    let (_, members) = others.cluster_members().await.unwrap();
    let mut ids: Vec<_> = members
        .iter()
        .map(|m| m.member.machine.id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, [machine_id(1), machine_id(2), machine_id(3)]);

    // Keys that come and go after the follower learnt them are followed from its watch: its
    // next reading reads no key.
    let keys_read = follower.keys_read();
    etcd.delete_raw("members/backup").await;
    etcd.put_raw("members/another-stray", b"{}").await;
    etcd.put_raw("members/a-third-stray", b"{}").await;
    let (_four, _) = present(&others, 4).await;
    let (joined, _) = member_record(&others, 4).await.unwrap();
    eventually(
        "machine 1 records machine 4's join",
        EXPIRY_DEADLINE,
        || async { member_record(&others, 1).await.map(|(_, r)| r) == Some((joined, 4)) },
    )
    .await;
    assert_eq!(follower.keys_read(), keys_read, "keys read again");
}

/// A reading is written only over the machine's reading as it last knew it, and over the
/// member record its registration wrote, so that a write that failed without an answer cannot
/// land after a later one, or after the machine registered again, and leave etcd holding a
/// reading the machine no longer counts over.
#[tokio::test(flavor = "multi_thread")]
async fn a_reading_is_written_only_over_the_reading_last_known() {
    use fleet_registry::Recorded;
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_one, _) = present(&registry, 1).await;
    let (_, members) = registry.cluster_members().await.unwrap();
    let known = members[0].mod_revision;
    let reading = |seen: i64| fleet_registry::Member {
        machine: machine(1),
        seen_revision: seen,
        seen_members: 1,
    };
    // Registering wrote the member record and the first reading together.
    let snapshot = registry.engine_snapshot().await.unwrap();
    let registered = snapshot.readings.get(&machine_id(1)).expect("no reading");
    assert_eq!(registered.mod_revision, known);
    assert_eq!(registered.reading.seen_members, 1);
    assert_eq!(snapshot.members[0].member.seen_revision, 0);
    let Recorded::Written(first) = registry
        .record_reading_over(&reading(5), known, known)
        .await
        .unwrap()
    else {
        panic!("not written over the record as last known");
    };
    // In a key of its own: the member record, which every member follows, is not written.
    let (_, members) = registry.cluster_members().await.unwrap();
    assert_eq!(members[0].mod_revision, known);
    // A late write, over what the reading was before the first: refused, and told where it is.
    assert_eq!(
        registry
            .record_reading_over(&reading(3), known, known)
            .await
            .unwrap(),
        Recorded::Moved(first)
    );
    assert_eq!(member_record(&registry, 1).await.unwrap().1, (5, 1));
    // The reading deleted (by hand): told so, and written over nothing.
    let key = format!("readings/{}", machine_id(1));
    etcd.delete_raw(&key).await;
    assert_eq!(
        registry
            .record_reading_over(&reading(6), first, known)
            .await
            .unwrap(),
        Recorded::Moved(0)
    );
    let Recorded::Written(second) = registry
        .record_reading_over(&reading(6), 0, known)
        .await
        .unwrap()
    else {
        panic!("not written over no reading");
    };
    assert_eq!(member_record(&registry, 1).await.unwrap().1, (6, 1));
    // The member record written since (registering again; an older fleetd, downgraded, writes
    // its readings there): a late write over the reading it knew is refused.
    let record = stored_member_record(&etcd, 1).await.value;
    etcd.put_raw(&format!("members/{}", machine_id(1)), &record)
        .await;
    assert_eq!(
        registry
            .record_reading_over(&reading(7), second, known)
            .await
            .unwrap(),
        Recorded::Gone
    );
    assert_eq!(member_record(&registry, 1).await.unwrap().1, (0, 1));
    // No record (never registered, or declared dead): nothing written.
    let stranger = fleet_registry::Member {
        machine: machine(9),
        seen_revision: 7,
        seen_members: 1,
    };
    assert_eq!(
        registry
            .record_reading_over(&stranger, first, known)
            .await
            .unwrap(),
        Recorded::Gone
    );
    assert_eq!(member_record(&registry, 9).await, None);
}

/// Joins in quick succession (machines starting at about the same time) make one reading, or
/// a few, not one each: every reading is a write that every member's watch receives.
#[tokio::test(flavor = "multi_thread")]
async fn joins_in_quick_succession_make_fewer_readings_than_joins() {
    let etcd = Etcd::start();
    let others = registry(&etcd).await;
    let follower = registry(&etcd).await;
    let options = fleet_registry::PresenceOptions {
        witness: Some(std::sync::Arc::new(Unanswered::default())),
        ..Default::default()
    };
    let _one = Presence::start_with(follower.clone(), machine(1), TTL, options)
        .await
        .unwrap();
    let requests = follower.kv_requests();

    // One after another, each seen on its own by the watch.
    let mut joins = Vec::new();
    for n in 2..=7 {
        joins.push(present(&others, n).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(
        "machine 1 records all the joins",
        EXPIRY_DEADLINE,
        || async { matches!(member_record(&others, 1).await, Some((_, (_, 7)))) },
    )
    .await;
    // Two requests per reading: the members counted, then the reading written.
    let readings = (follower.kv_requests() - requests) / 2;
    assert!(readings < 6, "{readings} readings for 6 joins");
    drop(joins);
}

/// A machine declared dead that registers again at once leaves the same ids among the members,
/// but it is another registration: the engine counts only members created by a machine's
/// reading, so the reading must be recorded again.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_registered_again_at_once_makes_a_new_reading() {
    let etcd = Etcd::start();
    let others = registry(&etcd).await;
    let (_two, lease_two) = present(&others, 2).await;
    let (three, _) = present(&others, 3).await;
    let follower = registry(&etcd).await;
    let options = fleet_registry::PresenceOptions {
        witness: Some(std::sync::Arc::new(Unanswered::default())),
        ..Default::default()
    };
    let _one = Presence::start_with(follower.clone(), machine(1), TTL, options)
        .await
        .unwrap();
    let judged = member_record(&others, 3).await.unwrap();
    lose_and_declare_dead(&others, three, 3, lease_two).await;
    let (_three, _) = present(&others, 3).await;
    let (created, _) = member_record(&others, 3).await.unwrap();
    assert!(created > judged.0);
    eventually(
        "machine 1 records a reading with machine 3 registered again",
        EXPIRY_DEADLINE,
        || async {
            matches!(member_record(&others, 1).await, Some((_, (seen, 3))) if seen >= created)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_leader_leaves_the_leadership_free() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (leader, leader_lease) = present(&registry, 1).await;
    let (_other, other_lease) = present(&registry, 2).await;
    assert!(registry
        .campaign(&machine_id(1), leader_lease)
        .await
        .unwrap()
        .is_some());

    drop(leader);

    eventually("the leader key is gone", EXPIRY_DEADLINE, || async {
        registry.engine_leader().await.unwrap().is_none()
    })
    .await;
    assert!(registry
        .campaign(&machine_id(2), other_lease)
        .await
        .unwrap()
        .is_some());
}

/// Hundreds of states at once (a machine starting a batch) go in transactions within etcd's
/// limit of operations, all on the machine's lease, and go again in the same way.
#[tokio::test(flavor = "multi_thread")]
async fn many_states_are_published_and_removed_in_batches() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (a, lease_a) = present(&registry, 1).await;
    let (_b, lease_b) = present(&registry, 2).await;
    registry
        .publish_state(lease_b, &state(2, "other.service"))
        .await
        .unwrap();
    let states: Vec<_> = (0..300)
        .map(|n| state(1, &format!("u{n:03}.service")))
        .collect();
    registry.publish_states(lease_a, &states).await.unwrap();
    let mut published = registry.machine_states(&machine_id(1)).await.unwrap();
    published.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(published, states);

    let gone: Vec<_> = states[..200].iter().map(|s| s.name.clone()).collect();
    registry.remove_states(&machine_id(1), &gone).await.unwrap();
    assert_eq!(
        registry.machine_states(&machine_id(1)).await.unwrap().len(),
        100
    );
    assert_eq!(
        registry.machine_states(&machine_id(2)).await.unwrap(),
        [state(2, "other.service")],
        "another machine's states are left alone"
    );
    // On the machine's lease: they go with it.
    drop(a);
    eventually("the states go with the lease", EXPIRY_DEADLINE, || async {
        registry
            .machine_states(&machine_id(1))
            .await
            .unwrap()
            .is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_publishes_and_withdraws_unit_states() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, lease_a) = present(&registry, 1).await;
    let (_b, lease_b) = present(&registry, 2).await;

    registry
        .publish_state(lease_b, &state(2, "web.service"))
        .await
        .unwrap();
    registry
        .publish_state(lease_a, &state(1, "web.service"))
        .await
        .unwrap();
    registry
        .publish_state(lease_a, &state(1, "db.service"))
        .await
        .unwrap();
    assert_eq!(
        registry.unit_states().await.unwrap(),
        [
            state(1, "db.service"),
            state(1, "web.service"),
            state(2, "web.service"),
        ]
    );

    registry
        .remove_state(&machine_id(1), &name("web.service"))
        .await
        .unwrap();
    assert_eq!(
        registry.machine_states(&machine_id(1)).await.unwrap(),
        [state(1, "db.service")]
    );
    assert_eq!(
        registry.machine_states(&machine_id(2)).await.unwrap(),
        [state(2, "web.service")]
    );
}

// ---- leadership -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn one_engine_leads_and_a_deposed_one_cannot_write() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (a_presence, lease_a) = present(&registry, 1).await;
    let (_b, lease_b) = present(&registry, 2).await;
    let (_c, _) = present(&registry, 3).await;

    let a = registry
        .campaign(&machine_id(1), lease_a)
        .await
        .unwrap()
        .expect("A leads");
    assert_eq!(
        registry.campaign(&machine_id(2), lease_b).await.unwrap(),
        None
    );
    assert_eq!(registry.engine_leader().await.unwrap(), Some(machine_id(1)));
    // A leader that campaigns again (e.g. restarted on the same lease) keeps its leadership.
    assert_eq!(
        registry.campaign(&machine_id(1), lease_a).await.unwrap(),
        Some(a)
    );
    registry
        .apply_placements(a, &[place(&machine_id(3), "web.service")])
        .await
        .unwrap();

    // A's machine dies: the leader key goes with its lease.
    drop(a_presence);
    eventually("A's leadership expires", EXPIRY_DEADLINE, || async {
        registry.engine_leader().await.unwrap().is_none()
    })
    .await;
    let b = registry
        .campaign(&machine_id(2), lease_b)
        .await
        .unwrap()
        .expect("B leads once A is gone");
    assert_ne!(a, b);
    assert_eq!(registry.engine_leader().await.unwrap(), Some(machine_id(2)));

    let stale = registry
        .apply_placements(
            a,
            &[
                unplace(&machine_id(3), "web.service"),
                place(&machine_id(2), "db.service"),
            ],
        )
        .await;
    assert!(matches!(stale, Err(Error::NotLeader)), "{stale:?}");
    assert_eq!(
        registry.placements().await.unwrap(),
        [(machine_id(3), Placement::for_unit(&unit("web.service")))]
    );
    let snapshot = registry.engine_snapshot().await.unwrap();
    assert_eq!(snapshot.leader, Some(b));

    registry
        .apply_placements(b, &[unplace(&machine_id(3), "web.service")])
        .await
        .unwrap();
    assert!(registry.placements().await.unwrap().is_empty());
}

/// A plan made from a view that lacks a placement (the engine's own write, timed out and
/// applied after it planned again, say) cannot place the unit on a second machine: etcd
/// refuses the whole batch, and the unit stays where it is. A placement written again on the
/// machine that holds the unit goes through, and so does one on another machine in the same
/// call that removes it from the first (removals go first).
#[tokio::test(flavor = "multi_thread")]
async fn a_unit_placed_on_one_machine_is_not_placed_on_another() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, leadership) = leading(&registry, 1).await;
    let (_b, _) = present(&registry, 2).await;
    let web_on = |n: u8| (machine_id(n), Placement::for_unit(&unit("web.service")));
    registry.put_unit(&unit("web.service")).await.unwrap();
    registry
        .apply_placements(leadership, &[place(&machine_id(1), "web.service")])
        .await
        .unwrap();

    let refused = registry
        .apply_placements(
            leadership,
            &[
                place(&machine_id(2), "db.service"),
                place(&machine_id(2), "web.service"),
            ],
        )
        .await
        .unwrap_err();
    let on_1 = format!("web.service on {}", machine_id(1));
    assert!(
        matches!(&refused, Error::Conflict(m) if m.contains(&on_1)),
        "{refused:?}"
    );
    assert_eq!(registry.placements().await.unwrap(), [web_on(1)]);
    // Its index entry too: it was no stray.
    let view = registry.unit_view(&name("web.service")).await.unwrap();
    assert_eq!(view.and_then(|v| v.machine), Some(machine_id(1)));
    // Held by a machine whose id sorts after the one planned for, too.
    registry
        .apply_placements(leadership, &[place(&machine_id(2), "db.service")])
        .await
        .unwrap();
    let refused = registry
        .apply_placements(leadership, &[place(&machine_id(1), "db.service")])
        .await
        .unwrap_err();
    let on_2 = format!("db.service on {}", machine_id(2));
    assert!(
        matches!(&refused, Error::Conflict(m) if m.contains(&on_2)),
        "{refused:?}"
    );
    registry
        .apply_placements(leadership, &[unplace(&machine_id(2), "db.service")])
        .await
        .unwrap();
    assert_eq!(registry.placements().await.unwrap(), [web_on(1)]);

    let mut changed = Placement::for_unit(&unit("web.service"));
    changed.desired_state = JobState::Loaded;
    registry
        .apply_placements(
            leadership,
            &[PlacementOp::Put {
                machine: machine_id(1),
                placement: changed.clone(),
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        registry.placements().await.unwrap(),
        [(machine_id(1), changed)]
    );

    registry
        .apply_placements(
            leadership,
            &[
                place(&machine_id(2), "web.service"),
                unplace(&machine_id(1), "web.service"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(registry.placements().await.unwrap(), [web_on(2)]);
}

/// An index entry without its placement (left by hand), or a key among a unit's entries that
/// names no machine, refuses a placement of the unit once, and is removed then, so that the
/// engine's next plan goes through.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_entry_without_its_placement_is_removed_when_it_refuses_one() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, leadership) = leading(&registry, 1).await;
    // One naming a machine, and one naming none.
    let orphans = [
        format!("placed/web.service/{}", machine_id(3)),
        "placed/web.service/not-a-machine".to_string(),
    ];
    for orphan in &orphans {
        etcd.put_raw(orphan, b"").await;
    }

    let refused = registry
        .apply_placements(leadership, &[place(&machine_id(1), "web.service")])
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Conflict(_)), "{refused:?}");
    let keys = etcd.key_space().await.keys;
    for orphan in &orphans {
        let orphan = format!("{}{orphan}", etcd.prefix);
        assert!(
            !keys.iter().any(|k| k.key == orphan.as_bytes()),
            "{orphan} stays"
        );
    }
    registry
        .apply_placements(leadership, &[place(&machine_id(1), "web.service")])
        .await
        .unwrap();
    assert_eq!(
        registry.placements().await.unwrap(),
        [(machine_id(1), Placement::for_unit(&unit("web.service")))]
    );
}

/// A machine writes each unit state over the revision it knows the key at (0: none): a write
/// that timed out and is applied after a later one (etcd may apply it late) is refused
/// rather than putting the older state back, and so is a removal at an old revision.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_written_over_a_revision_that_changed_is_refused() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_presence, lease) = present(&registry, 1).await;
    let mut loaded = state(1, "web.service");
    loaded.job_state = JobState::Loaded;
    let launched = state(1, "web.service");

    let first = registry
        .publish_states_over(lease, &[(loaded.clone(), 0)])
        .await
        .unwrap();
    let second = registry
        .publish_states_over(lease, &[(launched.clone(), first[0])])
        .await
        .unwrap();
    assert!(second[0] > first[0], "{first:?} {second:?}");
    for over in [0, first[0]] {
        let late = registry
            .publish_states_over(lease, &[(loaded.clone(), over)])
            .await
            .unwrap_err();
        assert!(matches!(late, Error::Conflict(_)), "{late:?}");
    }
    assert_eq!(
        registry.machine_states(&machine_id(1)).await.unwrap(),
        std::slice::from_ref(&launched)
    );
    assert_eq!(
        registry.state_revisions(&machine_id(1)).await.unwrap(),
        [(name("web.service"), second[0])].into()
    );

    let web = name("web.service");
    let stale = registry
        .remove_states_at(&machine_id(1), &[(web.clone(), first[0])])
        .await
        .unwrap_err();
    assert!(matches!(stale, Error::Conflict(_)), "{stale:?}");
    assert_eq!(
        registry.machine_states(&machine_id(1)).await.unwrap(),
        [launched]
    );
    registry
        .remove_states_at(&machine_id(1), &[(web, second[0])])
        .await
        .unwrap();
    assert!(registry
        .machine_states(&machine_id(1))
        .await
        .unwrap()
        .is_empty());
}

/// The engine must tell "etcd refused this" (re-plan) from "etcd is unreachable" (wait).
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_by_etcd_is_not_taken_for_unavailability() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (gone, gone_lease) = present(&registry, 1).await;
    drop(gone);
    eventually("machine 1 is gone", EXPIRY_DEADLINE, || async {
        registry.machines().await.unwrap().is_empty()
    })
    .await;

    let error = registry
        .publish_state(gone_lease, &state(1, "web.service"))
        .await
        .unwrap_err();

    assert!(!error.is_unavailable(), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_placements_are_written_in_several_transactions() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, leadership) = leading(&registry, 1).await;
    let units: Vec<String> = (0..300).map(|i| format!("u{i:03}.service")).collect();

    let puts: Vec<_> = units.iter().map(|u| place(&machine_id(1), u)).collect();
    // Each transaction raises etcd's revision by one, and etcd refuses one of more than 128
    // operations (its default --max-txn-ops).
    let before = etcd.key_space().await.revision;
    registry.apply_placements(leadership, &puts).await.unwrap();
    let transactions = etcd.key_space().await.revision - before;
    assert!(
        transactions > 1,
        "300 placements written in {transactions} transaction(s)"
    );
    let snapshot = registry.agent_snapshot(&machine_id(1)).await.unwrap();
    let placed: Vec<String> = snapshot
        .placements
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    assert_eq!(placed, units);

    let deletes: Vec<_> = units.iter().map(|u| unplace(&machine_id(1), u)).collect();
    registry
        .apply_placements(leadership, &deletes)
        .await
        .unwrap();
    assert!(registry.placements().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn placements_of_large_units_are_batched_within_etcds_request_limit() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_machine, leadership) = leading(&registry, 1).await;
    // Together far more than one request may carry (each fits on its own).
    let ops: Vec<PlacementOp> = (0..4)
        .map(|i| PlacementOp::Put {
            machine: machine_id(1),
            placement: Placement::for_unit(&bulky(&format!("u{i}.service"), 600 * 1024, false)),
        })
        .collect();
    registry.apply_placements(leadership, &ops).await.unwrap();
    assert_eq!(registry.placements().await.unwrap().len(), 4);
}

// ---- snapshots ------------------------------------------------------------------------------

/// A whole-prefix read grows with the cluster: the engine's snapshot of 10,000 placed units is
/// past 4 MiB, gRPC's default limit of one response.
#[tokio::test(flavor = "multi_thread")]
async fn reads_of_more_than_four_mebibytes_are_received() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    // etcd takes requests of up to 1.5 MiB: five units of 1 MB each are 5 MB to read back.
    for i in 0..5 {
        let mut big = unit(&format!("big{i}.service"));
        big.options.push(fleet_units::UnitOption::new(
            "Unit",
            "Description",
            "x".repeat(1_000_000),
        ));
        registry.put_unit(&big).await.unwrap();
    }
    assert_eq!(registry.units().await.unwrap().len(), 5);
    assert_eq!(registry.engine_snapshot().await.unwrap().units.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_sees_units_machines_and_placements_together() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, lease_a) = present(&registry, 1).await;
    let (_b, lease_b) = present(&registry, 2).await;
    let leadership = registry
        .campaign(&machine_id(1), lease_a)
        .await
        .unwrap()
        .unwrap();
    registry.put_unit(&unit("web.service")).await.unwrap();
    registry.put_unit(&unit("db.service")).await.unwrap();
    registry
        .apply_placements(
            leadership,
            &[
                place(&machine_id(1), "web.service"),
                place(&machine_id(2), "db.service"),
            ],
        )
        .await
        .unwrap();

    let snapshot = registry.engine_snapshot().await.unwrap();

    assert!(snapshot.revision > 0);
    assert_eq!(snapshot.leader, Some(leadership));
    assert_eq!(names(&snapshot.units), ["db.service", "web.service"]);
    let machines: Vec<_> = snapshot
        .machines
        .iter()
        .map(|m| (m.machine.clone(), m.lease))
        .collect();
    assert_eq!(machines, [(machine(1), lease_a), (machine(2), lease_b)]);
    assert_eq!(
        snapshot.placements,
        [
            (machine_id(1), Placement::for_unit(&unit("web.service"))),
            (machine_id(2), Placement::for_unit(&unit("db.service"))),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_sees_only_its_own_placements() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, lease_a) = present(&registry, 1).await;
    let (_b, _) = present(&registry, 2).await;
    let leadership = registry
        .campaign(&machine_id(1), lease_a)
        .await
        .unwrap()
        .unwrap();
    registry
        .apply_placements(
            leadership,
            &[
                place(&machine_id(1), "web.service"),
                place(&machine_id(2), "db.service"),
                place(&machine_id(2), "cache.service"),
            ],
        )
        .await
        .unwrap();

    let a = registry.agent_snapshot(&machine_id(1)).await.unwrap();
    let b = registry.agent_snapshot(&machine_id(2)).await.unwrap();
    let c = registry.agent_snapshot(&machine_id(3)).await.unwrap();

    assert_eq!(a.placements, [Placement::for_unit(&unit("web.service"))]);
    assert_eq!(
        b.placements,
        [
            Placement::for_unit(&unit("cache.service")),
            Placement::for_unit(&unit("db.service")),
        ]
    );
    assert!(c.placements.is_empty());
    assert!(a.revision > 0 && b.revision >= a.revision);
}

// ---- watches --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_wakes_for_its_own_placements_and_not_for_others() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, lease_a) = present(&registry, 1).await;
    let (_b, _) = present(&registry, 2).await;
    let leadership = registry
        .campaign(&machine_id(1), lease_a)
        .await
        .unwrap()
        .unwrap();
    let seen = registry.agent_snapshot(&machine_id(1)).await.unwrap();
    let mut changes = registry
        .watch(
            &registry.agent_watch_prefixes(&machine_id(1)),
            seen.revision + 1,
        )
        .await
        .unwrap();

    registry
        .apply_placements(leadership, &[place(&machine_id(2), "db.service")])
        .await
        .unwrap();
    registry.put_unit(&unit("web.service")).await.unwrap();
    assert!(
        tokio::time::timeout(QUIET, changes.next()).await.is_err(),
        "woken by another machine's placement or a non-global unit"
    );

    registry
        .apply_placements(leadership, &[place(&machine_id(1), "web.service")])
        .await
        .unwrap();
    let revision = tokio::time::timeout(EVENT_DEADLINE, changes.next())
        .await
        .expect("not woken by its own placement")
        .unwrap();
    assert!(revision > seen.revision);

    registry
        .put_unit(&global_unit("log.service"))
        .await
        .unwrap();
    tokio::time::timeout(EVENT_DEADLINE, changes.next())
        .await
        .expect("not woken by a global unit")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_between_snapshot_and_watch_is_not_missed() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let seen = registry.engine_snapshot().await.unwrap();

    registry.put_unit(&unit("web.service")).await.unwrap();
    let mut changes = registry
        .watch(&registry.engine_watch_prefixes(), seen.revision + 1)
        .await
        .unwrap();

    let revision = tokio::time::timeout(EVENT_DEADLINE, changes.next())
        .await
        .expect("the change made before the watch opened was missed")
        .unwrap();
    assert!(revision > seen.revision);
    changes.drain().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_wakes_when_a_machine_joins_and_a_follower_when_the_leader_is_gone() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (a, lease_a) = present(&registry, 1).await;
    registry
        .campaign(&machine_id(1), lease_a)
        .await
        .unwrap()
        .expect("A leads");
    let seen = registry.engine_snapshot().await.unwrap();
    let mut engine = registry
        .watch(&registry.engine_watch_prefixes(), seen.revision + 1)
        .await
        .unwrap();
    let mut follower = registry
        .watch(&registry.leader_watch_prefixes(), seen.revision + 1)
        .await
        .unwrap();

    let (_b, _) = present(&registry, 2).await;
    tokio::time::timeout(EVENT_DEADLINE, engine.next())
        .await
        .expect("the engine was not woken by a new machine")
        .unwrap();
    assert!(
        tokio::time::timeout(QUIET, follower.next()).await.is_err(),
        "a follower was woken by a new machine"
    );

    // The leader's machine dies: the leader key goes with its lease.
    drop(a);
    tokio::time::timeout(EXPIRY_DEADLINE, follower.next())
        .await
        .expect("the follower was not woken when the leader was gone")
        .unwrap();
}

// ---- etcd unreachable or gone ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_etcd_is_reported_instead_of_hanging() {
    let timeout = Duration::from_millis(500);
    let config = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{}", closed_port())],
        prefix: "/fleet-test-unreachable/".to_string(),
        request_timeout: timeout,
        ..EtcdConfig::default()
    };
    let bound = timeout * 2;

    let registry = tokio::time::timeout(bound, Registry::connect(&config))
        .await
        .expect("connect hangs")
        .expect("connect is lazy and does not fail");

    let error = tokio::time::timeout(bound, registry.units())
        .await
        .expect("a request hangs")
        .unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    let error = tokio::time::timeout(bound, registry.put_unit(&unit("web.service")))
        .await
        .expect("a write hangs")
        .unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    let error = tokio::time::timeout(bound, registry.engine_snapshot())
        .await
        .expect("a snapshot hangs")
        .unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    let error = tokio::time::timeout(bound, registry.watch(&registry.engine_watch_prefixes(), 1))
        .await
        .expect("opening a watch hangs")
        .err()
        .expect("a watch opened on an unreachable etcd");
    assert!(error.is_unavailable(), "{error:?}");
}

/// Of several endpoints, one that refuses connections (a member that is down) costs no request:
/// nothing was sent, so the request goes on to the next endpoint, which is used from then on,
/// for requests and watches alike.
#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_does_not_answer_is_left_for_the_next() {
    let etcd = Etcd::start();
    let config = EtcdConfig {
        endpoints: vec![
            format!("http://127.0.0.1:{}", closed_port()),
            etcd.endpoint.clone(),
        ],
        prefix: etcd.prefix.clone(),
        request_timeout: Duration::from_millis(500),
        ..EtcdConfig::default()
    };
    let registry = Registry::connect(&config).await.expect("connect is lazy");
    registry
        .units()
        .await
        .expect("the first request goes to the closed endpoint first, then to the live one");
    for _ in 0..20 {
        registry
            .put_unit(&unit("web.service"))
            .await
            .expect("every later request goes to the live endpoint");
        assert_eq!(registry.units().await.expect("units").len(), 1);
    }
    let seen = registry.engine_snapshot().await.expect("snapshot");
    registry
        .watch(&registry.engine_watch_prefixes(), seen.revision + 1)
        .await
        .expect("a watch opens on the live endpoint");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_ends_with_an_unavailable_error_when_etcd_goes_away() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let seen = registry.engine_snapshot().await.unwrap();
    let mut changes = registry
        .watch(&registry.engine_watch_prefixes(), seen.revision + 1)
        .await
        .unwrap();

    drop(etcd);

    let error = tokio::time::timeout(EVENT_DEADLINE, changes.next())
        .await
        .expect("a watch on a dead etcd hangs")
        .unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_cut_off_from_etcd_past_its_ttl_fences_itself() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (presence, _) = present(&registry, 1).await;
    let mut status = presence.subscribe();

    drop(etcd);

    tokio::time::timeout(
        EXPIRY_DEADLINE,
        status.wait_for(|s| *s == PresenceStatus::Fenced),
    )
    .await
    .expect("still not fenced long after the lease expired")
    .unwrap();
}

/// Answers for the other members like a cluster where etcd is out of reach of a majority: the
/// first other member has had no renewal for long, the rest renew. Two rounds in every three,
/// that first member is slow: its answer misses the round's deadline.
struct SlowMajority {
    rounds: std::sync::atomic::AtomicUsize,
}

impl fleet_registry::Witness for SlowMajority {
    fn since_renewal(
        &self,
        members: Vec<fleet_registry::Machine>,
        timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, Vec<Duration>> {
        let round = self
            .rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let connected = vec![Duration::ZERO; members.len().saturating_sub(1)];
            if !round.is_multiple_of(3) {
                tokio::time::sleep(timeout).await;
                return connected;
            }
            let mut answers = vec![Duration::from_secs(600)];
            answers.extend(connected);
            answers
        })
    }

    fn renew_now(
        &self,
        _members: Vec<fleet_registry::Machine>,
        _timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, Vec<fleet_registry::Renewal>> {
        Box::pin(async { Vec::new() })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_answers_do_not_let_a_majoritys_confirmation_lapse() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    // Long enough for a majority to confirm before a lease can expire (see fleet_quorum).
    let ttl = Duration::from_secs(6);
    let mut others = Vec::new();
    for n in [2, 3] {
        others.push(
            Presence::start(registry.clone(), machine(n), ttl, None)
                .await
                .unwrap(),
        );
    }
    let witness = std::sync::Arc::new(SlowMajority {
        rounds: std::sync::atomic::AtomicUsize::new(0),
    });
    let options = fleet_registry::PresenceOptions {
        witness: Some(witness.clone()),
        ..Default::default()
    };
    let presence = Presence::start_with(registry.clone(), machine(1), ttl, options)
        .await
        .unwrap();
    let mut status = presence.subscribe();

    drop(etcd);

    // Well past the lease's expiry, confirmed by one round in three all along.
    let fenced =
        tokio::time::timeout(3 * ttl, status.wait_for(|s| *s == PresenceStatus::Fenced)).await;
    let rounds = witness.rounds.load(std::sync::atomic::Ordering::Relaxed);
    assert!(fenced.is_err(), "fenced after {rounds} rounds");
    // Rounds every quarter of a second from a few seconds before the lease could expire.
    assert!(rounds >= 40, "only {rounds} rounds were asked");
}

// ---- helpers --------------------------------------------------------------------------------

// ---- peers ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_address_is_published_and_survives_metadata_changes() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let record = fleet_registry::Machine {
        peer_address: Some("10.0.0.1:49154".into()),
        ..machine(1)
    };
    let _presence = Presence::start(registry.clone(), record, TTL, None)
        .await
        .unwrap();
    let _other = present(&registry, 2).await;
    let records = registry.machines().await.unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].peer_address.as_deref(), Some("10.0.0.1:49154"));
    assert_eq!(records[1].peer_address, None);

    let changes = [("role".to_string(), Some("web".to_string()))].into();
    assert!(registry
        .patch_machine_metadata(&machine_id(1), &changes)
        .await
        .unwrap());
    let records = registry.machines().await.unwrap();
    assert_eq!(records[0].peer_address.as_deref(), Some("10.0.0.1:49154"));
    assert_eq!(
        records[0].metadata.get("role").map(String::as_str),
        Some("web")
    );
}

/// `unit_view` finds a unit's machine and state through the `placed/` index, which follows the
/// placement as it is written, moved and removed.
#[tokio::test(flavor = "multi_thread")]
async fn one_unit_is_read_through_the_placement_index() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_a, lease_a) = present(&registry, 1).await;
    let (_b, _) = present(&registry, 2).await;
    let leader = registry
        .campaign(&machine_id(1), lease_a)
        .await
        .unwrap()
        .expect("leads");
    registry.put_unit(&unit("web.service")).await.unwrap();
    assert!(registry
        .unit_view(&name("nope.service"))
        .await
        .unwrap()
        .is_none());

    let view = registry
        .unit_view(&name("web.service"))
        .await
        .unwrap()
        .expect("unit");
    assert_eq!((view.machine, view.state), (None, None));

    registry
        .apply_placements(leader, &[place(&machine_id(1), "web.service")])
        .await
        .unwrap();
    registry
        .publish_state(lease_a, &state(1, "web.service"))
        .await
        .unwrap();
    let view = registry
        .unit_view(&name("web.service"))
        .await
        .unwrap()
        .expect("unit");
    assert_eq!(view.machine, Some(machine_id(1)));
    assert_eq!(view.state, Some(state(1, "web.service")));

    // Moved: removed from one machine and put on another in one batch.
    registry
        .apply_placements(
            leader,
            &[
                unplace(&machine_id(1), "web.service"),
                place(&machine_id(2), "web.service"),
            ],
        )
        .await
        .unwrap();
    let view = registry
        .unit_view(&name("web.service"))
        .await
        .unwrap()
        .expect("unit");
    assert_eq!(view.machine, Some(machine_id(2)));
    assert_eq!(view.state, None, "machine 2 has reported nothing yet");

    registry
        .apply_placements(leader, &[unplace(&machine_id(2), "web.service")])
        .await
        .unwrap();
    let view = registry
        .unit_view(&name("web.service"))
        .await
        .unwrap()
        .expect("unit");
    assert_eq!(view.machine, None);
}

/// etcd out of space refuses writes, not lease renewals: a machine stays alive on the same
/// lease through it (so its units keep running), its states cannot be published meanwhile,
/// and the refusal says what it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_machine_keeps_its_lease_while_etcd_is_out_of_space() {
    let etcd = Etcd::start_with(&["--quota-backend-bytes=1048576"]);
    let registry = registry(&etcd).await;
    let presence = Presence::start(registry.clone(), machine(1), TTL, None)
        .await
        .expect("register");
    let PresenceStatus::Alive { lease } = presence.status() else {
        panic!("fenced at once");
    };
    // Fill etcd past its quota with etcd's own client, under this test's prefix.
    let mut client = etcd_client::Client::connect([&etcd.endpoint], None)
        .await
        .expect("connect");
    let filler = "x".repeat(100_000);
    let mut refused = false;
    for i in 0..100 {
        if client
            .put(format!("{}filler/{i}", etcd.prefix), filler.as_str(), None)
            .await
            .is_err()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "a 1 MiB quota took 10 MB");
    let error = registry
        .put_unit(&unit("web.service"))
        .await
        .expect_err("a write to a full etcd");
    assert!(
        matches!(error, fleet_registry::Error::OutOfSpace { .. }),
        "{error:?}"
    );
    assert!(!error.is_unavailable(), "a full etcd answers: {error:?}");

    // Three TTLs later the machine is still alive on the same lease.
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(presence.status(), PresenceStatus::Alive { lease });
    let machines = registry.machines().await.expect("reads still work");
    assert_eq!(machines.len(), 1, "{machines:?}");
}
