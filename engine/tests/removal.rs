//! Removing a member by hand (`Registry::remove_member`) against a real etcd: a cluster of two
//! machines that lost one keeps its units held (no majority), until the lost one is removed;
//! then the engine places them on the machine left. A live member is not removed, nor one
//! whose member record changed since it was read.

mod support;

use std::time::Duration;

use fleet_registry::{EngineSnapshot, Removal};
use fleet_testkit::Etcd;
use support::{all_placed, connect, eventually, id, presences, spawn_engine, write_units};

fn placed_on(snapshot: &EngineSnapshot, machine: u8) -> usize {
    snapshot
        .placements
        .iter()
        .filter(|(m, _)| *m == id(machine))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_machine_removed_by_hand_releases_its_units_to_the_others() {
    let etcd = Etcd::start();
    let registry = connect(&etcd).await;
    let mut presences = presences(&registry, 2, Duration::from_secs(2)).await;
    write_units(&registry, 6).await;
    let engine = spawn_engine(
        registry.clone(),
        &presences[0],
        fleet_engine::EngineConfig::default(),
    );
    all_placed(&registry, 6).await;
    let held = placed_on(&registry.engine_snapshot().await.expect("read"), 2);
    assert!(held > 0, "nothing placed on machine 2");

    // A live member is not removed, whatever revision is given.
    let live = registry
        .member_status(&id(1))
        .await
        .expect("read")
        .expect("machine 1 is a member");
    assert!(live.live, "machine 1 holds its lease");
    assert_eq!(
        registry
            .remove_member(&id(1), live.revision)
            .await
            .expect("remove"),
        Removal::Changed,
        "a live machine was removed"
    );

    // Machine 2 powered off: machine 1 alone is no majority of the two, so its units stay
    // held.
    presences.truncate(1);
    eventually("machine 2's lease gone", || async {
        registry.machines().await.expect("read").len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let snapshot = registry.engine_snapshot().await.expect("read");
    assert_eq!(snapshot.members.len(), 2, "machine 2 was declared dead");
    assert_eq!(placed_on(&snapshot, 2), held, "held units were moved");

    let lost = registry
        .member_status(&id(2))
        .await
        .expect("read")
        .expect("machine 2 is a member");
    assert!(!lost.live, "machine 2 still holds its lease");
    let member = lost
        .member
        .clone()
        .expect("machine 2's member record decodes");
    assert_eq!(member.machine.id, id(2));

    // Its member record written again since it was read (as registering does): not removed.
    let record = serde_json::to_vec(&member).expect("encode");
    etcd.put_raw(&format!("members/{}", id(2)), &record).await;
    assert_eq!(
        registry
            .remove_member(&id(2), lost.revision)
            .await
            .expect("remove"),
        Removal::Changed,
        "a member record written since it was read was removed"
    );
    assert_eq!(
        placed_on(&registry.engine_snapshot().await.expect("read"), 2),
        held,
        "placements removed of a member record written since it was read"
    );
    let lost = registry
        .member_status(&id(2))
        .await
        .expect("read")
        .expect("machine 2 is still a member");
    assert_eq!(
        registry
            .remove_member(&id(2), lost.revision)
            .await
            .expect("remove"),
        Removal::Removed { units: held }
    );
    // Its placements went with their index entries, and its member record and reading.
    let gone = format!("/{}", id(2));
    let left: Vec<String> = etcd
        .key_space()
        .await
        .keys
        .iter()
        .map(|k| String::from_utf8_lossy(&k.key).into_owned())
        .filter(|k| k.contains(&gone))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "keys of machine 2 left");

    // Its units go to machine 1, and it is no member any more.
    eventually("machine 2's units placed on machine 1", || async {
        let snapshot = registry.engine_snapshot().await.expect("read");
        placed_on(&snapshot, 1) == 6 && placed_on(&snapshot, 2) == 0
    })
    .await;
    let snapshot = registry.engine_snapshot().await.expect("read");
    assert_eq!(snapshot.members.len(), 1, "machine 2 is still a member");
    assert!(
        registry
            .member_status(&id(2))
            .await
            .expect("read")
            .is_none(),
        "machine 2 is still a member"
    );
    engine.abort();
}
