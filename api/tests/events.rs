//! Events through the API, against a real etcd: pages oldest first, filters by unit and by
//! machine, the newest N, a followed stream that gets what is recorded after it opened, and
//! bad queries refused with a 400 envelope, nothing changed.

use std::time::{Duration, UNIX_EPOCH};

use fleet_registry::{EtcdConfig, Event, EventKind, MachineId, Registry};
use fleet_testkit::Etcd;
use fleet_units::UnitName;
use reqwest::StatusCode;
use serde_json::Value;

struct Api {
    etcd: Etcd,
    registry: Registry,
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
        let router = fleet_api::server::router(registry.clone(), "9.9.9", 100);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let root = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Api {
            etcd,
            registry,
            base: format!("{root}/fleet/v1"),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path_and_query: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .expect("GET");
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    /// Every event of `query`, following `nextPageToken`: the messages of each page.
    async fn pages(&self, query: &str) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut token = String::new();
        loop {
            let sep = if query.is_empty() { "?" } else { "&" };
            let path = match token.is_empty() {
                true => format!("/events{query}"),
                false => format!("/events{query}{sep}nextPageToken={token}"),
            };
            let (status, page) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {page}");
            pages.push(messages(&page["events"]));
            token = page["nextPageToken"].as_str().unwrap_or("").to_string();
            if token.is_empty() {
                return pages;
            }
            assert!(pages.len() < 100, "paging does not end");
        }
    }
}

fn id(n: u8) -> MachineId {
    MachineId::parse(&format!("{n:032x}")).expect("id")
}

fn event(n: u64, unit: &str, machine: u8) -> Event {
    Event {
        time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + n * 1001),
        machine: Some(id(machine)),
        source: Some(id(9)),
        ..Event::new(EventKind::Placed, format!("event {n}"))
            .unit(&UnitName::parse(unit).expect("name"))
    }
}

