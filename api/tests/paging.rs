//! Lists read a page at a time from etcd, against a real etcd: a listing followed across its
//! pages is the whole list in order, whatever is created or destroyed between two pages; a
//! page reads about a page's worth of keys, not whole prefixes; a bad token is a 400. The
//! states and machines of named units (`/state?unitName=`, `/state/{name}`, journal and
//! status) cost the same in a small and a large cluster, and a state a machine keeps for a
//! unit that left it is that machine's. `/metrics` counts machines without reading them. And
//! what a unit's creation costs etcd: one request.

use std::time::Duration;

use fleet_api::peer::PeerClient;
use fleet_api::server::Inspect;
use fleet_registry::{
    EtcdConfig, JobState, Machine, MachineId, Placement, PlacementOp, Presence, PresenceStatus,
    Registry, Unit, UnitState,
};
use fleet_testkit::Etcd;
use fleet_units::{UnitName, UnitOption};
use reqwest::StatusCode;
use serde_json::Value;

struct Api {
    etcd: Etcd,
    registry: Registry,
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn start(page_size: u32) -> Api {
        Api::start_with(page_size, None).await
    }

    /// An API that serves journals and statuses as the machine `inspect` says.
    async fn start_with(page_size: u32, inspect: Option<Inspect>) -> Api {
        let etcd = Etcd::start();
        let registry = connect(&etcd).await;
        let router =
            fleet_api::server::router_with(registry.clone(), "9.9.9", page_size, inspect, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}/fleet/v1", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Api {
            etcd,
            registry,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// Another client of this API's etcd: what it reads and writes is not counted in the
    /// API's `keys_read` and `kv_requests`.
    async fn other_registry(&self) -> Registry {
        connect(&self.etcd).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// One page of `path` (`?` and the token added when given): its items under `field` and
    /// the next token, if any.
    async fn page(
        &self,
        path: &str,
        field: &str,
        token: Option<&str>,
    ) -> (Vec<Value>, Option<String>) {
        let path = match token {
            Some(t) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}nextPageToken={t}")
            }
            None => path.to_string(),
        };
        let (status, body) = self.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let items = body[field].as_array().cloned().unwrap_or_default();
        let next = body["nextPageToken"].as_str().map(str::to_string);
        (items, next)
    }

    /// Every item of `path`, following tokens, and how many pages that took.
    async fn all(&self, path: &str, field: &str) -> (Vec<Value>, usize) {
        let (mut all, mut pages, mut token) = (Vec::new(), 0, None::<String>);
        loop {
            let (items, next) = self.page(path, field, token.as_deref()).await;
            pages += 1;
            all.extend(items);
            match next {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return (all, pages),
            }
            assert!(pages < 10_000, "paging does not end");
        }
    }
}

async fn connect(etcd: &Etcd) -> Registry {
    Registry::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: etcd.prefix.clone(),
        request_timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    })
    .await
    .expect("registry")
}

fn machine(n: u8) -> Machine {
    Machine {
        id: MachineId::parse(&format!("{n:032x}")).expect("machine id"),
        public_ip: format!("10.0.0.{n}"),
        metadata: Default::default(),
        version: "test".into(),
        peer_address: None,
    }
}

fn unit(name: &str) -> Unit {
    Unit {
        name: UnitName::parse(name).expect("unit name"),
        options: vec![UnitOption::new("Service", "ExecStart", "/bin/true")],
        desired_state: JobState::Launched,
    }
}

fn lease_of(presence: &Presence) -> i64 {
    match presence.status() {
        PresenceStatus::Alive { lease } => lease,
        PresenceStatus::Fenced => panic!("fenced"),
    }
}

