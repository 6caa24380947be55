//! The API and the peer endpoint behind TLS with client certificates (`fleet_trust::serve`),
//! over a real etcd: what each role may do, checked on what etcd holds afterwards.

use std::time::Duration;

use fleet_registry::{EtcdConfig, MachineId, Registry};
use fleet_testkit::{Etcd, TempDir};
use fleet_trust::{
    issue, new_ca, write_pem, Limits, Pem, Role, San, ServerTls, TlsFiles, Validity,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const MACHINE: &str = "2c6f3a3d4e5b4b0f9a1c0d2e3f405162";

fn hour() -> Validity {
    Validity::starting_now(Duration::from_secs(3600))
}

/// A cluster's keys: its CA, this machine's certificate for 127.0.0.1, and one certificate
/// per role.
struct Keys {
    dir: TempDir,
    ca: Pem,
}

impl Keys {
    fn new() -> Keys {
        let dir = TempDir::new("keys");
        let ca = new_ca("fleet test CA", hour()).expect("ca");
        write_pem(dir.path(), "ca", &ca).expect("write ca");
        let keys = Keys { dir, ca };
        let ip = San::Ip("127.0.0.1".parse().expect("ip"));
        keys.issue("machine", Role::Machine, MACHINE, &[ip]);
        keys.issue("other-machine", Role::Machine, &"b".repeat(32), &[]);
        keys.issue("alice", Role::Operator, "alice", &[]);
        keys.issue("bob", Role::Viewer, "bob", &[]);
        keys
    }

    fn issue(&self, stem: &str, role: Role, name: &str, sans: &[San]) {
        let pem = issue(&self.ca, role, name, sans, hour()).expect("issue");
        write_pem(self.dir.path(), stem, &pem).expect("write");
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    fn server(&self) -> std::sync::Arc<ServerTls> {
        std::sync::Arc::new(
            ServerTls::load(TlsFiles {
                ca: self.path("ca.pem"),
                cert: self.path("machine.pem"),
                key: self.path("machine-key.pem"),
            })
            .expect("server tls"),
        )
    }

    /// An HTTPS client holding the certificate `stem`.
    fn client(&self, stem: &str) -> reqwest::Client {
        let config = fleet_trust::client_config(
            &self.path("ca.pem"),
            Some((
                &self.path(&format!("{stem}.pem")),
                &self.path(&format!("{stem}-key.pem")),
            )),
        )
        .expect("client config");
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()
            .expect("client")
    }
}

async fn registry(etcd: &Etcd) -> Registry {
    Registry::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: etcd.prefix.clone(),
        request_timeout: Duration::from_secs(2),
        ..EtcdConfig::default()
    })
    .await
    .expect("registry")
}

/// Serves `router` over TLS on a free loopback port; returns its root URL.
async fn serve(keys: &Keys, router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let root = format!("https://{}", listener.local_addr().expect("addr"));
    tokio::spawn(fleet_trust::serve(
        listener,
        Some(keys.server()),
        router,
        Limits::default(),
    ));
    root
}

/// The status of an error answer, checked to be fleet's JSON error envelope.
async fn envelope(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON error envelope");
    assert_eq!(body["error"]["code"], json!(status.as_u16()), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("").to_string();
    (status, message)
}

const UNIT: &str = r#"{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_reads_and_changes_nothing_and_an_operator_does_everything() {
    let etcd = Etcd::start();
    let keys = Keys::new();
    let root = serve(
        &keys,
        fleet_api::server::router(registry(&etcd).await, "9.9.9", 100),
    )
    .await;
    let api = format!("{root}/fleet/v1");
    let (alice, bob, machine) = (
        keys.client("alice"),
        keys.client("bob"),
        keys.client("machine"),
    );

    let created = alice
        .put(format!("{api}/units/web.service"))
        .header("content-type", "application/json")
        .body(UNIT)
        .send()
        .await
        .expect("PUT as operator");
    assert_eq!(created.status(), StatusCode::CREATED);
    let before = etcd.key_space().await;

    for reader in [&bob, &machine] {
        let listed = reader
            .get(format!("{api}/units"))
            .send()
            .await
            .expect("GET");
        assert_eq!(listed.status(), StatusCode::OK);
        let body: Value = listed.json().await.expect("json");
        assert_eq!(body["units"][0]["name"], json!("web.service"));
        let cat = reader
            .get(format!("{api}/units/web.service"))
            .send()
            .await
            .expect("GET one");
        assert_eq!(cat.status(), StatusCode::OK);
        let events = reader
            .get(format!("{api}/events"))
            .send()
            .await
            .expect("GET events");
        assert_eq!(events.status(), StatusCode::OK);
    }

    let changes = [
        bob.put(format!("{api}/units/web.service"))
            .header("content-type", "application/json")
            .body(r#"{"desiredState":"inactive"}"#),
        bob.put(format!("{api}/units/new.service"))
            .header("content-type", "application/json")
            .body(UNIT),
        bob.delete(format!("{api}/units/web.service")),
        bob.patch(format!("{api}/machines"))
            .header("content-type", "application/json")
            .body(format!(
                r#"[{{"op":"add","path":"/{MACHINE}/metadata/role","value":"db"}}]"#
            )),
        machine.delete(format!("{api}/units/web.service")),
    ];
    for change in changes {
        let (status, message) = envelope(change.send().await.expect("request")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
        assert!(message.contains("operator"), "{message}");
    }
    assert_eq!(
        etcd.key_space().await,
        before,
        "a refused request changed etcd"
    );

    let deleted = alice
        .delete(format!("{api}/units/web.service"))
        .send()
        .await
        .expect("DELETE as operator");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_peer_endpoint_serves_machines_and_only_this_machines_units() {
    let etcd = Etcd::start();
    let keys = Keys::new();
    let machine = MachineId::parse(MACHINE).expect("id");
    let root = serve(
        &keys,
        fleet_api::peer::router(
            registry(&etcd).await,
            machine,
            fleet_registry::Liveness::new(),
            "9.9.9",
        ),
    )
    .await;
    let peer = format!("{root}/fleet/peer/v1");

    // Another machine of the cluster may ask; operators and viewers may not.
    let presence = keys
        .client("other-machine")
        .get(format!("{peer}/presence"))
        .send()
        .await
        .expect("presence");
    assert_eq!(presence.status(), StatusCode::OK);
    for person in ["alice", "bob"] {
        let (status, message) = envelope(
            keys.client(person)
                .get(format!("{peer}/presence"))
                .send()
                .await
                .expect("presence"),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{person}: {message}");
    }
    // A unit fleet did not place here (a system service, say) is none of a peer's business.
    for what in ["journal", "status"] {
        let (status, message) = envelope(
            keys.client("other-machine")
                .get(format!("{peer}/{what}?unit=sshd.service"))
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_certificate_no_answer() {
    let etcd = Etcd::start();
    let keys = Keys::new();
    let root = serve(
        &keys,
        fleet_api::server::router(registry(&etcd).await, "9.9.9", 100),
    )
    .await;
    // fleet's client, as fleetctl uses it: the refusal in one line, however it reached the
    // request (TLS 1.3 refuses after the handshake).
    let anonymous = fleet_client::Client::with_tls(
        &root,
        Duration::from_secs(5),
        fleet_client::Tls {
            ca_file: Some(keys.path("ca.pem")),
            identity: None,
        },
    )
    .expect("client");
    let said = match anonymous.units().await {
        Err(fleet_client::ClientError::Unreachable { reason, .. }) => reason,
        other => panic!("not refused in the handshake: {other:?}"),
    };
    assert!(said.contains("client certificate"), "{said}");
}