fn messages(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| e["message"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn numbered(ns: impl IntoIterator<Item = u64>) -> Vec<String> {
    ns.into_iter().map(|n| format!("event {n}")).collect()
}

/// 12 events: `a.service` on machine 1 when n is even, `b.service` on machine 2 when odd.
async fn twelve(api: &Api) {
    let events: Vec<Event> = (0..12)
        .map(|n| match n % 2 {
            0 => event(n, "a.service", 1),
            _ => event(n, "b.service", 2),
        })
        .collect();
    api.registry.record_events(&events).await.expect("record");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_listed_oldest_first_a_page_at_a_time_by_unit_or_machine() {
    let api = Api::start().await;
    twelve(&api).await;
    let (status, page) = api.get("/events").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        page["events"][1],
        serde_json::json!({
            "time": "2023-11-14T22:13:21.001Z",
            "kind": "placed",
            "unit": "b.service",
            "machine": id(2).to_string(),
            "message": "event 1",
            "source": id(9).to_string(),
        })
    );
    assert!(page.get("nextPageToken").is_none(), "{page}");

    assert_eq!(
        api.pages("?limit=5").await,
        [numbered(0..5), numbered(5..10), numbered(10..12)]
    );
    assert_eq!(
        api.pages("?unit=a.service&limit=4").await,
        [numbered([0, 2, 4, 6]), numbered([8, 10])]
    );
    assert_eq!(
        api.pages(&format!("?machine={}", id(2))).await.concat(),
        numbered([1, 3, 5, 7, 9, 11])
    );
    assert_eq!(
        api.pages(&format!("?machine={}&unit=a.service", id(2)))
            .await
            .concat(),
        Vec::<String>::new()
    );
    // The newest ones, oldest first, in one page.
    assert_eq!(api.pages("?last=3").await, [numbered(9..12)]);
    assert_eq!(
        api.pages("?last=2&unit=b.service").await,
        [numbered([9, 11])]
    );
    // Under fleet's legacy prefix too.
    let legacy = api.base.replace("/fleet/v1", "/v1-alpha");
    let r = api
        .http
        .get(format!("{legacy}/events?last=1"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
}

/// Reads lines of a followed stream until `count` events came, within a deadline.
async fn read_lines(
    response: &mut reqwest::Response,
    buffer: &mut Vec<u8>,
    count: usize,
) -> Vec<Value> {
    let mut events = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    while events.len() < count {
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            events.push(serde_json::from_slice::<Value>(&line).expect("a JSON line"));
        }
        if events.len() >= count {
            break;
        }
        let chunk = tokio::time::timeout_at(until, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("{} of {count} events in time: {events:?}", events.len()))
            .expect("the stream")
            .expect("the stream goes on");
        buffer.extend_from_slice(&chunk);
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_gets_the_newest_then_each_event_recorded_after_it_opened() {
    let api = Api::start().await;
    twelve(&api).await;
    let mut response = api
        .http
        .get(format!(
            "{}/events?follow=true&unit=a.service&last=2",
            api.base
        ))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut buffer = Vec::new();
    let first = read_lines(&mut response, &mut buffer, 2).await;
    assert_eq!(messages(&Value::from(first)), numbered([8, 10]));

    // Recorded now: b's is not followed, a's are, in order, each once.
    api.registry
        .record_events(&[event(20, "b.service", 2), event(21, "a.service", 1)])
        .await
        .expect("record");
    api.registry
        .record_events(&[event(22, "a.service", 2)])
        .await
        .expect("record");
    let later = read_lines(&mut response, &mut buffer, 2).await;
    assert_eq!(messages(&Value::from(later)), numbered([21, 22]));
    assert!(buffer.is_empty());

    // Following from where a page ended: what came after it, then what comes next.
    let (_, page) = api.get("/events?limit=13").await;
    let token = page["nextPageToken"].as_str().expect("a token").to_string();
    let mut response = api
        .http
        .get(format!(
            "{}/events?follow=true&nextPageToken={token}",
            api.base
        ))
        .send()
        .await
        .expect("GET");
    let mut buffer = Vec::new();
    assert_eq!(
        messages(&Value::from(
            read_lines(&mut response, &mut buffer, 2).await
        )),
        numbered([21, 22])
    );
    api.registry
        .record_events(&[event(23, "c.service", 3)])
        .await
        .expect("record");
    assert_eq!(
        messages(&Value::from(
            read_lines(&mut response, &mut buffer, 1).await
        )),
        numbered([23])
    );

    // Without a token or last: from now on only.
    let mut response = api
        .http
        .get(format!("{}/events?follow=true", api.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    // The watch is open once the answer's head came.
    api.registry
        .record_events(&[event(24, "c.service", 3)])
        .await
        .expect("record");
    let mut buffer = Vec::new();
    assert_eq!(
        messages(&Value::from(
            read_lines(&mut response, &mut buffer, 1).await
        )),
        numbered([24])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_queries_are_refused_with_the_envelope_and_change_nothing() {
    let api = Api::start().await;
    twelve(&api).await;
    let before = api.etcd.key_space().await;
    let unit_token = {
        // A token of another list: its position is a unit name, not an event's.
        let (_, page) = api.get("/units").await;
        assert!(page["nextPageToken"].is_null(), "{page}");
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE.encode(r#"{"limit":5,"after":"a.service"}"#)
    };
    let (_, page) = api.get("/events?limit=2").await;
    let token = page["nextPageToken"].as_str().expect("a token").to_string();
    for query in [
        "unit=../../etc/passwd".to_string(),
        "unit=web".into(),
        "unit=a.service&unit=b.service".into(),
        "machine=f1ee7001".into(),
        "machine=".into(),
        "limit=0".into(),
        "limit=x".into(),
        "limit=10001".into(),
        "last=0".into(),
        "last=10001".into(),
        "follow=yes".into(),
        "follow=true&unit=web".into(),
        "nextPageToken=garbage".into(),
        format!("nextPageToken={unit_token}"),
        format!("nextPageToken={token}&last=3"),
    ] {
        let (status, body) = api.get(&format!("/events?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], 400, "{query}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{query}: {body}"
        );
    }
    // Other methods are not allowed, with the envelope.
    let r = api
        .http
        .post(format!("{}/events", api.base))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(api.etcd.key_space().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_discovery_document_lists_events() {
    let api = Api::start().await;
    let (status, doc) = api.get("/discovery").await;
    assert_eq!(status, StatusCode::OK);
    let list = &doc["resources"]["Events"]["methods"]["List"];
    assert_eq!(list["path"], "events");
    assert_eq!(list["httpMethod"], "GET");
    for p in [
        "unit",
        "machine",
        "limit",
        "last",
        "follow",
        "nextPageToken",
    ] {
        assert_eq!(list["parameters"][p]["location"], "query", "{p}");
    }
    let kinds = &doc["schemas"]["Event"]["properties"]["kind"]["enum"];
    assert_eq!(
        kinds.as_array().map(Vec::len),
        Some(EventKind::ALL.len()),
        "{kinds}"
    );
    // fleet's own resources are as they were.
    assert!(doc["resources"]["Units"]["methods"].get("Events").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_goes_away_frees_its_place() {
    let api = Api::start().await;
    // More followers one after another than this fleetd follows at once: each one gone
    // frees its place, even while no event comes to be written to it.
    for n in 0..(fleet_api::follows::OVERALL + 4) {
        let response = api
            .http
            .get(format!("{}/events?follow=true", api.base))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "follower {n}");
        drop(response);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