/// `names` stored, each `i`-th one placed on machine `i % machines + 1` (of `machines`
/// registered) with a published state, except those whose name ends in `4.service`, left
/// unplaced.
async fn cluster(registry: &Registry, names: &[String], machines: u8) -> Vec<Presence> {
    let mut presences = Vec::new();
    for n in 1..=machines {
        let presence = Presence::start(registry.clone(), machine(n), Duration::from_secs(30), None)
            .await
            .expect("register");
        presences.push(presence);
    }
    let first = &presences[0];
    let leadership = registry
        .campaign(&machine(1).id, lease_of(first))
        .await
        .expect("campaign")
        .expect("leads");
    let mut ops = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let unit = unit(name);
        registry.put_unit(&unit).await.expect("put unit");
        if unplaced(name) {
            continue;
        }
        let n = (i % machines as usize) as u8 + 1;
        ops.push(PlacementOp::Put {
            machine: machine(n).id,
            placement: Placement::for_unit(&unit),
        });
        let state = UnitState {
            name: unit.name.clone(),
            hash: unit.hash(),
            machine_id: machine(n).id,
            job_state: JobState::Launched,
            systemd_load_state: "loaded".into(),
            systemd_active_state: "active".into(),
            systemd_sub_state: format!("running-{i}"),
            start_failure: None,
            health: None,
        };
        registry
            .publish_state(lease_of(&presences[n as usize - 1]), &state)
            .await
            .expect("publish");
    }
    registry
        .apply_placements(leadership, &ops)
        .await
        .expect("place");
    presences
}

fn unplaced(name: &str) -> bool {
    name.ends_with("4.service")
}

