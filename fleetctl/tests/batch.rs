//! fleetctl on many units at once, against the real API over a real etcd with the real engine
//! placing the units: how many requests fleetd receives, the order of what fleetctl prints,
//! and the first error ending the command.
//!
//! The one machine is a simulation: a registered presence whose "agent" reports each unit
//! placed on it in the state asked for, with no systemd behind it, so that blocking commands
//! have states to wait for. What is tested is fleetctl and the API, never the agent.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn many_units_are_started_and_destroyed_with_at_most_two_requests_each() {
    let fleet = Fleet::start().await;
    let names = shuffled("batch");
    let paths: Vec<String> = names
        .iter()
        .map(|n| fleet.unit_file(n, &service(n)))
        .collect();

    // A blocking start: submitted with its desired state in one request per unit, then
    // waited for by one listing per check.
    let mut args = vec!["start".to_string()];
    args.extend(paths.iter().cloned());
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(0), "{}{}", run.out, run.err);
    assert_eq!(run.err, "");
    let mut printed = lines(&run.out);
    printed.sort();
    let mut expected: Vec<String> = names
        .iter()
        .map(|n| format!("Unit {n} launched on 00000000.../10.0.0.1"))
        .collect();
    expected.sort();
    assert_eq!(printed, expected);
    let requests = fleet.requests();
    let total: usize = requests.values().sum();
    eprintln!(
        "start of {UNITS} units (blocking, {:?}): {total} requests: {requests:?}",
        run.took
    );
    assert_eq!(requests.get("PUT /fleet/v1/units/{name}"), Some(&UNITS));
    assert!(requests.get("GET /fleet/v1/machines") <= Some(&1));
    // One listing to learn what exists, then one request per check (checks being at least
    // POLL apart): a listing, or a GET when one unit is left to wait for.
    let checks = (run.took.as_millis() / POLL.as_millis()) as usize + 1;
    let listings = requests.get("GET /fleet/v1/units").copied().unwrap_or(0);
    let asked = requests
        .get("GET /fleet/v1/units/{name}")
        .copied()
        .unwrap_or(0);
    assert!(listings >= 1 && asked <= checks, "{requests:?}");
    assert!(
        listings + asked <= 1 + checks,
        "{requests:?} in {:?}",
        run.took
    );
    assert!(total <= 2 * UNITS + checks, "{requests:?}");
    let desired = fleet.desired_states().await;
    assert_eq!(desired.len(), UNITS);
    assert!(desired.values().all(|d| d == "launched"), "{desired:?}");

    // destroy: one listing, one request per unit, lines in argument order.
    let mut args = vec!["destroy".to_string()];
    args.extend(names.iter().cloned());
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let expected: Vec<String> = names.iter().map(|n| format!("Destroyed {n}")).collect();
    assert_eq!(lines(&run.out), expected);
    let requests = fleet.requests();
    eprintln!("destroy of {UNITS} units: {requests:?}");
    assert_eq!(requests.get("DELETE /fleet/v1/units/{name}"), Some(&UNITS));
    assert_eq!(requests.get("GET /fleet/v1/units"), Some(&1));
    assert_eq!(requests.values().sum::<usize>(), UNITS + 1);
    assert!(fleet.desired_states().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn output_follows_the_arguments_whatever_order_the_answers_come_in() {
    let fleet = Fleet::start().await;
    // Every tenth a global unit; one already in the cluster with other content.
    let names = shuffled("order");
    let changed = &names[17];
    fleet
        .client()
        .create_unit(&fleet_client::schema::Unit {
            name: changed.clone(),
            options: fleet_units::UnitFile::parse(&service("as submitted before"))
                .expect("unit")
                .into_options(),
            ..Default::default()
        })
        .await
        .expect("submit a unit first");
    let global = |i: usize| i % 10 == 4;
    let paths: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let contents = if global(i) {
                format!("{}\n[X-Fleet]\nGlobal=true\n", service(n))
            } else {
                service(n)
            };
            fleet.unit_file(n, &contents)
        })
        .collect();
    let mut args = vec!["start".to_string(), "--no-block".to_string()];
    args.extend(paths.iter().cloned());
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    // Global units as their requests are done, then the others, each in argument order.
    let mut expected: Vec<String> = (0..UNITS)
        .filter(|&i| global(i))
        .map(|i| format!("Triggered global unit {} start", names[i]))
        .collect();
    expected.extend(
        (0..UNITS)
            .filter(|&i| !global(i))
            .map(|i| format!("Triggered unit {} start", names[i])),
    );
    assert_eq!(lines(&run.out), expected);
    assert_eq!(
        run.err,
        format!(
            "WARNING: Unit {changed} in registry differs from local unit file {}\n",
            paths[17]
        )
    );
    let requests = fleet.requests();
    eprintln!("start --no-block of {UNITS} units: {requests:?}");
    assert_eq!(requests.get("GET /fleet/v1/units"), Some(&1));
    assert_eq!(requests.get("PUT /fleet/v1/units/{name}"), Some(&UNITS));
    assert_eq!(requests.values().sum::<usize>(), UNITS + 1);
    let desired = fleet.desired_states().await;
    assert!(desired.values().all(|d| d == "launched"), "{desired:?}");

    // A few units are asked for by name: instances of a template in the cluster, the template
    // read once.
    let template = fleet.unit_file("web@.service", &service("web %i"));
    let run = fleet
        .fleetctl(&["submit".to_string(), template.clone()])
        .await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    std::fs::remove_file(&template).expect("remove the template's file");
    let instances: Vec<String> = [3, 1, 2].iter().map(|i| format!("web@{i}")).collect();
    let mut args = vec!["load".to_string(), "--no-block".to_string()];
    args.extend(instances.iter().cloned());
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(0), "{}", run.err);
    let expected: Vec<String> = instances
        .iter()
        .map(|i| format!("Triggered unit {i}.service load"))
        .collect();
    assert_eq!(lines(&run.out), expected);
    let requests = fleet.requests();
    eprintln!("load --no-block of 3 instances: {requests:?}");
    // Each instance asked for (not there), the template once, and each created loaded.
    assert_eq!(requests.get("GET /fleet/v1/units/{name}"), Some(&4));
    assert_eq!(requests.get("PUT /fleet/v1/units/{name}"), Some(&3));
    assert_eq!(requests.values().sum::<usize>(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_error_ends_the_command_with_fleets_message() {
    let fleet = Fleet::start().await;

    // Refused before any request is sent: nothing after it is submitted, and the units before
    // it are created without their desired state.
    let names = shuffled("early");
    let mut args = vec!["start".to_string(), "--no-block".to_string()];
    for (i, name) in names.iter().enumerate() {
        if i == 25 {
            args.push("missing.service".into());
        }
        args.push(fleet.unit_file(name, &service(name)));
    }
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.out, "");
    assert_eq!(
        run.err,
        "Error creating units: unable to find Unit(missing.service) in Registry or on filesystem\n"
    );
    let desired = fleet.desired_states().await;
    let before: Vec<&String> = desired.keys().collect();
    let mut expected: Vec<&String> = names[..25].iter().collect();
    expected.sort();
    assert_eq!(before, expected, "only the units before it are submitted");
    // As fleet, which creates every unit before it sets any desired state: created, not started.
    assert!(
        desired.values().all(|d| d == "inactive"),
        "units before the error were started: {desired:?}"
    );

    // Refused by fleetd in the middle (a template may not be started): its message alone,
    // whatever the requests in flight beside it did.
    let names = shuffled("late");
    let mut args = vec!["start".to_string()];
    for (i, name) in names.iter().enumerate() {
        if i == 30 {
            args.push(fleet.unit_file("tmpl@.service", &service("a template")));
        }
        args.push(fleet.unit_file(name, &service(name)));
    }
    let run = fleet.fleetctl(&args).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.out, "");
    assert_eq!(
        run.err,
        "Error starting units: unit tmpl@.service is a template: only its instances can be loaded or launched (HTTP 400)\n"
    );
    let desired = fleet.desired_states().await;
    for name in &names[..30] {
        assert_eq!(desired.get(name).map(String::as_str), Some("launched"));
    }
    assert_eq!(
        desired.get("tmpl@.service").map(String::as_str),
        Some("inactive")
    );

    // stop: a unit placed nowhere ends it with fleet's message, before anything after it is
    // asked for.
    let until = Instant::now() + Duration::from_secs(20);
    while fleet
        .client()
        .unit(&names[0])
        .await
        .expect("read a unit")
        .is_none_or(|u| u.current_state != "launched")
    {
        assert!(Instant::now() < until, "{} never launched", names[0]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = fleet
        .fleetctl(&[
            "stop".into(),
            "--no-block".into(),
            names[0].clone(),
            "tmpl@.service".into(),
            names[1].clone(),
        ])
        .await;
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.err,
        "Unable to stop unit tmpl@.service in state inactive\n"
    );
    let desired = fleet.desired_states().await;
    assert_eq!(desired.get(&names[1]).map(String::as_str), Some("launched"));
}
