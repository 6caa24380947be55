//! `fleetctl history` and `fleetctl rollback` against the real API over a real etcd with the
//! real engine, and a simulated machine reporting each unit in the state and with the hash
//! asked for (see `support`).

mod support;

use fleet_client::schema;
use fleet_units::UnitFile;
use support::*;

fn hash_of(contents: &str) -> String {
    UnitFile::parse(contents)
        .expect("a unit file")
        .hash()
        .to_string()
}

fn args(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// The unit `name` with `exec` as its command.
fn exec_unit(name: &str, exec: &str) -> schema::Unit {
    schema::Unit {
        name: name.into(),
        options: UnitFile::parse(&format!("[Service]\nExecStart={exec}\n"))
            .expect("a unit file")
            .into_options(),
        desired_state: "inactive".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_unit_is_rolled_back_and_runs_the_old_content() {
    let fleet = Fleet::start().await;
    let (v1, v2) = (service("first"), service("second"));
    let (h1, h2) = (hash_of(&v1), hash_of(&v2));
    let path = fleet.unit_file("web.service", &v1);
    let run = fleet.fleetctl(&args(&["start", &path])).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    let path = fleet.unit_file("web.service", &v2);
    let run = fleet.fleetctl(&args(&["start", "--replace", &path])).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);

    let run = fleet.fleetctl(&args(&["history", "web.service"])).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let rows: Vec<Vec<&str>> = lines(&run.out)
        .into_iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["HASH", "SINCE", "CURRENT"]);
    assert_eq!(rows.len(), 3, "{}", run.out);
    assert_eq!((rows[1][0], rows[1][2]), (&h2[..7], "true"));
    assert_eq!((rows[2][0], rows[2][2]), (&h1[..7], "false"));

    // Back to the previous version: the machine runs it when rollback returns.
    let run = fleet.fleetctl(&args(&["rollback", "web"])).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    assert_eq!(
        lines(&run.out),
        [
            format!(
                "Unit web.service rolled back from {} to {}",
                &h2[..7],
                &h1[..7]
            ),
            "Unit web.service launched on 00000000.../10.0.0.1".to_string(),
        ]
    );
    let states = fleet
        .client()
        .unit_states(&["web.service"], &[])
        .await
        .expect("states");
    assert_eq!(states[0].hash, h1);
    let unit = fleet.client().unit("web.service").await.expect("unit");
    assert_eq!(unit.map(|u| u.desired_state).as_deref(), Some("launched"));

    // To a version by a prefix of its hash; to the current one, nothing to do.
    let run = fleet
        .fleetctl(&args(&["rollback", "--no-block", "web.service", &h2[..5]]))
        .await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    assert_eq!(
        lines(&run.out),
        [
            format!(
                "Unit web.service rolled back from {} to {}",
                &h1[..7],
                &h2[..7]
            ),
            "Triggered unit web.service start".to_string(),
        ]
    );
    let run = fleet
        .fleetctl(&args(&["rollback", "web.service", &h2]))
        .await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    assert_eq!(
        run.out,
        format!("Unit web.service is already at version {}\n", &h2[..7])
    );
    // Each rollback that changed something is an event of the unit.
    let run = fleet
        .fleetctl(&args(&[
            "events",
            "--no-legend",
            "--full",
            "--fields",
            "kind,unit,message",
            "web.service",
        ]))
        .await;
    let reverted: Vec<&str> = lines(&run.out)
        .into_iter()
        .filter(|l| l.starts_with("reverted\t"))
        .collect();
    assert_eq!(
        reverted,
        [
            format!("reverted\tweb.service\trolled back by hand from {h2} to {h1}"),
            format!("reverted\tweb.service\trolled back by hand from {h1} to {h2}"),
        ],
        "{}",
        run.out
    );

    // Every version, whole, as scripts read them.
    let run = fleet
        .fleetctl(&args(&[
            "history",
            "--full",
            "--no-legend",
            "--fields",
            "hash,current",
            "web.service",
        ]))
        .await;
    assert_eq!(
        run.out,
        format!("{h2}\ttrue\n{h1}\tfalse\n{h2}\tfalse\n{h1}\tfalse\n")
    );
    let run = fleet
        .fleetctl(&args(&["history", "-o", "json", "web.service"]))
        .await;
    let versions: Vec<schema::UnitVersion> =
        serde_json::from_str(&run.out).expect("history as JSON");
    assert_eq!(versions.len(), 4);
    assert!(versions[0].current && !versions[0].since.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let fleet = Fleet::start().await;
    let client = fleet.client();
    client
        .create_unit(&exec_unit("single.service", "/bin/a"))
        .await
        .expect("create");
    // Versions enough for two hashes to share a first digit.
    let execs: Vec<String> = (0..fleet_registry::HISTORY_DEPTH)
        .map(|i| format!("/bin/{i}"))
        .collect();
    for exec in &execs {
        client
            .create_unit(&exec_unit("web.service", exec))
            .await
            .expect("replace");
    }
    let hashes: Vec<String> = client
        .unit_history("web.service")
        .await
        .expect("history")
        .versions
        .into_iter()
        .map(|v| v.hash)
        .collect();
    let shared = hashes
        .iter()
        .map(|h| h[..1].to_string())
        .find(|d| hashes.iter().filter(|h| h.starts_with(d.as_str())).count() > 1)
        .expect("ten hashes share a first digit");
    let snapshot = || async {
        (
            client.units().await.expect("units"),
            client.unit_history("web.service").await.expect("history"),
            client
                .unit_history("single.service")
                .await
                .expect("history"),
        )
    };
    let before = snapshot().await;

    for (command, error) in [
        (
            vec!["rollback", "none.service"],
            "Unit none.service does not exist.".to_string(),
        ),
        (
            vec!["history", "none.service"],
            "Unit none.service does not exist.".to_string(),
        ),
        (
            vec!["rollback", "web.service", "0000000"],
            "Error rolling back unit web.service: unit web.service has no version 0000000"
                .to_string(),
        ),
        (
            vec!["rollback", "web.service", &shared],
            format!("Error rolling back unit web.service: {shared} is ambiguous: unit web.service has versions "),
        ),
        (
            vec!["rollback", "web.service", "HEAD~1"],
            "Error rolling back unit web.service: invalid unit hash \"HEAD~1\"".to_string(),
        ),
        (
            vec!["rollback", "single.service"],
            "Error rolling back unit single.service: unit single.service has no previous version"
                .to_string(),
        ),
        (
            vec!["rollback", "bad name.service"],
            "invalid unit name \"bad name.service\"".to_string(),
        ),
        (
            vec!["history", "@x.service"],
            "invalid unit name".to_string(),
        ),
    ] {
        let run = fleet.fleetctl(&args(&command)).await;
        assert_eq!(run.code, Some(1), "{command:?}: {}{}", run.out, run.err);
        assert!(run.err.starts_with(&error), "{command:?}: {}", run.err);
        assert_eq!(run.out, "", "{command:?}");
    }
    assert_eq!(snapshot().await, before, "nothing was changed");
}
