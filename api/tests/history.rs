//! Units' history and rollback through the API, against a real etcd: what they answer, and
//! that every refused request leaves etcd unchanged.

use std::time::Duration;

use fleet_registry::{EtcdConfig, Registry, HISTORY_DEPTH};
use fleet_testkit::Etcd;
use fleet_units::{UnitFile, UnitOption};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Api {
    etcd: Etcd,
    /// `http://host:port`
    root: String,
    /// `<root>/fleet/v1`
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn start() -> Api {
        let etcd = Etcd::start();
        let registry = Registry::connect(&EtcdConfig {
            endpoints: vec![etcd.endpoint.clone()],
            prefix: etcd.prefix.clone(),
            request_timeout: Duration::from_secs(2),
            ..EtcdConfig::default()
        })
        .await
        .expect("registry");
        let router = fleet_api::server::router(registry, "9.9.9", 100);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let root = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Api {
            etcd,
            base: format!("{root}/fleet/v1"),
            root,
            http: reqwest::Client::new(),
        }
    }

    async fn put(&self, name: &str, exec: &str, state: &str) -> StatusCode {
        self.http
            .put(format!("{}/units/{name}", self.base))
            .json(&json!({"desiredState": state, "options": options(exec)}))
            .send()
            .await
            .expect("PUT")
            .status()
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    /// `POST /units/{name}/rollback` with `body` as JSON, or with no body at all.
    async fn rollback(&self, name: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}/units/{name}/rollback", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let r = request.send().await.expect("POST");
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
}

fn options(exec: &str) -> Value {
    json!([
        {"section": "Unit", "name": "Description", "value": "hello"},
        {"section": "Service", "name": "ExecStart", "value": exec}
    ])
}

/// The unit hash of the unit `options(exec)` makes, as fleetctl shows it.
fn hash(exec: &str) -> String {
    UnitFile::from_options(vec![
        UnitOption::new("Unit", "Description", "hello"),
        UnitOption::new("Service", "ExecStart", exec),
    ])
    .hash()
    .to_string()
}

fn hashes(history: &Value) -> Vec<String> {
    history["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|v| v["hash"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unit_is_listed_with_its_versions_and_rolled_back() {
    let api = Api::start().await;
    assert_eq!(
        api.put("web.service", "/bin/a", "launched").await,
        StatusCode::CREATED
    );
    assert_eq!(
        api.put("web.service", "/bin/b", "launched").await,
        StatusCode::CREATED
    );
    let (status, history) = api.get("/units/web.service/history").await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history["name"], "web.service");
    assert_eq!(hashes(&history), [hash("/bin/b"), hash("/bin/a")]);
    let [current, previous] = [&history["versions"][0], &history["versions"][1]];
    assert_eq!(current["current"], true);
    assert!(current.get("until").is_none(), "{current}");
    assert_eq!(previous["current"], false);
    assert_eq!(previous["options"], options("/bin/a"));
    for time in [&current["since"], &previous["since"], &previous["until"]] {
        assert!(is_rfc3339(time.as_str().unwrap_or_default()), "{history}");
    }
    assert_eq!(previous["until"], current["since"]);

    // Stopped meanwhile: a rollback keeps the desired state.
    let r = api
        .http
        .put(format!("{}/units/web.service", api.base))
        .json(&json!({"desiredState": "loaded"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, done) = api.rollback("web.service", Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        done,
        json!({"name": "web.service", "from": hash("/bin/b"), "to": hash("/bin/a")})
    );
    let (_, unit) = api.get("/units/web.service").await;
    assert_eq!(unit["options"], options("/bin/a"));
    assert_eq!(unit["desiredState"], "loaded");

    // No body at all, and a hash prefix in either case, as on fleetctl's command line.
    let (status, done) = api.rollback("web.service", None).await;
    assert_eq!(
        (status, &done["to"]),
        (StatusCode::OK, &json!(hash("/bin/b")))
    );
    let upper = hash("/bin/a")[..7].to_uppercase();
    let (status, done) = api
        .rollback("web.service", Some(json!({"hash": upper})))
        .await;
    assert_eq!(
        (status, &done["to"]),
        (StatusCode::OK, &json!(hash("/bin/a")))
    );
    let (_, history) = api.get("/units/web.service/history").await;
    assert_eq!(
        hashes(&history),
        [
            hash("/bin/a"),
            hash("/bin/b"),
            hash("/bin/a"),
            hash("/bin/b"),
            hash("/bin/a")
        ]
    );
    // Already that version: answered, nothing written.
    let before = api.etcd.key_space().await;
    let (status, done) = api
        .rollback("web.service", Some(json!({"hash": hash("/bin/a")})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["from"], done["to"]);
    assert_eq!(api.etcd.key_space().await, before);

    // The legacy prefix serves them too.
    let r = api
        .http
        .get(format!("{}/v1-alpha/units/web.service/history", api.root))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK);

    // Destroyed, the unit has no history left.
    let r = api
        .http
        .delete(format!("{}/units/web.service", api.base))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, body) = api.get("/units/web.service/history").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "unit does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_is_bounded() {
    let api = Api::start().await;
    for i in 0..HISTORY_DEPTH + 3 {
        api.put("web.service", &format!("/bin/{i}"), "inactive")
            .await;
    }
    let (_, history) = api.get("/units/web.service/history").await;
    let kept: Vec<String> = (0..HISTORY_DEPTH + 3)
        .rev()
        .take(HISTORY_DEPTH + 1)
        .map(|i| hash(&format!("/bin/{i}")))
        .collect();
    assert_eq!(hashes(&history), kept);
    let (status, body) = api
        .rollback("web.service", Some(json!({"hash": hash("/bin/0")})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_the_envelope_and_change_nothing() {
    let api = Api::start().await;
    api.put("single.service", "/bin/a", "inactive").await;
    // Versions enough for two hashes to share a first digit.
    let execs: Vec<String> = (0..HISTORY_DEPTH).map(|i| format!("/bin/{i}")).collect();
    for exec in &execs {
        api.put("web.service", exec, "inactive").await;
    }
    let shared = execs
        .iter()
        .map(|e| hash(e)[..1].to_string())
        .find(|d| {
            execs
                .iter()
                .filter(|e| hash(e).starts_with(d.as_str()))
                .count()
                > 1
        })
        .expect("ten hashes share a first digit");
    let before = api.etcd.key_space().await;

    let post = |name: &str, content_type: &str, body: &str| {
        api.http
            .post(format!("{}/units/{name}/rollback", api.base))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
    };
    let json = "application/json";
    let cases: Vec<(&str, reqwest::Response, StatusCode, &str)> = vec![
        (
            "history of an invalid name",
            api.http
                .get(format!("{}/units/bad%20name.service/history", api.base))
                .send()
                .await
                .expect("GET"),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            "history of an unknown unit",
            api.http
                .get(format!("{}/units/none.service/history", api.base))
                .send()
                .await
                .expect("GET"),
            StatusCode::NOT_FOUND,
            "unit does not exist",
        ),
        (
            "rollback of an invalid name",
            post("..%2Fx.service", json, "{}").await.expect("POST"),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            "rollback of an unknown unit",
            post("none.service", json, "{}").await.expect("POST"),
            StatusCode::NOT_FOUND,
            "unit does not exist",
        ),
        (
            "no previous version",
            post("single.service", json, "{}").await.expect("POST"),
            StatusCode::CONFLICT,
            "no previous version",
        ),
        (
            "unknown hash",
            post("web.service", json, r#"{"hash":"0000000"}"#)
                .await
                .expect("POST"),
            StatusCode::NOT_FOUND,
            "has no version 0000000",
        ),
        (
            "ambiguous hash prefix",
            post("web.service", json, &format!(r#"{{"hash":"{shared}"}}"#))
                .await
                .expect("POST"),
            StatusCode::CONFLICT,
            "is ambiguous",
        ),
        (
            "not a hash",
            post("web.service", json, r#"{"hash":"HEAD~1"}"#)
                .await
                .expect("POST"),
            StatusCode::BAD_REQUEST,
            "invalid unit hash",
        ),
        (
            "an unknown field",
            post("web.service", json, r#"{"version":"abc"}"#)
                .await
                .expect("POST"),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "not JSON",
            post("web.service", json, "abc").await.expect("POST"),
            StatusCode::BAD_REQUEST,
            "unable to decode body",
        ),
        (
            "another content type",
            post("web.service", "text/plain", r#"{"hash":"abc"}"#)
                .await
                .expect("POST"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "",
        ),
        (
            "GET on rollback",
            api.http
                .get(format!("{}/units/web.service/rollback", api.base))
                .send()
                .await
                .expect("GET"),
            StatusCode::METHOD_NOT_ALLOWED,
            "",
        ),
    ];
    for (what, response, status, message) in cases {
        assert_eq!(response.status(), status, "{what}");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            body["error"]["code"].as_u64(),
            Some(u64::from(status.as_u16())),
            "{what}: {body}"
        );
        let text = body["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{what}: {text}");
    }
    let r = api
        .http
        .post(format!("{}/units/web.service/history", api.base))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(api.etcd.key_space().await, before, "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_discovery_document_describes_history_and_rollback() {
    let api = Api::start().await;
    let (status, doc) = api.get("/discovery").await;
    assert_eq!(status, StatusCode::OK);
    let methods = &doc["resources"]["UnitHistory"]["methods"];
    assert_eq!(methods["List"]["httpMethod"], "GET");
    assert_eq!(methods["List"]["path"], "units/{unitName}/history");
    assert_eq!(methods["List"]["response"]["$ref"], "UnitHistory");
    assert_eq!(methods["Rollback"]["httpMethod"], "POST");
    assert_eq!(methods["Rollback"]["path"], "units/{unitName}/rollback");
    assert_eq!(methods["Rollback"]["request"]["$ref"], "RollbackRequest");
    for schema in ["UnitHistory", "UnitVersion", "RollbackRequest", "Rollback"] {
        assert_eq!(doc["schemas"][schema]["id"], schema);
    }
}
