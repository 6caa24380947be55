//! The API's contract, against a real etcd: every status code fleet's clients rely on, and
//! after every refused request etcd is unchanged.

use std::time::Duration;

use fleet_registry::{
    EtcdConfig, JobState, Machine, MachineId, Placement, PlacementOp, Presence, PresenceStatus,
    Registry, UnitState,
};
use fleet_testkit::{closed_port, Etcd, KeySpace};
use fleet_units::UnitName;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Api {
    etcd: Etcd,
    registry: Registry,
    /// `http://host:port`
    root: String,
    /// `<root>/fleet/v1`
    base: String,
    http: reqwest::Client,
}

/// Serves the API on a free port; returns the registry and the server's root URL.
async fn serve(config: EtcdConfig, page_size: u32) -> (Registry, String) {
    let registry = Registry::connect(&config).await.expect("registry");
    let router = fleet_api::server::router(registry.clone(), "9.9.9", page_size);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let root = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (registry, root)
}

/// A registry on `etcd`, and `machine`'s peer endpoint answering from `liveness`, served over
/// plain HTTP on a free port (as with api_insecure_http: every caller is admitted); returns
/// the registry and the endpoint's `host:port`.
async fn serve_peer(
    etcd: &Etcd,
    machine: &MachineId,
    liveness: fleet_registry::Liveness,
) -> (Registry, String) {
    let registry = Registry::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: etcd.prefix.clone(),
        ..EtcdConfig::default()
    })
    .await
    .expect("registry");
    let router = fleet_api::peer::router(registry.clone(), machine.clone(), liveness, "9.9.9");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    tokio::spawn(fleet_trust::serve(
        listener,
        None,
        router,
        fleet_trust::Limits::default(),
    ));
    (registry, address)
}

/// Machine `id` with the peer address `address`, as its record announces it.
fn peer_machine(id: &MachineId, address: &str) -> Machine {
    Machine {
        id: id.clone(),
        public_ip: "127.0.0.1".into(),
        metadata: Default::default(),
        version: "9.9.9".into(),
        peer_address: Some(address.to_string()),
    }
}

/// Machine `id` registered on `etcd` with a fresh liveness, its peer endpoint served from it
/// (`serve_peer`): its presence (the lease is kept while it is held) and its record.
async fn registered_peer(etcd: &Etcd, id: &MachineId) -> (Presence, Machine) {
    let liveness = fleet_registry::Liveness::new();
    let (registry, address) = serve_peer(etcd, id, liveness.clone()).await;
    let machine = peer_machine(id, &address);
    let presence = Presence::start_with(
        registry,
        machine.clone(),
        Duration::from_secs(10),
        fleet_registry::PresenceOptions {
            liveness: Some(liveness),
            ..Default::default()
        },
    )
    .await
    .expect("registered");
    (presence, machine)
}

impl Api {
    async fn start(page_size: u32) -> Api {
        Api::start_on(Etcd::start(), page_size).await
    }

    /// The API over a given etcd (one started with particular flags).
    async fn start_on(etcd: Etcd, page_size: u32) -> Api {
        let (registry, root) = serve(
            EtcdConfig {
                endpoints: vec![etcd.endpoint.clone()],
                prefix: etcd.prefix.clone(),
                request_timeout: Duration::from_secs(2),
                ..EtcdConfig::default()
            },
            page_size,
        )
        .await;
        Api {
            etcd,
            registry,
            base: format!("{root}/fleet/v1"),
            root,
            http: reqwest::Client::new(),
        }
    }