fn names_of(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|u| u["name"].as_str().expect("name").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_across_pages_is_the_whole_list_in_order() {
    let api = Api::start(4).await;
    // Names one of which starts with another: `a.service/` sorts after
    // `a.service-b.service/` in the `placed/` index, though `a.service` comes first.
    let mut names: Vec<String> = (0..23).map(|i| format!("u{i:02}.service")).collect();
    names.extend([
        "a.service".into(),
        "a.service-b.service".into(),
        "a.service.service".into(),
    ]);
    names.sort();
    let _machines = cluster(&api.registry, &names, 3).await;

    let (units, pages) = api.all("/units", "units").await;
    assert_eq!(names_of(&units), names);
    assert_eq!(pages, names.len().div_ceil(4));
    // Each unit as listed is the unit as read alone (`unit_view`'s point reads).
    for listed in &units {
        let name = listed["name"].as_str().expect("name");
        let (status, alone) = api.get(&format!("/units/{name}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed, &alone, "{name}");
    }
    assert!(units.iter().any(|u| u["currentState"] == "launched"));
    assert!(units
        .iter()
        .any(|u| u.get("machineID").is_none_or(|m| m == "")));

    let (states, _) = api.all("/state", "states").await;
    let expected: Vec<String> = api
        .registry
        .unit_states()
        .await
        .expect("states")
        .iter()
        .map(|s| format!("{}/{}", s.machine_id, s.name))
        .collect();
    let listed: Vec<String> = states
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s["machineID"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(listed.len(), names.iter().filter(|n| !unplaced(n)).count());

    // Filters: by machine (only its prefix is read), by unit, both.
    let m2 = machine(2).id;
    let (of_m2, _) = api.all(&format!("/state?machineID={m2}"), "states").await;
    let want: Vec<&String> = expected
        .iter()
        .filter(|k| k.starts_with(m2.as_str()))
        .collect();
    assert_eq!(of_m2.len(), want.len());
    assert!(of_m2.iter().all(|s| s["machineID"] == m2.as_str()));
    let some = ["u03.service", "u13.service", "u22.service", "u04.service"];
    let query = some.map(|n| format!("unitName={n}")).join("&");
    let (of_some, _) = api.all(&format!("/state?{query}"), "states").await;
    let mut got = names_of(&of_some);
    got.sort();
    assert_eq!(
        got,
        ["u03.service", "u13.service", "u22.service"],
        "u04 is unplaced"
    );
    let (none, _) = api.all("/state?machineID=nonsense", "states").await;
    assert!(none.is_empty());

    let (machines, pages) = api.all("/machines", "machines").await;
    let ids: Vec<&str> = machines.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, [1, 2, 3].map(|n| machine(n).id.to_string()));
    assert_eq!(pages, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn fleetctls_client_follows_the_pages() {
    let api = Api::start(4).await;
    let names: Vec<String> = (0..18).map(|i| format!("u{i:02}.service")).collect();
    let _machines = cluster(&api.registry, &names, 5).await;
    let root = api.base.trim_end_matches("/fleet/v1");
    let client = fleet_client::Client::new(root, Duration::from_secs(5)).expect("client");

    let (units, pages) = client.units_counting_pages().await.expect("units");
    let listed: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(listed, names);
    assert_eq!(pages, 5);
    let states = client.unit_states(&[], &[]).await.expect("states");
    assert_eq!(states.len(), names.iter().filter(|n| !unplaced(n)).count());
    let machines = client.machines().await.expect("machines");
    assert_eq!(machines.len(), 5);
    let one = machine(3).id.to_string();
    let of_one = client
        .unit_states(&[], &[one.as_str()])
        .await
        .expect("states of one machine");
    assert!(!of_one.is_empty() && of_one.iter().all(|s| s.machine_id == one));
}

#[tokio::test(flavor = "multi_thread")]
async fn units_created_or_destroyed_between_pages_do_not_break_paging() {
    let api = Api::start(3).await;
    let names: Vec<String> = (0..10).map(|i| format!("u{i}.service")).collect();
    let _machines = cluster(&api.registry, &names, 2).await;

    let (first, token) = api.page("/units", "units", None).await;
    assert_eq!(names_of(&first), ["u0.service", "u1.service", "u2.service"]);
    // Destroy one already listed and one not yet listed (the last of the first page, where
    // the next page starts, among them); create one before and one after where paging stands.
    for gone in ["u2.service", "u5.service"] {
        assert!(api
            .registry
            .delete_unit(&unit(gone).name)
            .await
            .expect("delete"));
    }
    for new in ["u1a.service", "u4a.service"] {
        api.registry.put_unit(&unit(new)).await.expect("put");
    }
    let mut listed = names_of(&first);
    let mut token = token;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let (items, next) = api.page("/units", "units", Some(&t)).await;
        listed.extend(names_of(&items));
        token = next;
    }
    assert_eq!(
        listed,
        [
            "u0.service",
            "u1.service",
            "u2.service",
            "u3.service",
            "u4.service",
            "u4a.service",
            "u6.service",
            "u7.service",
            "u8.service",
            "u9.service",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_reads_a_page_of_keys_not_whole_prefixes() {
    let api = Api::start(10).await;
    let names: Vec<String> = (0..300).map(|i| format!("u{i:03}.service")).collect();
    let _machines = cluster(&api.registry, &names, 3).await;

    // A page of 10 units: the units, their index entries and their states (and the reasons
    // of those not placed): about 3 keys per unit, against 3 × 300 for whole prefixes.
    let mut token = None;
    for page in 0..5 {
        let before = api.registry.keys_read();
        let (items, next) = api.page("/units", "units", token.as_deref()).await;
        let read = api.registry.keys_read() - before;
        assert_eq!(items.len(), 10);
        assert!(read <= 3 * 10 + 2, "page {page} of units read {read} keys");
        token = next;
    }
    let before = api.registry.keys_read();
    let (states, _) = api.page("/state", "states", None).await;
    assert_eq!(states.len(), 10);
    assert!(api.registry.keys_read() - before <= 10, "a page of states");
    let before = api.registry.keys_read();
    let (machines, _) = api.page("/machines", "machines", None).await;
    assert_eq!(machines.len(), 3);
    assert!(api.registry.keys_read() - before <= 3, "a page of machines");
    // The whole listing reads each key about once.
    let before = api.registry.keys_read();
    let (units, pages) = api.all("/units", "units").await;
    assert_eq!((units.len(), pages), (300, 30));
    assert!(api.registry.keys_read() - before <= 3 * 300 + 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_page_tokens_are_400_with_the_envelope() {
    let api = Api::start(2).await;
    let names: Vec<String> = (0..5).map(|i| format!("u{i}.service")).collect();
    let _machines = cluster(&api.registry, &names, 1).await;
    let (_, units_token) = api.page("/units", "units", None).await;
    let units_token = units_token.expect("a second page");
    let b64 = |json: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE.encode(json)
    };
    let cases = [
        ("/units", "garbage".to_string()),
        ("/units", b64(r#"{"limit":2,"page":2}"#)),
        ("/units", b64(r#"{"limit":0,"after":"u1.service"}"#)),
        ("/units", b64(r#"{"limit":2,"after":"not a unit"}"#)),
        ("/units", b64(r#"{"limit":2,"after":"../../x"}"#)),
        ("/state", units_token.clone()),
        ("/machines", units_token.clone()),
        ("/state", b64(r#"{"limit":2,"after":"u1.service"}"#)),
    ];
    for (path, token) in cases {
        let (status, body) = api.get(&format!("{path}?nextPageToken={token}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {token}: {body}");
        assert_eq!(body["error"]["code"], 400, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nextPageToken")));
    }
}

/// What a unit's writes cost etcd: creating one with its desired state, as `fleetctl start`
/// does for each new unit, is one request; a PUT that finds the unit there reads it in that
/// same request and writes after.
#[tokio::test(flavor = "multi_thread")]
async fn creating_a_unit_is_one_etcd_request() {
    let api = Api::start(100).await;
    let put = |name: &str, body: serde_json::Value| {
        let request = api
            .http
            .put(format!("{}/units/{name}", api.base))
            .json(&body);
        async move { request.send().await.expect("PUT").status() }
    };
    let options = serde_json::json!([
        {"section": "Service", "name": "ExecStart", "value": "/bin/true"}
    ]);
    let before = api.registry.kv_requests();
    let status = put(
        "new.service",
        serde_json::json!({"desiredState": "launched", "options": options}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(api.registry.kv_requests() - before, 1, "a new unit");

    // The same content again with another desired state: found in the first request, then
    // the desired state is set.
    let before = api.registry.kv_requests();
    let status = put(
        "new.service",
        serde_json::json!({"desiredState": "loaded", "options": options}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(api.registry.kv_requests() - before <= 3);
    let (_, unit) = api.get("/units/new.service").await;
    assert_eq!(unit["desiredState"], "loaded");
    assert_eq!(unit["currentState"], "inactive");
}

// ---- reads by unit --------------------------------------------------------------------------

/// A machine that is none of the cluster's, for the journals and statuses: every unit's
/// machine is another one, read through its peer endpoint, which none of these serves (502
/// naming the machine: what shows which machine a request was sent to).
fn inspect() -> Inspect {
    Inspect {
        machine: MachineId::parse(&"f".repeat(32)).expect("machine id"),
        peers: PeerClient::new(None),
        removal_wait: std::time::Duration::ZERO,
    }
}

fn global(name: &str) -> Unit {
    let mut unit = unit(name);
    unit.options
        .push(UnitOption::new("X-Fleet", "Global", "true"));
    unit
}

fn running(n: u8, unit: &Unit) -> UnitState {
    UnitState {
        name: unit.name.clone(),
        hash: unit.hash(),
        machine_id: machine(n).id,
        job_state: JobState::Launched,
        systemd_load_state: "loaded".into(),
        systemd_active_state: "active".into(),
        systemd_sub_state: "running".into(),
        start_failure: None,
        health: None,
    }
}

/// Beside `cluster`'s units: `idle.service` placed on machine 2 without a state,
/// `log.service` global with states on machines 1 and 2, `wait.service` placed nowhere.
async fn asked_units(registry: &Registry, presences: &[Presence]) {
    let leadership = registry
        .campaign(&machine(1).id, lease_of(&presences[0]))
        .await
        .expect("campaign")
        .expect("leads");
    for unit in [
        unit("idle.service"),
        unit("wait.service"),
        global("log.service"),
    ] {
        registry.put_unit(&unit).await.expect("put unit");
    }
    registry
        .apply_placements(
            leadership,
            &[PlacementOp::Put {
                machine: machine(2).id,
                placement: Placement::for_unit(&unit("idle.service")),
            }],
        )
        .await
        .expect("place");
    for n in [1, 2] {
        registry
            .publish_state(
                lease_of(&presences[n as usize - 1]),
                &running(n, &global("log.service")),
            )
            .await
            .expect("publish");
    }
}

/// Each state as `<machine>/<unit>`.
fn positions(states: &[Value]) -> Vec<String> {
    states
        .iter()
        .map(|s| {
            let field = |f: &str| s[f].as_str().unwrap_or("").to_string();
            format!("{}/{}", field("machineID"), field("name"))
        })
        .collect()
}

/// What one request answered (status and body as text) and what it cost the API's registry.
#[derive(Debug)]
struct Answer {
    path: String,
    status: StatusCode,
    body: String,
    keys: u64,
    requests: u64,
}

impl Api {
    async fn answer(&self, path: &str) -> Answer {
        let (keys, requests) = (self.registry.keys_read(), self.registry.kv_requests());
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = r.status();
        let body = r.text().await.expect("body");
        Answer {
            path: path.to_string(),
            status,
            body,
            keys: self.registry.keys_read() - keys,
            requests: self.registry.kv_requests() - requests,
        }
    }
}

/// The requests that read named units' states or machines, and whether each reads a global
/// unit's on every live machine.
fn by_unit() -> Vec<(String, bool)> {
    let m1 = machine(1).id;
    [
        ("/state?unitName=web.service", false),
        ("/state/web.service", false),
        ("/state?unitName=idle.service", false),
        ("/state/idle.service", false),
        ("/state?unitName=log.service", true),
        ("/state/log.service", true),
        ("/state?unitName=gone.service", false),
        ("/state/gone.service", false),
        (
            "/state?unitName=web.service&unitName=log.service&unitName=wait.service",
            true,
        ),
        (
            &format!("/state?machineID={m1}&unitName=web.service&unitName=log.service"),
            false,
        ),
        ("/units/web.service/status", false),
        ("/units/idle.service/journal", false),
        ("/units/log.service/status", true),
        ("/units/wait.service/status", false),
        ("/units/gone.service/journal", false),
    ]
    .into_iter()
    .map(|(path, global)| (path.to_string(), global))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_units_states_and_machines_cost_the_same_in_a_small_and_a_large_cluster() {
    // 3 units on 2 machines (and a name that is no unit), then the same among 300 more
    // units on 20 machines.
    let small = Api::start_with(100, Some(inspect())).await;
    let setup = small.other_registry().await;
    let presences = cluster(&setup, &["web.service".to_string()], 2).await;
    asked_units(&setup, &presences).await;
    let mut small_answers = Vec::new();
    for (path, _) in by_unit() {
        small_answers.push(small.answer(&path).await);
    }

    let large = Api::start_with(100, Some(inspect())).await;
    let setup = large.other_registry().await;
    let mut names = vec!["web.service".to_string()];
    names.extend((0..300).map(|i| format!("u{i:03}.service")));
    let presences = cluster(&setup, &names, 20).await;
    asked_units(&setup, &presences).await;

    for ((path, global), small) in by_unit().into_iter().zip(&small_answers) {
        let large = large.answer(&path).await;
        assert_eq!(
            (large.status, &large.body),
            (small.status, &small.body),
            "{path}"
        );
        assert_eq!(large.requests, small.requests, "{path}: requests");
        // A global unit's states may be on any live machine: one key (its record's) more
        // per machine, whatever the number of units.
        let more = if global { 18 } else { 0 };
        assert_eq!(large.keys, small.keys + more, "{path}: keys");
        assert!(small.keys <= 12, "{small:?}");
    }

    // The answers themselves.
    let answer = |path: &str| {
        small_answers
            .iter()
            .find(|a| a.path == path)
            .unwrap_or_else(|| panic!("{path}"))
    };
    let json = |a: &Answer| -> Value { serde_json::from_str(&a.body).expect("json") };
    let on = |a: &Answer| positions(json(a)["states"].as_array().expect("states"));
    let (m1, m2) = (machine(1).id.to_string(), machine(2).id.to_string());
    assert_eq!(
        on(answer("/state?unitName=web.service")),
        [format!("{m1}/web.service")]
    );
    assert_eq!(json(answer("/state/web.service"))["machineID"], m1);
    assert!(on(answer("/state?unitName=idle.service")).is_empty());
    assert_eq!(answer("/state/idle.service").status, StatusCode::NOT_FOUND);
    assert_eq!(
        on(answer("/state?unitName=log.service")),
        [format!("{m1}/log.service"), format!("{m2}/log.service")]
    );
    assert_eq!(json(answer("/state/log.service"))["machineID"], m1);
    assert!(on(answer("/state?unitName=gone.service")).is_empty());
    assert_eq!(answer("/state/gone.service").status, StatusCode::NOT_FOUND);
    assert_eq!(
        on(answer(
            "/state?unitName=web.service&unitName=log.service&unitName=wait.service"
        )),
        [
            format!("{m1}/log.service"),
            format!("{m1}/web.service"),
            format!("{m2}/log.service"),
        ]
    );
    let status = answer("/units/web.service/status");
    assert_eq!(status.status, StatusCode::BAD_GATEWAY);
    assert!(status.body.contains(&m1), "{status:?}");
    let journal = answer("/units/idle.service/journal");
    assert_eq!(journal.status, StatusCode::BAD_GATEWAY);
    assert!(journal.body.contains(&m2), "{journal:?}");
    let status = answer("/units/log.service/status");
    assert_eq!(status.status, StatusCode::OK);
    assert!(
        status.body.contains(&m1) && status.body.contains(&m2),
        "{status:?}"
    );
    let status = answer("/units/wait.service/status");
    assert_eq!(status.status, StatusCode::NOT_FOUND);
    assert!(
        status.body.contains("does not run on any machine"),
        "{status:?}"
    );
    let journal = answer("/units/gone.service/journal");
    assert_eq!(journal.status, StatusCode::NOT_FOUND);
    assert!(journal.body.contains("unit does not exist"), "{journal:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn states_by_unit_follow_their_page_tokens() {
    let api = Api::start(1).await;
    let setup = api.other_registry().await;
    let presences = cluster(&setup, &["web.service".to_string()], 2).await;
    asked_units(&setup, &presences).await;
    let (m1, m2) = (machine(1).id, machine(2).id);
    let path = "/state?unitName=web.service&unitName=log.service&unitName=idle.service";
    let (states, pages) = api.all(path, "states").await;
    let listed = positions(&states);
    assert_eq!(
        listed,
        [
            format!("{m1}/log.service"),
            format!("{m1}/web.service"),
            format!("{m2}/log.service"),
        ]
    );
    assert_eq!(pages, 3);
    // With a machine: that machine's states of those units.
    let path = format!("/state?machineID={m2}&unitName=log.service&unitName=web.service");
    let (states, _) = api.all(&path, "states").await;
    assert_eq!(names_of(&states), ["log.service"]);
    // A token that is not a position is refused as on any listing.
    let (status, body) = api
        .get("/state?unitName=web.service&nextPageToken=garbage")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// A unit taken off a machine to run elsewhere is stopped there first: meanwhile that machine
/// still reports its state. That state is the machine's, not the unit's: listed with the
/// machine (`machineID`, with or without `unitName`), not as the unit's (`unitName` alone,
/// `GET /state/{name}`, its journal and status), as `GET /units` shows it placed nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_left_on_a_machine_the_unit_left_is_that_machines_not_the_units() {
    let api = Api::start_with(100, Some(inspect())).await;
    let setup = api.other_registry().await;
    let presences = cluster(&setup, &["move.service".to_string()], 2).await;
    let leadership = setup
        .campaign(&machine(1).id, lease_of(&presences[0]))
        .await
        .expect("campaign")
        .expect("leads");
    let (m1, m2) = (machine(1).id, machine(2).id);
    let name = unit("move.service").name;
    let of_unit = "/state?unitName=move.service";
    let on_m1 = format!("/state?machineID={m1}&unitName=move.service");
    let machines_of = |states: &[Value]| -> Vec<String> {
        states
            .iter()
            .map(|s| s["machineID"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        machines_of(&api.all(of_unit, "states").await.0),
        [m1.to_string()]
    );

    setup
        .apply_placements(
            leadership,
            &[PlacementOp::Move {
                machine: m1.clone(),
                name: name.clone(),
            }],
        )
        .await
        .expect("move");
    assert!(api.all(of_unit, "states").await.0.is_empty());
    assert_eq!(
        api.get("/state/move.service").await.0,
        StatusCode::NOT_FOUND
    );
    let status = api.answer("/units/move.service/status").await;
    assert_eq!(status.status, StatusCode::NOT_FOUND, "{status:?}");
    assert_eq!(
        machines_of(&api.all(&on_m1, "states").await.0),
        [m1.to_string()]
    );
    let (of_m1, _) = api.all(&format!("/state?machineID={m1}"), "states").await;
    assert_eq!(names_of(&of_m1), ["move.service"]);
    let (_, view) = api.get("/units/move.service").await;
    assert_eq!(view["machineID"].as_str().unwrap_or(""), "", "{view}");

    // Placed on machine 2, which reports it, while machine 1 still does.
    setup
        .apply_placements(
            leadership,
            &[PlacementOp::Put {
                machine: m2.clone(),
                placement: Placement::for_unit(&unit("move.service")),
            }],
        )
        .await
        .expect("place");
    setup
        .publish_state(lease_of(&presences[1]), &running(2, &unit("move.service")))
        .await
        .expect("publish");
    assert_eq!(
        machines_of(&api.all(of_unit, "states").await.0),
        [m2.to_string()]
    );
    assert_eq!(
        api.get("/state/move.service").await.1["machineID"],
        m2.as_str()
    );
    assert_eq!(
        machines_of(&api.all(&on_m1, "states").await.0),
        [m1.to_string()]
    );
    let status = api.answer("/units/move.service/status").await;
    assert_eq!(status.status, StatusCode::BAD_GATEWAY);
    assert!(status.body.contains(m2.as_str()), "{status:?}");
}

/// `/metrics` counts the machines without reading their records (a count-only read); its
/// units and states gauges count by what the records hold, so those are read whole, by the
/// fleetd leading the engine only: the others read no key.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_machines_without_reading_them() {
    let api = Api::start(100).await;
    let setup = api.other_registry().await;
    let names: Vec<String> = (0..10).map(|i| format!("u{i}.service")).collect();
    let _machines = cluster(&setup, &names, 5).await;
    let states = names.iter().filter(|n| !unplaced(n)).count();
    let root = api.base.trim_end_matches("/fleet/v1");
    let scrape = || async {
        let r = api
            .http
            .get(format!("{root}/metrics"))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), StatusCode::OK);
        let text = r.text().await.expect("body");
        let sample = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .to_string()
        };
        assert_eq!(sample("fleet_machines"), "5");
        assert_eq!(sample("fleet_etcd_up"), "1");
    };

    let before = api.registry.keys_read();
    scrape().await;
    assert_eq!(api.registry.keys_read() - before, 0, "a follower read keys");

    // No other test of this binary leads the engine.
    let _leading = fleet_telemetry::LeaderGuard::new();
    let before = api.registry.keys_read();
    scrape().await;
    let read = api.registry.keys_read() - before;
    assert_eq!(read as usize, names.len() + states, "units and states only");
}
