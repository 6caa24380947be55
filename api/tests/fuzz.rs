//! Arbitrary paths, query strings and bodies through the API's router, in process. There is
//! no etcd: what passes validation meets an unreachable one and is answered 503. Every answer
//! is an answer (no panic), and every error is fleet's JSON error envelope.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use fleet_registry::{EtcdConfig, Registry};
use fleet_testkit::closed_port;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower::ServiceExt;

/// A router over a registry whose etcd is never there, and the runtime to drive it.
fn unreachable_api() -> (tokio::runtime::Runtime, Router) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let router = runtime.block_on(async {
        let registry = Registry::connect(&EtcdConfig {
            endpoints: vec![format!("http://127.0.0.1:{}", closed_port())],
            request_timeout: Duration::from_millis(500),
            ..EtcdConfig::default()
        })
        .await
        .expect("a lazy registry");
        fleet_api::server::router(registry, "0.0.0", 100)
    });
    (runtime, router)
}

/// A path segment from arbitrary bytes: some raw (when URL-safe), the rest percent-encoded,
/// so the router decodes exactly these bytes, valid UTF-8 or not.
fn segment() -> impl Strategy<Value = (Vec<u8>, String)> {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24),
        "[a-z@.-]{1,10}\\.(service|socket|x)".prop_map(String::into_bytes),
    ];
    (bytes, proptest::collection::vec(any::<bool>(), 24)).prop_map(|(bytes, raw)| {
        let mut encoded = String::new();
        for (i, b) in bytes.iter().enumerate() {
            if raw[i % raw.len()] && (b.is_ascii_alphanumeric() || b"-._~@:".contains(b)) {
                encoded.push(char::from(*b));
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        (bytes, encoded)
    })
}

/// Sends one request; the status and, for an error, checks the envelope.
fn answer(
    runtime: &tokio::runtime::Runtime,
    router: &Router,
    method: &str,
    uri: &str,
    body: Vec<u8>,
) -> Result<StatusCode, TestCaseError> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .map_err(|e| TestCaseError::reject(format!("not a request: {e}")))?;
    let (status, content_type, text) = runtime.block_on(async {
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (status, content_type, text)
    });
    if status.is_client_error() || status.is_server_error() {
        prop_assert!(
            content_type.starts_with("application/json"),
            "{method} {uri}: {status} {content_type:?}"
        );
        let body: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        prop_assert_eq!(
            body["error"]["code"].as_u64(),
            Some(u64::from(status.as_u16())),
            "{} {}: {}",
            method,
            uri,
            String::from_utf8_lossy(&text)
        );
    }
    Ok(status)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn any_unit_name_in_a_path_is_answered_with_the_envelope() {
    let (runtime, router) = unreachable_api();
    runner()
        .run(&segment(), |(bytes, encoded)| {
            // Refused for its name, or for its desired state right after: never stored.
            let status = answer(
                &runtime,
                &router,
                "PUT",
                &format!("/fleet/v1/units/{encoded}"),
                br#"{"desiredState":"bogus"}"#.to_vec(),
            )?;
            let want = match bytes.is_empty() {
                true => StatusCode::NOT_FOUND,
                false => StatusCode::BAD_REQUEST,
            };
            prop_assert_eq!(status, want, "{}", encoded);
            for (method, path) in [
                ("GET", format!("/fleet/v1/state/{encoded}")),
                (
                    "GET",
                    format!("/v1-alpha/units/{encoded}/journal?lines=%FF"),
                ),
                ("DELETE", format!("/fleet/v1/units/{encoded}")),
                ("GET", format!("/fleet/v1/units/{encoded}/history")),
                ("POST", format!("/v1-alpha/units/{encoded}/rollback")),
                ("DELETE", format!("/fleet/v1/machines/{encoded}")),
            ] {
                let status = answer(&runtime, &router, method, &path, Vec::new())?;
                prop_assert!(
                    [400, 404, 501, 503].contains(&status.as_u16()),
                    "{} {}: {}",
                    method,
                    path,
                    status
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn any_body_is_answered_with_the_envelope() {
    let (runtime, router) = unreachable_api();
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        "(?s)\\{.{0,60}\\}".prop_map(String::into_bytes),
        "\\[(\\{\"op\":\"(add|remove)\",\"path\":\"/[0-9a-f]{0,32}/metadata/.{0,6}\",\"value\":.{0,8}\\},?){0,3}\\]"
            .prop_map(String::into_bytes),
    ];
    runner()
        .run(&body, |body| {
            for (method, path) in [
                ("PUT", "/fleet/v1/units/web.service"),
                ("PATCH", "/fleet/v1/machines"),
                ("POST", "/fleet/v1/units/web.service/rollback"),
            ] {
                let status = answer(&runtime, &router, method, path, body.clone())?;
                prop_assert!(
                    [400, 409, 503].contains(&status.as_u16()),
                    "{} {}: {}",
                    method,
                    path,
                    status
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