    async fn put(&self, name: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .put(format!("{}/units/{name}", self.base))
            .json(&body)
            .send()
            .await
            .expect("PUT");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
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

    /// Everything a refused request must leave alone: every key under the prefix with its
    /// value and revisions, read from etcd directly rather than through the registry.
    async fn key_space(&self) -> KeySpace {
        self.etcd.key_space().await
    }
}

/// Registers machine `n` (its lease kept alive by the returned `Presence`) and publishes, on
/// its lease, the state of each `(unit, active state)` as an agent would.
async fn machine_running(registry: &Registry, n: u8, units: &[(&str, &str)]) -> Presence {
    let id = MachineId::parse(&format!("{n:032x}")).expect("machine id");
    let machine = Machine {
        id: id.clone(),
        public_ip: format!("10.0.0.{n}"),
        metadata: Default::default(),
        version: "test".to_string(),
        peer_address: None,
    };
    let presence = Presence::start(registry.clone(), machine, Duration::from_secs(10), None)
        .await
        .expect("register a machine");
    let PresenceStatus::Alive { lease } = presence.status() else {
        panic!("presence fenced at once");
    };
    for (unit, active) in units {
        let name = UnitName::parse(unit).expect("unit name");
        let stored = registry
            .unit(&name)
            .await
            .expect("unit")
            .expect("unit exists");
        registry
            .publish_state(
                lease,
                &UnitState {
                    name,
                    hash: stored.hash(),
                    machine_id: id.clone(),
                    job_state: JobState::Launched,
                    systemd_load_state: "loaded".into(),
                    systemd_active_state: active.to_string(),
                    systemd_sub_state: "running".into(),
                    start_failure: None,
                    health: None,
                },
            )
            .await
            .expect("publish a state");
    }
    presence
}

fn hello(state: &str) -> Value {
    json!({
        "desiredState": state,
        "options": [
            {"section": "Unit", "name": "Description", "value": "hello"},
            {"section": "Service", "name": "ExecStart", "value": "/bin/true"}
        ]
    })
}

fn error_code(body: &Value) -> Option<u64> {
    body.get("error")?.get("code")?.as_u64()
}

#[tokio::test(flavor = "multi_thread")]
async fn units_are_created_changed_read_and_destroyed() {
    let api = Api::start(100).await;
    assert_eq!(
        api.put("hello.service", hello("inactive")).await.0,
        StatusCode::CREATED
    );
    let (status, unit) = api.get("/units/hello.service").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(unit["name"], "hello.service");
    assert_eq!(unit["desiredState"], "inactive");
    assert_eq!(unit["currentState"], "inactive");
    assert_eq!(unit["options"][1]["value"], "/bin/true");

    let (status, _) = api
        .put("hello.service", json!({"desiredState": "launched"}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get("/units/hello.service").await.1["desiredState"],
        "launched"
    );

    // New options for an existing unit replace it.
    let mut changed = hello("launched");
    changed["options"][1]["value"] = json!("/bin/false");
    assert_eq!(
        api.put("hello.service", changed).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        api.get("/units/hello.service").await.1["options"][1]["value"],
        "/bin/false"
    );

    let r = api
        .http
        .delete(format!("{}/units/hello.service", api.base))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, body) = api.get("/units/hello.service").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), Some(404));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_and_change_nothing() {
    let api = Api::start(100).await;
    assert_eq!(
        api.put("kept.service", hello("inactive")).await.0,
        StatusCode::CREATED
    );
    // A live machine and the state it published of the unit: keys of each kind to leave alone.
    let _machine = machine_running(&api.registry, 1, &[("kept.service", "active")]).await;
    let live = format!("{:032x}", 1);
    let before = api.key_space().await;
    assert!(
        before.keys.len() >= 3,
        "the unit, the machine and the state are stored: {before:#?}"
    );

    let long = "a".repeat(300) + ".service";
    let cases: Vec<(&str, String, Value, StatusCode)> = vec![
        (
            "invalid name",
            "bad%20name.service".into(),
            hello("inactive"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "name too long",
            long,
            hello("inactive"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "path traversal",
            "..%2Fx.service".into(),
            hello("inactive"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "no type",
            "hello".into(),
            hello("inactive"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "name differs from the body's",
            "other.service".into(),
            json!({"name": "kept.service", "desiredState": "inactive", "options": hello("x")["options"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown desired state",
            "new.service".into(),
            hello("running"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "new unit without options",
            "new.service".into(),
            json!({"desiredState": "launched"}),
            StatusCode::CONFLICT,
        ),
        (
            "existing unit without desired state",
            "kept.service".into(),
            json!({}),
            StatusCode::CONFLICT,
        ),
        (
            "invalid [X-Fleet] combination",
            "combo.service".into(),
            json!({"desiredState": "inactive", "options": [
                {"section": "X-Fleet", "name": "MachineID", "value": "0123"},
                {"section": "X-Fleet", "name": "Global", "value": "true"}
            ]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a template cannot be launched",
            "tmpl@.service".into(),
            hello("launched"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "options of the wrong shape",
            "shape.service".into(),
            json!({"desiredState": "inactive", "options": [{"section": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, name, body, want) in cases {
        let (status, answer) = api.put(&name, body).await;
        assert_eq!(status, want, "{what}: {answer}");
        assert_eq!(
            error_code(&answer),
            Some(u64::from(want.as_u16())),
            "{what}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }

    let malformed = api
        .http
        .put(format!("{}/units/new.service", api.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("PUT");
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);

    let wrong_type = api
        .http
        .put(format!("{}/units/new.service", api.base))
        .header("content-type", "text/plain")
        .body(hello("inactive").to_string())
        .send()
        .await
        .expect("PUT");
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Sent on a connection of its own: the server answers before reading the whole body and
    // then closes that connection, which a pooled client could otherwise pick for the next
    // request of this test.
    let mut huge = hello("inactive");
    huge["options"][0]["value"] = json!("x".repeat(2 * 1024 * 1024));
    let oversized = reqwest::Client::new()
        .put(format!("{}/units/huge.service", api.base))
        .json(&huge)
        .send()
        .await
        .expect("PUT");
    assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = oversized.json().await.unwrap_or(Value::Null);
    assert_eq!(error_code(&body), Some(413));

    let post = api
        .http
        .post(format!("{}/units", api.base))
        .send()
        .await
        .expect("POST");
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);

    let bad_patch = api
        .http
        .patch(format!("{}/machines", api.base))
        .json(&json!([{"op": "add", "path": "/nope", "value": "x"}]))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(bad_patch.status(), StatusCode::BAD_REQUEST);
    let unknown_machine = api
        .http
        .patch(format!("{}/machines", api.base))
        .json(&json!([{"op": "add", "path": format!("/{}/metadata/role", "0".repeat(32)), "value": "x"}]))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(unknown_machine.status(), StatusCode::NOT_FOUND);
    // One unknown machine refuses the whole patch: the live machine's part is not written.
    let partly_unknown = api
        .http
        .patch(format!("{}/machines", api.base))
        .json(&json!([
            {"op": "add", "path": format!("/{live}/metadata/role"), "value": "x"},
            {"op": "add", "path": format!("/{}/metadata/role", "0".repeat(32)), "value": "x"}
        ]))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(partly_unknown.status(), StatusCode::NOT_FOUND);
    let no_value = api
        .http
        .patch(format!("{}/machines", api.base))
        .json(&json!([{"op": "add", "path": format!("/{live}/metadata/role")}]))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(no_value.status(), StatusCode::BAD_REQUEST);

    let (status, body) = api.get("/units?nextPageToken=garbage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), Some(400));

    let after = api.key_space().await;
    assert_eq!(after.keys, before.keys, "a refused request changed a key");
    assert_eq!(
        after.revision, before.revision,
        "a refused request wrote to etcd"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_are_paged_with_next_page_tokens() {
    let api = Api::start(2).await;
    for i in 0..5 {
        let (status, _) = api.put(&format!("u{i}.service"), hello("inactive")).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &token {
            Some(t) => format!("/units?nextPageToken={t}"),
            None => "/units".to_string(),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK);
        pages += 1;
        for u in page["units"].as_array().expect("units") {
            names.push(u["name"].as_str().expect("name").to_string());
        }
        match page["nextPageToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        names,
        (0..5).map(|i| format!("u{i}.service")).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_use_the_envelope_and_name_the_server() {
    let api = Api::start(100).await;
    let r = api
        .http
        .get(format!("{}/nowhere", api.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.headers().get("server").and_then(|v| v.to_str().ok()),
        Some("fleetd/9.9.9")
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(error_code(&body), Some(404));
}

/// Asserts that `response` is fleet's JSON error envelope carrying its own status code.
async fn assert_envelope(what: &str, response: reqwest::Response) -> StatusCode {
    let status = response.status();
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{what}: {status}"
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = response.text().await.unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: {status} {content_type:?} {text:?}"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(
        error_code(&body),
        Some(u64::from(status.as_u16())),
        "{what}: {text}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {text}"
    );
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rejection_uses_the_envelope() {
    let api = Api::start(100).await;
    assert_eq!(
        api.put("kept.service", hello("inactive")).await.0,
        StatusCode::CREATED
    );
    let before = api.key_space().await;
    let json = "application/json";
    let unit = hello("inactive").to_string();
    let unit = unit.as_bytes();
    // (what, "METHOD path", content type or "", body, status)
    let cases: [(&str, &str, &str, &[u8], u16); 31] = [
        // Paths axum cannot decode (invalid percent-encoding, not UTF-8).
        ("a name that is not UTF-8", "GET /fleet/v1/units/%FF", "", b"", 400),
        ("its state", "GET /fleet/v1/state/%FF", "", b"", 400),
        ("its journal", "GET /fleet/v1/units/%FF/journal", "", b"", 400),
        ("its status", "GET /fleet/v1/units/%C3%28/status", "", b"", 400),
        ("DELETE it", "DELETE /fleet/v1/units/%FF", "", b"", 400),
        ("PUT it", "PUT /fleet/v1/units/%FF", json, unit, 400),
        ("the legacy prefix", "GET /v1-alpha/units/%FF", "", b"", 400),
        ("a name with a slash", "GET /fleet/v1/units/a%2Fb.service", "", b"", 400),
        // Query strings.
        ("a query that is not UTF-8", "GET /fleet/v1/units?%FF=%FF&nextPageToken=%FF", "", b"", 400),
        ("a broken escape", "GET /fleet/v1/machines?nextPageToken=%zz", "", b"", 400),
        // {"limit":4294967295,"page":4294967295}
        ("a token of a huge page", "GET /fleet/v1/state?nextPageToken=eyJsaW1pdCI6NDI5NDk2NzI5NSwicGFnZSI6NDI5NDk2NzI5NX0=", "", b"", 400),
        ("no journals here", "GET /fleet/v1/units/kept.service/journal?lines=99999999999", "", b"", 501),
        // Bodies.
        ("JSON syntax", "PUT /fleet/v1/units/new.service", json, b"{\"options\": [", 400),
        ("JSON of the wrong shape", "PUT /fleet/v1/units/new.service", json, b"[1, 2]", 400),
        ("a body that is not UTF-8", "PUT /fleet/v1/units/new.service", json, b"\xff\xfe{", 400),
        ("an empty body", "PUT /fleet/v1/units/new.service", json, b"", 400),
        ("the wrong content type", "PUT /fleet/v1/units/new.service", "text/plain", unit, 415),
        ("no content type", "PUT /fleet/v1/units/new.service", "", unit, 415),
        ("PATCH: JSON syntax", "PATCH /fleet/v1/machines", json, b"[{", 400),
        // fleet decoded a PATCH as JSON whatever its content type: a bad body is a 400.
        ("PATCH: a form", "PATCH /fleet/v1/machines", "application/x-www-form-urlencoded", b"a=b", 400),
        ("PATCH: no content type, JSON syntax", "PATCH /fleet/v1/machines", "", b"[{", 400),
        ("PATCH: no content type, no body", "PATCH /fleet/v1/machines", "", b"", 400),
        // Routes and methods.
        ("an unknown route", "GET /fleet/v1/nowhere", "", b"", 404),
        ("an unknown root", "GET /nowhere", "", b"", 404),
        ("too deep", "GET /fleet/v1/units/a.service/b/c", "", b"", 404),
        ("a trailing slash", "GET /fleet/v1/units/", "", b"", 404),
        ("POST a list", "POST /fleet/v1/units", json, unit, 405),
        ("PATCH a unit", "PATCH /fleet/v1/units/kept.service", json, b"{}", 405),
        ("DELETE the machines", "DELETE /fleet/v1/machines", "", b"", 405),
        ("POST the metrics", "POST /metrics", "", b"", 405),
        ("an unknown method", "FOO /fleet/v1/units", "", b"", 405),
    ];
    for (what, request, content_type, body, want) in cases {
        let (method, path) = request.split_once(' ').expect("METHOD path");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = api
            .http
            .request(method, format!("{}{path}", api.root))
            .body(body.to_vec());
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect(what);
        assert_eq!(
            assert_envelope(what, response).await.as_u16(),
            want,
            "{what}"
        );
    }

    // Too large, on a connection of its own (the server closes it after answering).
    let oversized = reqwest::Client::new()
        .patch(format!("{}/machines", api.base))
        .header("content-type", json)
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .expect("PATCH");
    assert_eq!(
        assert_envelope("too large", oversized).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    assert_eq!(
        api.key_space().await,
        before,
        "a refused request changed etcd"
    );
}

/// A unit of about `kib` KiB: options of lines short enough for a unit file.
fn bulky(kib: usize, global: bool) -> Value {
    let mut options: Vec<Value> = (0..kib)
        .map(|i| json!({"section": "Service", "name": "Environment", "value": format!("X{i}={}", "x".repeat(1000))}))
        .collect();
    options.push(json!({"section": "Service", "name": "ExecStart", "value": "/bin/true"}));
    if global {
        options.push(json!({"section": "X-Fleet", "name": "Global", "value": "true"}));
    }
    json!({"desiredState": "launched", "options": options})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_global_unit_too_large_for_one_etcd_request_is_refused() {
    let api = Api::start(100).await;
    let before = api.key_space().await;
    // Within the body limit, but stored twice (units/ and global/) it would not fit one
    // etcd request: refused up front, not a 500 from etcd.
    let (status, body) = api.put("big.service", bulky(900, true)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_code(&body), Some(413));
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("global unit big.service"), "{message}");
    assert_eq!(
        api.key_space().await,
        before,
        "a refused request changed etcd"
    );
    // The same unit, not global, is stored once and fits; so does a smaller global unit.
    assert_eq!(
        api.put("big.service", bulky(900, false)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        api.put("half.service", bulky(600, true)).await.0,
        StatusCode::CREATED
    );
    // Making the stored unit global is refused too, and leaves it as it was.
    let before = api.key_space().await;
    assert_eq!(
        api.put("big.service", bulky(900, true)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(api.key_space().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn machine_metadata_no_unit_could_match_is_refused() {
    let api = Api::start(100).await;
    let _machine = machine_running(&api.registry, 1, &[]).await;
    let path = |key: &str| format!("/{:032x}/metadata/{key}", 1);
    let patch = |ops: Value| {
        api.http
            .patch(format!("{}/machines", api.base))
            .json(&ops)
            .send()
    };
    let ok = patch(json!([{"op": "add", "path": path("role"), "value": "web"}]))
        .await
        .expect("PATCH");
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let before = api.key_space().await;

    let bad = [
        ("a key with '='", path("a=b"), "x"),
        ("a key with a quote", path("a\"b"), "x"),
        ("a key with a space", path("a b"), "x"),
        ("a key with a specifier", path("%i"), "x"),
        ("a key with a control character", path("a\u{1}"), "x"),
        ("a value with '='", path("disk"), "a=b"),
        ("a value with a quote", path("disk"), "\"ssd\""),
        ("a value with a line break", path("disk"), "a\nb"),
        ("a value with a specifier", path("disk"), "%n"),
    ];
    for (what, path, value) in bad {
        // The refused operation comes after a good one: nothing of the body may be applied.
        let response = patch(json!([
            {"op": "add", "path": format!("/{:032x}/metadata/ok", 1), "value": "1"},
            {"op": "add", "path": path, "value": value},
        ]))
        .await
        .expect("PATCH");
        assert_eq!(
            assert_envelope(what, response).await,
            StatusCode::BAD_REQUEST,
            "{what}"
        );
    }
    let remove = patch(json!([{"op": "remove", "path": path("a=b")}]))
        .await
        .expect("PATCH");
    assert_eq!(
        assert_envelope("remove a key with '='", remove).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.key_space().await,
        before,
        "a refused request changed etcd"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn machine_metadata_is_patched_whatever_the_content_type() {
    // fleet checked the content type of `PUT /units/{name}` only: scripts PATCH machines
    // with curl's defaults, no content type or a form's.
    let api = Api::start(100).await;
    let _machine = machine_running(&api.registry, 1, &[]).await;
    let cases = [
        ("no content type", None, "none"),
        (
            "a form's",
            Some("application/x-www-form-urlencoded"),
            "form",
        ),
        ("text", Some("text/plain"), "text"),
    ];
    for (what, content_type, value) in cases {
        let ops =
            json!([{"op": "add", "path": format!("/{:032x}/metadata/via", 1), "value": value}]);
        let mut request = api
            .http
            .patch(format!("{}/machines", api.base))
            .body(ops.to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("PATCH");
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{what}");
        let (_, machines) = api.get("/machines").await;
        assert_eq!(
            machines["machines"][0]["metadata"]["via"],
            json!(value),
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_peer_endpoint_refuses_with_the_envelope() {
    let etcd = Etcd::start();
    let machine = MachineId::parse(&"a".repeat(32)).expect("machine id");
    let (_, address) = serve_peer(&etcd, &machine, fleet_registry::Liveness::new()).await;
    let root = format!("http://{address}");
    let http = reqwest::Client::new();
    let cases = [
        (
            reqwest::Method::GET,
            "/fleet/peer/v1/nowhere",
            StatusCode::NOT_FOUND,
        ),
        (reqwest::Method::GET, "/nowhere", StatusCode::NOT_FOUND),
        (
            reqwest::Method::POST,
            "/fleet/peer/v1/journal",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::DELETE,
            "/fleet/peer/v1/status",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::GET,
            "/fleet/peer/v1/journal?unit=%FF",
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/fleet/peer/v1/status?unit=a&unit=b",
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/fleet/peer/v1/journal?unit=a.service&lines=%FF",
            StatusCode::BAD_REQUEST,
        ),
        // Not placed on this machine: nothing of it is served.
        (
            reqwest::Method::GET,
            "/fleet/peer/v1/status?unit=sshd.service",
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::GET,
            "/fleet/peer/v1/journal?unit=sshd.service",
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, path, want) in cases {
        let what = format!("{method} {path}");
        let response = http
            .request(method, format!("{root}{path}"))
            .send()
            .await
            .expect("request");
        assert_eq!(assert_envelope(&what, response).await, want, "{what}");
    }
}

/// A member asked to renew its lease says how long it has answered no peer's question with
/// anything but zero: since its start until it answers one, then since that answer. The engine
/// shortens its wait before declaring a lost machine dead only on such answers
/// (`fleet_quorum::Timing::quiet_wait`).
#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_on_request_says_how_long_the_member_answered_no_peer() {
    use fleet_api::peer::{PeerClient, PeerWitness, RenewAnswer};
    use fleet_registry::Witness;

    let etcd = Etcd::start();
    let started = std::time::Instant::now();
    let id = MachineId::parse(&"a".repeat(32)).expect("machine id");
    let (_presence, machine) = registered_peer(&etcd, &id).await;
    let witness = PeerWitness::new(PeerClient::new(None));
    let timeout = Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // No question answered yet: quiet since the process (here, the liveness) started.
    let before = witness.renew_now(vec![machine.clone()], timeout).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].machine, machine.id);
    let quiet = before[0]
        .quiet_for
        .expect("the member says how long it was quiet");
    assert!(
        quiet >= Duration::from_millis(300) && quiet <= started.elapsed(),
        "{quiet:?}"
    );

    // A question answered (with how long no renewal was acknowledged: not zero): quiet since.
    // The member records its answer after the question is sent, so no longer than since then
    // (timed from after the answer came back, the bound raced the answer's way back).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = std::time::Instant::now();
    let answers = witness.since_renewal(vec![machine.clone()], timeout).await;
    assert_eq!(answers.len(), 1);
    assert!(answers[0] > Duration::ZERO, "{answers:?}");
    let after = witness.renew_now(vec![machine.clone()], timeout).await;
    let quiet_after = after[0].quiet_for.expect("quiet said");
    assert!(quiet_after <= asked.elapsed(), "{quiet_after:?}");

    // An older fleetd says nothing of it: read as not saying, which the engine counts as not
    // quiet.
    let older: RenewAnswer = serde_json::from_str(r#"{"renewed":true}"#).expect("older answer");
    assert_eq!(older.quiet_ms, None);
}

/// An answer to the majority protocol's questions counts only as the member that gave it: two
/// members announcing one address (a container bridge's, where each machine's questions reach
/// itself) must not make one machine's answer count twice towards a majority.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_counts_only_as_the_member_that_gave_it() {
    use fleet_api::peer::{PeerClient, PeerWitness};
    use fleet_registry::Witness;

    let etcd = Etcd::start();
    let a = MachineId::parse(&"a".repeat(32)).expect("machine id");
    let b = MachineId::parse(&"b".repeat(32)).expect("machine id");
    let (_presence, machine_a) = registered_peer(&etcd, &a).await;
    let address = machine_a.peer_address.clone().expect("peer address");
    let witness = PeerWitness::new(PeerClient::new(None));
    let timeout = Duration::from_secs(5);
    // Asked as b, a answers as a: no answer of b's. Asked as both, only a's counts.
    let both = vec![peer_machine(&a, &address), peer_machine(&b, &address)];
    let as_b = witness
        .since_renewal(vec![peer_machine(&b, &address)], timeout)
        .await;
    assert!(as_b.is_empty(), "{as_b:?}");
    assert_eq!(witness.since_renewal(both.clone(), timeout).await.len(), 1);
    let renewed: Vec<MachineId> = witness
        .renew_now(both, timeout)
        .await
        .into_iter()
        .map(|r| r.machine)
        .collect();
    assert_eq!(renewed, vec![a.clone()]);

    // An older fleetd names no machine: its answer counts unless another member asked
    // announces the same address.
    let older = axum::Router::new().route(
        "/fleet/peer/v1/presence",
        axum::routing::get(|| async { axum::Json(json!({"sinceRenewalMs": 5000})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let old_address = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, older).await });
    let alone = witness
        .since_renewal(vec![peer_machine(&b, &old_address)], timeout)
        .await;
    assert_eq!(alone, vec![Duration::from_millis(5000)]);
    let shared = witness
        .since_renewal(
            vec![
                peer_machine(&a, &old_address),
                peer_machine(&b, &old_address),
            ],
            timeout,
        )
        .await;
    assert!(shared.is_empty(), "{shared:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_etcd_is_a_503() {
    let (_, root) = serve(
        EtcdConfig {
            endpoints: vec![format!("http://127.0.0.1:{}", closed_port())],
            request_timeout: Duration::from_millis(500),
            ..EtcdConfig::default()
        },
        100,
    )
    .await;
    let r = reqwest::get(format!("{root}/fleet/v1/units"))
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.expect("json");
    assert_eq!(error_code(&body), Some(503));
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("etcd")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_id_live_elsewhere_is_a_503_until_registered() {
    // fleet's API answered 503 "fleet server unable to communicate with etcd" while its
    // fleetd could not register, e.g. because another live fleetd had its machine id.
    let etcd = Etcd::start();
    let config = EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: etcd.prefix.clone(),
        request_timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    };
    let registry = Registry::connect(&config).await.expect("registry");
    let registration = fleet_registry::Registration::new();
    let router = fleet_api::server::router_with(
        registry.clone(),
        "9.9.9",
        100,
        None,
        Some(registration.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let root = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let get = |path: &str| reqwest::get(format!("{root}{path}"));

    // The first fleetd with this id holds a short lease; a second one waits for it.
    let machine = Machine {
        id: MachineId::parse(&format!("{:032x}", 7)).expect("machine id"),
        public_ip: "10.0.0.7".into(),
        metadata: Default::default(),
        version: "test".to_string(),
        peer_address: None,
    };
    let first = Presence::start(
        registry.clone(),
        machine.clone(),
        Duration::from_secs(2),
        None,
    )
    .await
    .expect("the first registers");
    let second = tokio::spawn(Presence::start_with(
        registry.clone(),
        machine,
        Duration::from_secs(2),
        fleet_registry::PresenceOptions {
            registration: Some(registration.clone()),
            ..Default::default()
        },
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !registration.blocked_by_duplicate() {
        assert!(tokio::time::Instant::now() < deadline, "no duplicate seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for path in ["/fleet/v1/machines", "/fleet/v1/units", "/v1-alpha/state"] {
        let r = get(path).await.expect("GET");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(
            body,
            json!({"error": {"code": 503, "message": "fleet server unable to communicate with etcd"}}),
            "{path}"
        );
    }

    // The first one goes away; once its lease expires the second registers and the API
    // answers again.
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second registers once the first's lease expired")
        .expect("task")
        .expect("presence");
    assert!(!registration.blocked_by_duplicate());
    let r = get("/fleet/v1/machines").await.expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
    drop(second);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_discovery_document_describes_the_api() {
    let api = Api::start(100).await;
    for prefix in ["/fleet/v1", "/v1-alpha"] {
        let r = api
            .http
            .get(format!("{}{prefix}/discovery", api.root))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), StatusCode::OK, "{prefix}");
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{prefix}"
        );
        let doc: Value = r.json().await.expect("the discovery document is JSON");
        assert_eq!(doc["kind"], "discovery#restDescription");
        assert_eq!(doc["basePath"], "/fleet/v1/");
        for schema in [
            "Unit",
            "UnitOption",
            "UnitPage",
            "UnitState",
            "UnitStatePage",
            "Machine",
            "MachinePage",
        ] {
            assert_eq!(doc["schemas"][schema]["id"], schema, "schema {schema}");
        }
        let methods = |resource: &str| -> Vec<(String, String, String)> {
            doc["resources"][resource]["methods"]
                .as_object()
                .unwrap_or_else(|| panic!("resource {resource}"))
                .iter()
                .map(|(name, m)| {
                    (
                        name.clone(),
                        m["httpMethod"].as_str().unwrap_or_default().to_string(),
                        m["path"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        };
        let t = |n: &str, m: &str, p: &str| (n.to_string(), m.to_string(), p.to_string());
        let mut units = methods("Units");
        units.sort();
        assert_eq!(
            units,
            [
                t("Delete", "DELETE", "units/{unitName}"),
                t("Get", "GET", "units/{unitName}"),
                t("List", "GET", "units"),
                t("Set", "PUT", "units/{unitName}"),
            ]
        );
        let mut states = methods("UnitState");
        states.sort();
        assert_eq!(
            states,
            [
                t("Get", "GET", "state/{unitName}"),
                t("List", "GET", "state")
            ]
        );
        assert_eq!(methods("Machines"), [t("List", "GET", "machines")]);
        assert_eq!(
            methods("Members"),
            [t("Remove", "DELETE", "machines/{machineID}")]
        );
        assert_eq!(
            doc["resources"]["Members"]["methods"]["Remove"]["response"]["$ref"],
            "MachineRemoval"
        );
        assert_eq!(doc["schemas"]["MachineRemoval"]["id"], "MachineRemoval");
        assert_eq!(
            doc["resources"]["Units"]["methods"]["Set"]["request"]["$ref"],
            "Unit"
        );
    }
    let r = api
        .http
        .post(format!("{}/discovery", api.base))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_legacy_prefix_serves_the_same_api() {
    let api = Api::start(100).await;
    let alpha = format!("{}/v1-alpha", api.root);
    // A PUT through the legacy prefix is seen through both.
    let r = api
        .http
        .put(format!("{alpha}/units/old.service"))
        .json(&hello("inactive"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        api.put("new.service", hello("launched")).await.0,
        StatusCode::CREATED
    );
    let r = api
        .http
        .put(format!("{alpha}/units/new.service"))
        .json(&json!({"desiredState": "loaded"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for path in [
        "/units",
        "/units/old.service",
        "/units/new.service",
        "/state",
        "/machines",
    ] {
        let (status, body) = api.get(path).await;
        let r = api
            .http
            .get(format!("{alpha}{path}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.json::<Value>().await.expect("json"), body, "{path}");
    }
    let (_, units) = api.get("/units").await;
    let names: Vec<&str> = units["units"]
        .as_array()
        .expect("units")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["new.service", "old.service"]);
    assert_eq!(
        api.get("/units/new.service").await.1["desiredState"],
        "loaded"
    );
    // Refusals and unknown paths look the same under both prefixes.
    let r = api
        .http
        .put(format!("{alpha}/units/bad%20name.service"))
        .json(&hello("inactive"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = api
        .http
        .get(format!("{alpha}/nowhere"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.headers().get("server").and_then(|v| v.to_str().ok()),
        Some("fleetd/9.9.9")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_of_one_unit() {
    let api = Api::start(100).await;
    let (status, body) = api.get("/state/nothing.service").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), Some(404));
    let (status, _) = api.get("/state/bad%20name.service").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    api.put("hello.service", hello("launched")).await;
    let machine = machine_running(&api.registry, 1, &[("hello.service", "active")]).await;
    // A unit's state is the one the machine it is placed on reports: before it is placed
    // there, what the machine reports of it is that machine's (`?machineID=`) only.
    let (status, _) = api.get("/state/hello.service").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let of_machine = api.get(&format!("/state?machineID={:032x}", 1)).await.1;
    assert_eq!(of_machine["states"][0]["name"], "hello.service");
    let PresenceStatus::Alive { lease } = machine.status() else {
        panic!("presence fenced");
    };
    let id = MachineId::parse(&format!("{:032x}", 1)).expect("machine id");
    let leadership = api
        .registry
        .campaign(&id, lease)
        .await
        .expect("campaign")
        .expect("leads");
    let stored = api
        .registry
        .unit(&UnitName::parse("hello.service").expect("name"))
        .await
        .expect("unit")
        .expect("stored");
    api.registry
        .apply_placements(
            leadership,
            &[PlacementOp::Put {
                machine: id,
                placement: Placement::for_unit(&stored),
            }],
        )
        .await
        .expect("place");
    let (status, state) = api.get("/state/hello.service").await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(state["name"], "hello.service");
    assert_eq!(state["machineID"], format!("{:032x}", 1));
    assert_eq!(state["systemdActiveState"], "active");
    assert_eq!(
        api.get("/state").await.1["states"][0],
        state,
        "the item is the list's entry"
    );
}

/// One sample of a metrics page: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses a Prometheus text page: every line is a `# HELP`/`# TYPE` comment or a sample
/// `name{label="value",...} value`. Returns the samples as `(name, labels, value)`.
fn parse_metrics(text: &str) -> Vec<Sample> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next(), words.next());
            assert!(matches!(kind, Some("HELP" | "TYPE")), "{line:?}");
            assert!(name.is_some_and(is_name), "{line:?}");
            if kind == Some("TYPE") {
                assert!(
                    matches!(words.next(), Some("counter" | "gauge" | "histogram")),
                    "{line:?}"
                );
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{line:?}"));
        let name = &line[..name_end];
        assert!(is_name(name), "bad metric name in {line:?}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            loop {
                let (start, c) = chars.next().unwrap_or_else(|| panic!("{line:?}"));
                if c == '}' {
                    rest = &inner[start + 1..];
                    break;
                }
                let eq = inner[start..]
                    .find("=\"")
                    .unwrap_or_else(|| panic!("{line:?}"));
                let key = &inner[start..start + eq];
                assert!(is_name(key), "bad label name in {line:?}");
                while chars.peek().is_some_and(|(i, _)| *i < start + eq + 2) {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    match chars.next().map(|(_, c)| c) {
                        Some('"') => break,
                        Some('\\') => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c @ ('\\' | '"')) => value.push(c),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        Some(c) => value.push(c),
                        None => panic!("unterminated label value in {line:?}"),
                    }
                }
                labels.push((key.to_string(), value));
                if chars.peek().is_some_and(|(_, c)| *c == ',') {
                    chars.next();
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.push((name.to_string(), labels, value));
    }
    samples
}

async fn scrape(root: &str) -> (reqwest::StatusCode, String, String) {
    let r = reqwest::get(format!("{root}/metrics"))
        .await
        .expect("GET /metrics");
    let status = r.status();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, r.text().await.expect("body"))
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_reflect_the_registry() {
    let api = Api::start(100).await;
    // No engine runs in this test binary: these three are the reconcile histogram's only
    // observations, one below the first bucket bound, one between bounds, one above them all.
    for seconds in [0.0005, 0.3, 60.0] {
        fleet_telemetry::ENGINE_RECONCILE.observe(seconds);
    }
    for (name, state) in [
        ("a.service", "launched"),
        ("b.service", "launched"),
        ("c.service", "inactive"),
    ] {
        assert_eq!(api.put(name, hello(state)).await.0, StatusCode::CREATED);
    }
    let _machine = machine_running(
        &api.registry,
        1,
        &[
            ("a.service", "active"),
            ("b.service", "failed"),
            ("c.service", "weird \"state\"\\"),
        ],
    )
    .await;
    let (status, content_type, text) = scrape(&api.root).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let samples = parse_metrics(&text);
    let v = |name: &str, labels: &[(&str, &str)]| value_of(&samples, name, labels);
    assert_eq!(v("fleet_etcd_up", &[]), Some(1.0), "{text}");
    // A fleetd that does not lead the engine counts the machines only: counting units and
    // states reads them whole.
    assert_eq!(v("fleet_machines", &[]), Some(1.0));
    assert_eq!(v("fleet_engine_leader", &[]), Some(0.0));
    for gauge in ["fleet_units", "fleet_unit_states"] {
        assert!(
            !samples.iter().any(|(name, _, _)| name == gauge),
            "{gauge} served by a fleetd that does not lead: {text}"
        );
    }

    // The leader counts them (no other test of this binary leads the engine).
    let _leading = fleet_telemetry::LeaderGuard::new();
    let text = scrape(&api.root).await.2;
    let samples = parse_metrics(&text);
    let v = |name: &str, labels: &[(&str, &str)]| value_of(&samples, name, labels);
    assert_eq!(v("fleet_engine_leader", &[]), Some(1.0));
    assert_eq!(
        v("fleet_units", &[("desired_state", "launched")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        v("fleet_units", &[("desired_state", "inactive")]),
        Some(1.0)
    );
    assert_eq!(v("fleet_units", &[("desired_state", "loaded")]), Some(0.0));
    assert_eq!(
        v("fleet_unit_states", &[("active_state", "active")]),
        Some(1.0)
    );
    assert_eq!(
        v("fleet_unit_states", &[("active_state", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        v(
            "fleet_unit_states",
            &[("active_state", "weird \"state\"\\")]
        ),
        Some(1.0),
        "label values are escaped: {text}"
    );
    assert_eq!(v("fleet_machines", &[]), Some(1.0));
    for counter in [
        "fleet_engine_placements_total",
        "fleet_engine_whole_plans_total",
        "fleet_engine_cluster_reads_total",
        "fleet_etcd_errors_total",
    ] {
        assert!(v(counter, &[]).is_some(), "{counter} missing: {text}");
    }
    // The histogram against the observations made above, not against itself.
    for (le, want) in [
        ("0.001", 1.0),
        ("0.25", 1.0),
        ("0.5", 2.0),
        ("5", 2.0),
        ("+Inf", 3.0),
    ] {
        assert_eq!(
            v("fleet_engine_reconcile_seconds_bucket", &[("le", le)]),
            Some(want),
            "bucket le={le}: {text}"
        );
    }
    assert_eq!(
        v("fleet_engine_reconcile_seconds_count", &[]),
        Some(3.0),
        "{text}"
    );
    let sum = v("fleet_engine_reconcile_seconds_sum", &[]).expect("a _sum sample");
    assert!((sum - 60.3005).abs() < 1e-9, "sum {sum}: {text}");

    // A unit through the legacy prefix counts the same.
    let r = api
        .http
        .put(format!("{}/v1-alpha/units/d.service", api.root))
        .json(&hello("launched"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::CREATED);
    let samples = parse_metrics(&scrape(&api.root).await.2);
    assert_eq!(
        value_of(&samples, "fleet_units", &[("desired_state", "launched")]),
        Some(3.0)
    );

    let r = api
        .http
        .post(format!("{}/metrics", api.root))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_answer_while_etcd_is_unreachable() {
    let (_, root) = serve(
        EtcdConfig {
            endpoints: vec![format!("http://127.0.0.1:{}", closed_port())],
            request_timeout: Duration::from_millis(500),
            ..EtcdConfig::default()
        },
        100,
    )
    .await;
    let (status, _, text) = scrape(&root).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let samples = parse_metrics(&text);
    assert_eq!(
        value_of(&samples, "fleet_etcd_up", &[]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(value_of(&samples, "fleet_machines", &[]), None, "{text}");
    assert!(
        value_of(&samples, "fleet_etcd_errors_total", &[]).is_some_and(|n| n >= 1.0),
        "the failed reads are counted: {text}"
    );
}

/// A unit whose start failed on its machine says so, with what systemd said; a unit that
/// started says nothing of the kind.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_start_is_shown_with_the_unit() {
    use fleet_registry::{Placement, PlacementOp};
    let api = Api::start(100).await;
    let presence = machine_running(&api.registry, 1, &[]).await;
    let PresenceStatus::Alive { lease } = presence.status() else {
        panic!("presence fenced at once");
    };
    let id = MachineId::parse(&format!("{:032x}", 1)).expect("machine id");
    let leadership = api
        .registry
        .campaign(&id, lease)
        .await
        .expect("campaign")
        .expect("the only machine leads");
    for (name, failure) in [
        ("broken.service", Some("failed/failed, result exit-code")),
        ("fine.service", None),
    ] {
        api.put(name, hello("launched")).await;
        let unit_name = UnitName::parse(name).expect("unit name");
        let unit = api
            .registry
            .unit(&unit_name)
            .await
            .expect("unit")
            .expect("unit exists");
        api.registry
            .apply_placements(
                leadership,
                &[PlacementOp::Put {
                    machine: id.clone(),
                    placement: Placement::for_unit(&unit),
                }],
            )
            .await
            .expect("place the unit");
        api.registry
            .publish_state(
                lease,
                &UnitState {
                    name: unit_name.clone(),
                    hash: unit.hash(),
                    machine_id: id.clone(),
                    job_state: JobState::Launched,
                    systemd_load_state: "loaded".into(),
                    systemd_active_state: "failed".into(),
                    systemd_sub_state: "failed".into(),
                    start_failure: failure.map(str::to_string),
                    health: None,
                },
            )
            .await
            .expect("publish a state");
        let (status, body) = api.get(&format!("/units/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["currentState"], "launched", "{body}");
        match failure {
            Some(f) => assert_eq!(body["startFailure"], f, "{body}"),
            None => assert!(body.get("startFailure").is_none(), "{body}"),
        }
        let (_, list) = api.get("/units").await;
        let listed = list["units"]
            .as_array()
            .and_then(|units| units.iter().find(|u| u["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {list}"));
        assert_eq!(listed, body, "the list shows the unit as GET does");
    }
}

/// etcd out of space (its quota alarm): a write answers a clear 507 and writes nothing, reads
/// go on, and once an operator has freed space writes work again.
#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_out_of_space_refuses_writes_clearly_and_recovers() {
    let api = Api::start_on(Etcd::start_with(&["--quota-backend-bytes=1048576"]), 100).await;
    // About 100 kB each, in lines systemd accepts.
    let big = |i: usize| {
        let mut options: Vec<Value> = (0..50)
            .map(
                |_| json!({"section": "Service", "name": "Environment", "value": "x".repeat(2000)}),
            )
            .collect();
        options.push(
            json!({"section": "Service", "name": "ExecStart", "value": format!("/bin/true {i}")}),
        );
        json!({"desiredState": "inactive", "options": options})
    };
    let mut stored = 0;
    let refusal = loop {
        let (status, body) = api.put(&format!("fill{stored}.service"), big(stored)).await;
        match status {
            StatusCode::CREATED => stored += 1,
            _ => break (status, body),
        }
        assert!(stored < 100, "a 1 MiB quota took 100 units of 100 kB");
    };
    assert!(stored > 0, "not even one unit fitted: {refusal:?}");
    assert_eq!(refusal.0, StatusCode::INSUFFICIENT_STORAGE, "{refusal:?}");
    assert_eq!(error_code(&refusal.1), Some(507), "{refusal:?}");
    let message = refusal.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("out of space"), "{message}");
    assert!(message.contains("alarm disarm"), "{message}");

    // Nothing is half-written, and reads go on.
    let before = api.etcd.key_space().await;
    let (status, _) = api.put("one-more.service", hello("launched")).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        api.etcd.key_space().await,
        before,
        "a refused write changed etcd"
    );
    let (status, list) = api.get("/units").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["units"].as_array().map(Vec::len), Some(stored));

    // An operator frees space: writes work again.
    api.etcd.free_space().await;
    let (status, body) = api.put("after.service", hello("launched")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// `PUT` or `DELETE` of `/drains/{machine}`.
async fn drain_request(api: &Api, method: reqwest::Method, machine: &str) -> (StatusCode, Value) {
    let r = api
        .http
        .request(method, format!("{}/drains/{machine}", api.base))
        .send()
        .await
        .expect("drain request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn drains_start_end_and_refuse_bad_machines_changing_nothing() {
    use reqwest::Method;
    let api = Api::start(100).await;
    let _machine = machine_running(&api.registry, 1, &[]).await;
    let id = format!("{:032x}", 1);

    // Refused: not a machine id, not a member, not drained. etcd is unchanged.
    let before = api.key_space().await;
    for (method, machine, status) in [
        (Method::PUT, "not-an-id", StatusCode::BAD_REQUEST),
        (Method::PUT, "%FF", StatusCode::BAD_REQUEST),
        (Method::PUT, &"9".repeat(32), StatusCode::NOT_FOUND),
        (Method::DELETE, id.as_str(), StatusCode::NOT_FOUND),
        (Method::DELETE, "xyz", StatusCode::BAD_REQUEST),
    ] {
        let (got, body) = drain_request(&api, method.clone(), machine).await;
        assert_eq!(got, status, "{method} {machine}: {body}");
        assert_eq!(
            body["error"]["code"],
            status.as_u16(),
            "{method} {machine}: {body}"
        );
    }
    let (status, body) = api.get(&format!("/drains/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        api.key_space().await,
        before,
        "refused requests change nothing"
    );
    assert_eq!(api.get("/drains").await.1, json!({"drains": []}));

    // Started (201), started again (200), listed, ended (204).
    let (status, body) = drain_request(&api, Method::PUT, &id).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["machine"], id.as_str());
    assert_eq!(body["state"], "drained", "nothing placed there: {body}");
    assert_eq!(
        (body["units"].clone(), body["stopping"].clone()),
        (json!(0), json!(0))
    );
    assert!(
        body["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{body}"
    );
    let (status, again) = drain_request(&api, Method::PUT, &id).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["since"], body["since"], "the drain is the same one");
    let (status, list) = api.get("/drains").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["drains"], json!([body]));
    assert_eq!(api.get(&format!("/drains/{id}")).await.1, body);
    let (status, _) = drain_request(&api, Method::DELETE, &id).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(api.get("/drains").await.1, json!({"drains": []}));
    // Only these methods.
    let r = api
        .http
        .post(format!("{}/drains/{id}", api.base))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// `DELETE /machines/{machine}` through `api`'s base URL `base`.
async fn remove_machine(api: &Api, base: &str, machine: &str) -> (StatusCode, Value) {
    let r = api
        .http
        .delete(format!("{base}/machines/{machine}"))
        .send()
        .await
        .expect("DELETE /machines");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_machine_takes_only_a_member_whose_lease_is_gone_and_that_does_not_answer() {
    let api = Api::start(100).await;
    // An API that asks peers, as fleetd's does, serving as machine 5 (whose lease is gone).
    let serving = MachineId::parse(&format!("{:032x}", 5)).expect("machine id");
    let router = fleet_api::server::router_with(
        api.registry.clone(),
        "9.9.9",
        100,
        Some(fleet_api::server::Inspect {
            machine: serving.clone(),
            peers: fleet_api::peer::PeerClient::new(None),
            removal_wait: Duration::from_millis(300),
        }),
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}/fleet/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });

    // Machine 1 is live; machine 2's lease is gone, but its peer endpoint answers (cut off
    // from etcd); machine 3's lease is gone and nothing answers at its address, with one unit
    // placed there; machine 4 was never a member; machine 6's member record does not decode
    // (nothing to ask). Written by hand: no presence follows the members (it would record
    // readings of them meanwhile).
    let member = |n: u8, address: &str| {
        let id = MachineId::parse(&format!("{n:032x}")).expect("machine id");
        let record = fleet_registry::Member {
            machine: peer_machine(&id, address),
            seen_revision: 0,
            seen_members: 3,
        };
        (id, serde_json::to_vec(&record).expect("encode"))
    };
    let (one, record) = member(1, &format!("127.0.0.1:{}", closed_port()));
    api.etcd.put_raw(&format!("members/{one}"), &record).await;
    let machine = serde_json::to_vec(&peer_machine(&one, "127.0.0.1:1")).expect("encode");
    api.etcd.put_raw(&format!("machines/{one}"), &machine).await;
    let (_, record) = member(5, &format!("127.0.0.1:{}", closed_port()));
    api.etcd
        .put_raw(&format!("members/{serving}"), &record)
        .await;
    let two = MachineId::parse(&format!("{:032x}", 2)).expect("machine id");
    let (_peer, answering) = serve_peer(&api.etcd, &two, fleet_registry::Liveness::new()).await;
    let (two, record) = member(2, &answering);
    api.etcd.put_raw(&format!("members/{two}"), &record).await;
    let (three, record) = member(3, &format!("127.0.0.1:{}", closed_port()));
    api.etcd.put_raw(&format!("members/{three}"), &record).await;
    api.etcd.put_raw(&format!("readings/{three}"), b"{}").await;
    api.etcd
        .put_raw(&format!("placements/{three}/a.service"), b"{}")
        .await;
    api.etcd.put_raw(&format!("drain/{three}"), b"{}").await;
    let six = MachineId::parse(&format!("{:032x}", 6)).expect("machine id");
    api.etcd
        .put_raw(&format!("members/{six}"), b"not json")
        .await;

    // Refused, changing nothing: not an id, not a member, live, answering; and by an API that
    // cannot ask the peers (no machine of its own).
    let before = api.key_space().await;
    let (status, body) = remove_machine(&api, &api.base, three.as_str()).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    for (machine, status, says) in [
        ("not-an-id", StatusCode::BAD_REQUEST, "machine id"),
        (
            "%FF",
            StatusCode::BAD_REQUEST,
            "invalid name or id in the path",
        ),
        (&"4".repeat(32), StatusCode::NOT_FOUND, "not a member"),
        (one.as_str(), StatusCode::CONFLICT, "holds its lease"),
        (
            serving.as_str(),
            StatusCode::CONFLICT,
            "serving this request",
        ),
        (
            two.as_str(),
            StatusCode::CONFLICT,
            "answers at its peer address",
        ),
    ] {
        let (got, body) = remove_machine(&api, &base, machine).await;
        assert_eq!(got, status, "{machine}: {body}");
        assert_eq!(body["error"]["code"], status.as_u16(), "{machine}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{machine}: {body}");
    }
    assert_eq!(
        api.key_space().await,
        before,
        "refused requests change nothing"
    );

    // Removed: its placement, member record, reading and drain go; it is said once, in an
    // event.
    let asked = std::time::Instant::now();
    let (status, body) = remove_machine(&api, &base, three.as_str()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Not before the wait after the lease was found gone (a bound of safety, not of speed).
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "removed {:?} after it was asked",
        asked.elapsed()
    );
    assert_eq!(body, json!({"machine": three.as_str(), "units": 1}));
    let keys = api.key_space().await;
    let has = |key: String| keys.keys.iter().any(|k| k.key.ends_with(key.as_bytes()));
    assert!(!has(format!("members/{three}")), "member record kept");
    assert!(!has(format!("readings/{three}")), "reading kept");
    assert!(!has(format!("drain/{three}")), "drain kept");
    assert!(
        !has(format!("placements/{three}/a.service")),
        "placement kept"
    );
    let (status, events) = api.get("/events").await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let declared: Vec<&Value> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "declared-dead" && e["machine"] == three.as_str())
        .collect();
    assert_eq!(declared.len(), 1, "{events}");
    assert!(
        declared[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("removed by hand") && m.contains("1 units")),
        "{events}"
    );
    let (status, body) = remove_machine(&api, &base, three.as_str()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "removed twice: {body}");
    let (status, body) = remove_machine(&api, &base, six.as_str()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"machine": six.as_str(), "units": 0}));

    // Only DELETE.
    let r = api
        .http
        .get(format!("{base}/machines/{three}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// `POST` of `body` (JSON) to `path` under the API's base.
async fn post(api: &Api, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = api.http.post(format!("{}{path}", api.base));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.expect("POST");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_refuse_bad_requests_changing_nothing_and_are_steered() {
    let api = Api::start(100).await;
    for name in ["web@1.service", "web@2.service"] {
        assert_eq!(
            api.put(name, hello("launched")).await.0,
            StatusCode::CREATED
        );
    }
    let mut global = hello("launched");
    global["options"]
        .as_array_mut()
        .unwrap()
        .push(json!({"section": "X-Fleet", "name": "Global", "value": "true"}));
    assert_eq!(api.put("g.service", global).await.0, StatusCode::CREATED);
    let new_options = json!([{"section": "Service", "name": "ExecStart", "value": "/bin/new"}]);
    let asked =
        |units: Value| json!({"units": units, "options": new_options.clone(), "maxParallel": 1});
    let global_options = json!([
        {"section": "Service", "name": "ExecStart", "value": "/bin/new"},
        {"section": "X-Fleet", "name": "Global", "value": "true"}
    ]);

    let before = api.key_space().await;
    let refused: Vec<(Value, StatusCode)> = vec![
        (json!({"units": []}), StatusCode::BAD_REQUEST),
        (json!("not an object"), StatusCode::BAD_REQUEST),
        (asked(json!(["../etc"])), StatusCode::BAD_REQUEST),
        (asked(json!(["web@.service"])), StatusCode::BAD_REQUEST),
        (
            asked(json!(["web@1.service", "web@1.service"])),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"units": ["web@1.service"], "options": []}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"units": ["web@1.service"], "options": new_options.clone(), "maxParallel": 0}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"units": ["web@1.service"], "options": new_options.clone(), "minHealthyMs": 5000, "healthyDeadlineMs": 5000}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"units": ["web@1.service"], "options": [{"section": "X-Fleet", "name": "MachineID", "value": "a"}, {"section": "X-Fleet", "name": "Global", "value": "true"}]}),
            StatusCode::BAD_REQUEST,
        ),
        // An update does not make a unit global, nor a global unit placed.
        (asked(json!(["g.service"])), StatusCode::BAD_REQUEST),
        (
            json!({"units": ["web@1.service"], "options": global_options.clone()}),
            StatusCode::BAD_REQUEST,
        ),
        (
            asked(Value::from(
                (0..128)
                    .map(|i| format!("web@{i}.service"))
                    .collect::<Vec<_>>(),
            )),
            StatusCode::BAD_REQUEST,
        ),
        (asked(json!(["nope.service"])), StatusCode::NOT_FOUND),
    ];
    for (body, status) in refused {
        let (got, answer) = post(&api, "/updates", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(
            error_code(&answer),
            Some(status.as_u16() as u64),
            "{answer}"
        );
    }
    for (path, status) in [
        ("/updates/zz", StatusCode::BAD_REQUEST),
        ("/updates/abc", StatusCode::NOT_FOUND),
    ] {
        let (got, answer) = api.get(path).await;
        assert_eq!(got, status, "{path}: {answer}");
        assert_eq!(post(&api, &format!("{path}/pause"), None).await.0, status);
    }
    assert_eq!(
        api.key_space().await,
        before,
        "refused requests change nothing"
    );

    // Created; a unit in it cannot be in another; steered; over, it cannot be steered.
    let (status, update) = post(
        &api,
        "/updates",
        Some(asked(json!(["web@2.service", "web@1.service"]))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{update}");
    assert_eq!(update["state"], "running");
    assert_eq!(
        update["units"][0]["name"], "web@2.service",
        "in the order asked"
    );
    assert_eq!(update["units"][0]["phase"], "pending");
    let id = update["id"].as_str().unwrap().to_string();
    let (status, busy) = post(&api, "/updates", Some(asked(json!(["web@1.service"])))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{busy}");
    assert_eq!(api.get(&format!("/updates/{id}")).await.1, update);
    let (status, paused) = post(&api, &format!("/updates/{id}/pause"), None).await;
    assert_eq!(
        (status, paused["state"].clone()),
        (StatusCode::OK, json!("paused"))
    );
    let (_, resumed) = post(&api, &format!("/updates/{id}/resume"), None).await;
    assert_eq!(resumed["state"], "running");
    let (_, aborted) = post(&api, &format!("/updates/{id}/abort"), None).await;
    assert_eq!(aborted["state"], "aborted");
    assert_eq!(aborted["reason"], "aborted by hand");
    let (status, answer) = post(&api, &format!("/updates/{id}/resume"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let (_, list) = api.get("/updates").await;
    assert_eq!(list["updates"].as_array().map(Vec::len), Some(1));
    // Its units are free again; a template's MaxUnavailable bounds maxParallel.
    let limited = json!({
        "units": ["web@1.service"],
        "options": [
            {"section": "Service", "name": "ExecStart", "value": "/bin/new"},
            {"section": "X-Fleet", "name": "MaxUnavailable", "value": "1"}
        ],
        "maxParallel": 3
    });
    let (status, update) = post(&api, "/updates", Some(limited)).await;
    assert_eq!(status, StatusCode::CREATED, "{update}");
    assert_eq!(update["maxParallel"], 1);

    // A global unit: an entry per machine that runs it, by id, then its own content.
    let _two = machine_running(&api.registry, 2, &[("g.service", "active")]).await;
    let _one = machine_running(&api.registry, 1, &[("g.service", "active")]).await;
    let _three = machine_running(&api.registry, 3, &[]).await;
    let (status, update) = post(
        &api,
        "/updates",
        Some(json!({"units": ["g.service"], "options": global_options.clone()})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{update}");
    let entries: Vec<(Value, Value, Value)> = update["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].clone(), u["machine"].clone(), u["global"].clone()))
        .collect();
    assert_eq!(
        entries,
        [
            (
                json!("g.service"),
                json!(format!("{:032x}", 1)),
                json!(true)
            ),
            (
                json!("g.service"),
                json!(format!("{:032x}", 2)),
                json!(true)
            ),
            (json!("g.service"), Value::Null, json!(true)),
        ]
    );
    // Read back and steered whole (its machines are kept apart from its record).
    let id = update["id"].as_str().unwrap().to_string();
    assert_eq!(api.get(&format!("/updates/{id}")).await.1, update);
    let (_, paused) = post(&api, &format!("/updates/{id}/pause"), None).await;
    assert_eq!(paused["units"], update["units"]);
    assert_eq!(api.get(&format!("/updates/{id}")).await.1, paused);
    let (_, list) = api.get("/updates").await;
    let listed = list["updates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == id.as_str());
    // A list counts the machines of global units rather than listing them.
    let mut counted = paused.clone();
    counted["units"]
        .as_array_mut()
        .unwrap()
        .retain(|u| u.get("machine").is_none());
    counted["machines"] = json!({"g.service": {"pending": 2}});
    assert_eq!(listed, Some(&counted));

    // More machines of a global unit at a time than an update's record keeps the times of.
    let mut h = hello("launched");
    h["options"]
        .as_array_mut()
        .unwrap()
        .push(json!({"section": "X-Fleet", "name": "Global", "value": "true"}));
    assert_eq!(api.put("h.service", h).await.0, StatusCode::CREATED);
    let _four = machine_running(&api.registry, 4, &[("h.service", "active")]).await;
    // What an update writes (the machines' readings of the members may change meanwhile).
    let updates = || async {
        let prefixes = ["updates/", "update-machines/", "updating/"]
            .map(|p| format!("{}{p}", api.etcd.prefix).into_bytes());
        let mut keys = api.key_space().await.keys;
        keys.retain(|k| prefixes.iter().any(|p| k.key.starts_with(p)));
        keys
    };
    let before = updates().await;
    let (status, answer) = post(
        &api,
        "/updates",
        Some(json!({"units": ["h.service"], "options": global_options, "maxParallel": 201})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(error_code(&answer), Some(400), "{answer}");
    assert!(
        answer
            .to_string()
            .contains("at most 200 machines at a time"),
        "{answer}"
    );
    assert_eq!(updates().await, before, "refused, nothing changed");
}
