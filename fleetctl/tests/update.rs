//! `fleetctl update` and the commands that follow and steer rolling updates, against the real
//! API over a real etcd with the real engine driving the update, and a simulated machine
//! (see `support`: a unit whose command is `/bin/false` fails there).

mod support;

use fleet_units::UnitFile;
use support::*;

fn args(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn web(exec: &str) -> String {
    format!("[Unit]\nDescription=web %i\n\n[Service]\nExecStart={exec}\n")
}

fn hash_of(contents: &str) -> String {
    UnitFile::parse(contents).unwrap().hash().to_string()
}

/// Starts web@1..=4 from a template with `exec`; returns the template's path.
async fn four_instances(fleet: &Fleet, exec: &str) -> String {
    let template = fleet.unit_file("web@.service", &web(exec));
    let mut start = args(&["start"]);
    for i in 1..=4 {
        start.push(
            std::path::Path::new(&template)
                .with_file_name(format!("web@{i}.service"))
                .to_string_lossy()
                .into_owned(),
        );
    }
    let run = fleet.fleetctl(&start).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    template
}

async fn hashes(fleet: &Fleet) -> Vec<String> {
    let mut units = fleet.client().units().await.expect("units");
    units.sort_by(|a, b| a.name.cmp(&b.name));
    units
        .into_iter()
        .map(|u| UnitFile::from_options(u.options).hash().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_s_instances_are_updated_two_at_a_time() {
    let fleet = Fleet::start().await;
    four_instances(&fleet, "/bin/sleep 1000").await;
    let new = fleet.unit_file("web@.service", &web("/bin/sleep 2000"));
    let run = fleet
        .fleetctl(&args(&[
            "update",
            "--max-parallel",
            "2",
            // Longer than fleetctl's half second between looks: every step is seen.
            "--min-healthy",
            "1s",
            &new,
        ]))
        .await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    let out = lines(&run.out);
    assert!(
        out[0].starts_with("Update ") && out[0].ends_with("of 4 units, 2 at a time, started"),
        "{}",
        run.out
    );
    assert!(out.last().unwrap().ends_with(" done"), "{}", run.out);
    for i in 1..=4 {
        assert!(
            run.out.contains(&format!("web@{i}.service: updating\n")),
            "{}",
            run.out
        );
        assert!(
            run.out.contains(&format!("web@{i}.service: healthy\n")),
            "{}",
            run.out
        );
    }
    // Two at a time: the third starts only once one of the first two is healthy.
    let at = |line: &str| run.out.find(line).unwrap_or(usize::MAX);
    assert!(
        at("web@3.service: updating")
            > at("web@1.service: healthy").min(at("web@2.service: healthy"))
    );
    let want = hash_of(&web("/bin/sleep 2000"));
    assert_eq!(
        hashes(&fleet).await,
        [want.clone(), want.clone(), want.clone(), want]
    );

    let id = out[0].split_whitespace().nth(1).unwrap().to_string();
    let run = fleet
        .fleetctl(&args(&["list-updates", "--no-legend"]))
        .await;
    assert_eq!(run.code, Some(0));
    assert_eq!(lines(&run.out), [format!("{id}\tdone\t4\t4\t-")]);
    let run = fleet.fleetctl(&args(&["update-status", &id])).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    assert!(
        run.out
            .starts_with(&format!("Update {id} done (2 at a time)\nUNIT")),
        "{}",
        run.out
    );
    // A finished update cannot be steered.
    let run = fleet.fleetctl(&args(&["pause-update", &id])).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.err.trim(),
        format!("Unable to pause update {id}: cannot pause an update that is done")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_update_is_reverted_and_a_unit_is_in_one_update_at_a_time() {
    let fleet = Fleet::start().await;
    four_instances(&fleet, "/bin/sleep 1000").await;
    let before = hashes(&fleet).await;
    let bad = fleet.unit_file("web@.service", &web("/bin/false"));
    let run = fleet
        .fleetctl(&args(&[
            "update",
            "--max-parallel",
            "2",
            "--min-healthy",
            "200ms",
            "--auto-revert",
            &bad,
        ]))
        .await;
    assert_eq!(run.code, Some(1), "{}{}", run.out, run.err);
    // Steps as seen every half second: failed, reverting, reverted (some may be skipped);
    // the first two start together, and either may fail first.
    assert!(
        ["web@1.service", "web@2.service"].iter().any(|u| run
            .out
            .contains(&format!("{u}: reverted (systemd reports it failed)"))),
        "{}",
        run.out
    );
    let last = lines(&run.out).last().unwrap().to_string();
    assert!(last.contains(" reverted: web@"), "{last}");
    assert!(
        !run.out.contains("web@3.service: updating"),
        "nothing started after the failure: {}",
        run.out
    );
    assert_eq!(
        hashes(&fleet).await,
        before,
        "every unit has its content back"
    );

    // Paused, a unit of it cannot be in another update; aborted, it can.
    let slow = fleet.unit_file("web@.service", &web("/bin/sleep 3000"));
    let run = fleet
        .fleetctl(&args(&[
            "update",
            "--no-block",
            "--min-healthy",
            "1h",
            &slow,
        ]))
        .await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    let id = lines(&run.out)[0]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let run = fleet.fleetctl(&args(&["pause-update", &id])).await;
    assert_eq!(run.out.trim(), format!("Update {id} paused"), "{}", run.err);
    let again = fleet.unit_file("web@.service", &web("/bin/sleep 4000"));
    let run = fleet
        .fleetctl(&args(&["update", "--no-block", &again, "web@1.service"]))
        .await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.err
            .contains(&format!("is in update {id}, which is not over")),
        "{}",
        run.err
    );
    let run = fleet.fleetctl(&args(&["abort-update", &id])).await;
    assert_eq!(
        run.out.trim(),
        format!("Update {id} aborted"),
        "{}",
        run.err
    );
    let run = fleet
        .fleetctl(&args(&["update", "--no-block", &again, "web@1.service"]))
        .await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    // Asking and steering are recorded as events.
    let run = fleet
        .fleetctl(&args(&[
            "events",
            "--no-legend",
            "--fields",
            "kind,message",
        ]))
        .await;
    for step in [
        format!("update {id} asked for: 4 units, 1 at a time"),
        format!("update {id} paused by hand"),
        format!("update {id} aborted by hand"),
    ] {
        assert!(
            run.out.contains(&format!("update-step\t{step}")),
            "{step}: {}",
            run.out
        );
    }
    // Bad input changes nothing.
    for (bad_args, why) in [
        (
            vec!["update", &again, "nothing*"],
            "no unit in the cluster matches nothing*",
        ),
        (
            vec!["update", "--max-parallel", "0", &again],
            "0 is not in 1..",
        ),
        (
            vec!["update", "--min-healthy", "soon", &again],
            "invalid duration",
        ),
    ] {
        let run = fleet.fleetctl(&args(&bad_args)).await;
        assert_ne!(run.code, Some(0), "{bad_args:?}");
        assert!(run.err.contains(why), "{bad_args:?}: {}", run.err);
    }
}
