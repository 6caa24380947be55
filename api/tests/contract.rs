//! The API's contract, against a real etcd: every status code fleet's clients rely on, and
//! after every refused request the registry is unchanged.

use std::time::Duration;

use fleet_registry::{EtcdConfig, Registry};
use fleet_testkit::{closed_port, Etcd};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Api {
    _etcd: Option<Etcd>,
    registry: Registry,
    base: String,
    http: reqwest::Client,
}

async fn serve(config: EtcdConfig, page_size: u32) -> (Registry, String) {
    let registry = Registry::connect(&config).await.expect("registry");
    let router = fleet_api::server::router(registry.clone(), "9.9.9", page_size);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}/fleet/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (registry, base)
}

impl Api {
    async fn start(page_size: u32) -> Api {
        let etcd = Etcd::start();
        let (registry, base) = serve(
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
            _etcd: Some(etcd),
            registry,
            base,
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

    /// Everything a refused request must leave alone.
    async fn state(&self) -> String {
        format!(
            "{:?}",
            (
                self.registry.units().await.expect("units"),
                self.registry.machines().await.expect("machines")
            )
        )
    }
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
    let before = api.state().await;

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

    let mut huge = hello("inactive");
    huge["options"][0]["value"] = json!("x".repeat(2 * 1024 * 1024));
    let (status, body) = api.put("huge.service", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
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

    let (status, body) = api.get("/units?nextPageToken=garbage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), Some(400));

    assert_eq!(
        api.state().await,
        before,
        "a refused request changed the registry"
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

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_etcd_is_a_503() {
    let (_, base) = serve(
        EtcdConfig {
            endpoints: vec![format!("http://127.0.0.1:{}", closed_port())],
            request_timeout: Duration::from_millis(500),
            ..EtcdConfig::default()
        },
        100,
    )
    .await;
    let r = reqwest::get(format!("{base}/units")).await.expect("GET");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.expect("json");
    assert_eq!(error_code(&body), Some(503));
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("etcd")));
}
