//! TLS with client certificates, end to end on loopback: a cluster's keys are issued into a
//! temporary directory, `serve` answers with the caller's role, and reqwest clients built from
//! `client_config` talk to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::{Extension, Router};
use fleet_trust::{
    client_config, explain, issue, load_ca, load_certificates, load_private_key, new_ca, serve,
    write_pem, Caller, Limits, Pem, Role, San, ServerTls, TlsFiles, Validity,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MACHINE: &str = "2c6f3a3d4e5b4b0f9a1c0d2e3f405162";

fn hour() -> Validity {
    Validity::starting_now(Duration::from_secs(3600))
}

/// A cluster's keys in a temporary directory: its CA, a machine certificate for 127.0.0.1,
/// operator "alice", viewer "bob", and "mallory", an operator of another cluster.
struct Keys {
    dir: tempfile::TempDir,
    ca: Pem,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = new_ca("fleet test CA", hour()).expect("ca");
        let keys = Keys { dir, ca };
        keys.write("ca", &keys.ca);
        keys.reissue_machine();
        keys.issue("alice", Role::Operator, hour());
        keys.issue("bob", Role::Viewer, hour());
        let other_ca = new_ca("another cluster's CA", hour()).expect("ca");
        keys.write("other-ca", &other_ca);
        let mallory =
            issue(&other_ca, Role::Operator, "mallory", &[], hour()).expect("issue mallory");
        keys.write("mallory", &mallory);
        keys
    }

    fn write(&self, stem: &str, pem: &Pem) {
        write_pem(self.dir.path(), stem, pem).expect("write");
    }

    fn issue(&self, name: &str, role: Role, validity: Validity) {
        let pem = issue(&self.ca, role, name, &[], validity).expect("issue");
        self.write(name, &pem);
    }

    /// The machine certificate, issued (again): a new key and serial in the same files.
    fn reissue_machine(&self) -> Vec<u8> {
        let sans = [San::Ip("127.0.0.1".parse().expect("ip"))];
        let pem = issue(&self.ca, Role::Machine, MACHINE, &sans, hour()).expect("issue");
        self.write("machine", &pem);
        load_certificates(&self.path("machine.pem"))
            .expect("load")
            .remove(0)
            .to_vec()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.path("ca.pem"),
            cert: self.path("machine.pem"),
            key: self.path("machine-key.pem"),
        }
    }

    /// A client trusting `ca` ("ca" or "other-ca") and presenting `holder`'s certificate.
    fn client(&self, ca: &str, holder: Option<&str>) -> reqwest::Client {
        let cert = holder.map(|h| {
            (
                self.path(&format!("{h}.pem")),
                self.path(&format!("{h}-key.pem")),
            )
        });
        let config = client_config(
            &self.path(&format!("{ca}.pem")),
            cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .expect("client config");
        with_tls(config)
    }
}

fn with_tls(config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Answers "<role> <name> <client port>", or "insecure <client port>".
fn app() -> Router {
    Router::new().route(
        "/whoami",
        get(
            |Extension(caller): Extension<Caller>, ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                match caller {
                    Caller::Certificate(id) => format!("{} {} {}", id.role, id.name, peer.port()),
                    Caller::Insecure => format!("insecure {}", peer.port()),
                }
            },
        ),
    )
}

async fn start(tls: Option<Arc<ServerTls>>, limits: Limits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(serve(listener, tls, app(), limits));
    addr
}

async fn start_tls(keys: &Keys, limits: Limits) -> (SocketAddr, Arc<ServerTls>) {
    let tls = Arc::new(ServerTls::load(keys.server_files()).expect("server TLS"));
    (start(Some(tls.clone()), limits).await, tls)
}

/// What the server answered, and the certificate it presented.
async fn whoami(client: &reqwest::Client, url: &str) -> Result<(String, Vec<u8>), reqwest::Error> {
    let response = client
        .get(format!("{url}/whoami"))
        .send()
        .await?
        .error_for_status()?;
    let cert = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok((response.text().await?, cert))
}

/// The caller as the server named it, without the client's port.
async fn role_and_name(client: &reqwest::Client, url: &str) -> String {
    let (text, _) = whoami(client, url).await.expect("request");
    text.rsplit_once(' ')
        .map(|(who, _)| who.to_owned())
        .expect("port")
}

/// Why the request failed, as fleetctl would say it.
async fn refusal(client: &reqwest::Client, url: &str) -> String {
    let e = whoami(client, url).await.expect_err("refused");
    explain(&e).unwrap_or_else(|| panic!("not explained: {e:?}"))
}

#[tokio::test]
async fn each_caller_is_known_by_its_certificate() {
    let keys = Keys::new();
    let (addr, _) = start_tls(&keys, Limits::default()).await;
    let url = format!("https://{addr}");
    let cases = [
        ("alice", "fleet-operator alice".to_owned()),
        ("bob", "fleet-viewer bob".to_owned()),
        ("machine", format!("fleet-machine {MACHINE}")),
    ];
    for (holder, expected) in cases {
        assert_eq!(
            role_and_name(&keys.client("ca", Some(holder)), &url).await,
            expected
        );
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_told_it_needs_one() {
    let keys = Keys::new();
    let (addr, _) = start_tls(&keys, Limits::default()).await;
    let line = refusal(&keys.client("ca", None), &format!("https://{addr}")).await;
    assert_eq!(
        line,
        "the server requires a client certificate signed by the cluster's CA, and this client sent none"
    );
}

#[tokio::test]
async fn a_certificate_of_another_cluster_is_refused() {
    let keys = Keys::new();
    let (addr, _) = start_tls(&keys, Limits::default()).await;
    // client_config refuses it at once...
    let e = client_config(
        &keys.path("ca.pem"),
        Some((&keys.path("mallory.pem"), &keys.path("mallory-key.pem"))),
    )
    .expect_err("another cluster's certificate");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the certificate of \"mallory\" is not signed by the CA in {}",
            keys.path("mallory.pem").display(),
            keys.path("ca.pem").display()
        )
    );
    // ...and so does the server, to a client that presents it anyway.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(load_ca(&keys.path("ca.pem")).expect("ca"))
    .with_client_auth_cert(
        load_certificates(&keys.path("mallory.pem")).expect("cert"),
        load_private_key(&keys.path("mallory-key.pem")).expect("key"),
    )
    .expect("config");
    let line = refusal(&with_tls(config), &format!("https://{addr}")).await;
    assert_eq!(
        line,
        "the server refused this client's certificate: it is not signed by the cluster's CA"
    );
}

/// What fleetd asks etcd at start-up: the server's verdict on the client's certificate, taken
/// apart from an outage.
#[tokio::test]
async fn a_probe_tells_acceptance_refusal_and_outage_apart() {
    let keys = Keys::new();
    let (addr, _) = start_tls(&keys, Limits::default()).await;
    let ask = |config: rustls::ClientConfig, address: String| async move {
        fleet_trust::probe(
            &address,
            "127.0.0.1",
            Arc::new(config),
            Duration::from_secs(2),
            Duration::from_millis(500),
        )
        .await
    };
    let alice = client_config(
        &keys.path("ca.pem"),
        Some((&keys.path("alice.pem"), &keys.path("alice-key.pem"))),
    )
    .expect("alice");
    assert_eq!(
        ask(alice, addr.to_string()).await,
        fleet_trust::Probe::Accepted
    );

    let mallory = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(load_ca(&keys.path("ca.pem")).expect("ca"))
    .with_client_auth_cert(
        load_certificates(&keys.path("mallory.pem")).expect("cert"),
        load_private_key(&keys.path("mallory-key.pem")).expect("key"),
    )
    .expect("config");
    match ask(mallory, addr.to_string()).await {
        fleet_trust::Probe::Refused(why) => assert!(why.contains("refused"), "{why}"),
        other => panic!("another cluster's certificate: {other:?}"),
    }

    let strange = client_config(&keys.path("other-ca.pem"), None).expect("other CA");
    match ask(strange, addr.to_string()).await {
        fleet_trust::Probe::Refused(why) => assert!(why.contains("not signed by the CA"), "{why}"),
        other => panic!("a server of another CA: {other:?}"),
    }

    let nobody = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed = nobody.local_addr().expect("addr");
    drop(nobody);
    let alice = client_config(
        &keys.path("ca.pem"),
        Some((&keys.path("alice.pem"), &keys.path("alice-key.pem"))),
    )
    .expect("alice");
    assert!(
        matches!(
            ask(alice, closed.to_string()).await,
            fleet_trust::Probe::Unreachable(_)
        ),
        "nothing listens"
    );
}

#[tokio::test]
async fn a_server_of_another_cluster_is_not_trusted() {
    let keys = Keys::new();
    let (addr, _) = start_tls(&keys, Limits::default()).await;
    let line = refusal(&keys.client("other-ca", None), &format!("https://{addr}")).await;
    assert_eq!(
        line,
        "the server's certificate is not signed by the CA this client trusts (a server of another cluster, or the wrong CA file)"
    );
}

#[tokio::test]
async fn a_name_the_certificate_does_not_carry_is_explained() {
    let keys = Keys::new();
    let (addr, _) = start_tls(&keys, Limits::default()).await;
    // Resolved here: a bare machine may have no /etc/hosts to name localhost.
    let url = format!("https://localhost:{}", addr.port());
    let config = client_config(
        &keys.path("ca.pem"),
        Some((&keys.path("alice.pem"), &keys.path("alice-key.pem"))),
    )
    .expect("client config");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .resolve("localhost", addr)
        .build()
        .expect("client");
    let line = refusal(&client, &url).await;
    assert_eq!(
        line,
        "the server's certificate is not valid for \"localhost\", the name this client asked for (it is valid for 127.0.0.1)"
    );
}

#[tokio::test]
async fn expired_certificates_are_refused_when_loaded() {
    let keys = Keys::new();
    let now = SystemTime::now();
    let past = Validity {
        not_before: now - Duration::from_secs(2 * 86400),
        not_after: now - Duration::from_secs(86400),
    };
    keys.issue("carol", Role::Operator, past);
    let e = client_config(
        &keys.path("ca.pem"),
        Some((&keys.path("carol.pem"), &keys.path("carol-key.pem"))),
    )
    .expect_err("expired");
    let expected = format!(
        "{}: the certificate of \"carol\" expired on ",
        keys.path("carol.pem").display()
    );
    assert!(e.to_string().starts_with(&expected), "{e}");

    let expired_machine = issue(&keys.ca, Role::Machine, MACHINE, &[], past).expect("issue");
    keys.write("machine", &expired_machine);
    let e = ServerTls::load(keys.server_files()).expect_err("expired");
    let expected = format!(
        "{}: the certificate of \"{MACHINE}\" expired on ",
        keys.path("machine.pem").display()
    );
    assert!(e.to_string().starts_with(&expected), "{e}");
}

#[tokio::test]
async fn rotated_certificates_serve_new_connections_while_open_ones_go_on() {
    let keys = Keys::new();
    let first = load_certificates(&keys.path("machine.pem"))
        .expect("cert")
        .remove(0)
        .to_vec();
    let (addr, tls) = start_tls(&keys, Limits::default()).await;
    let url = format!("https://{addr}");
    let kept = keys.client("ca", Some("alice"));
    let (before, cert) = whoami(&kept, &url).await.expect("before");
    assert_eq!(cert, first);

    let second = keys.reissue_machine();
    assert_ne!(first, second);
    assert_eq!(tls.reload().expect("reload").name, MACHINE);

    let (after, cert) = whoami(&kept, &url).await.expect("kept-alive connection");
    assert_eq!(after, before, "the same connection (the same client port)");
    assert_eq!(cert, first, "with the certificate it was opened with");
    let (_, cert) = whoami(&keys.client("ca", Some("alice")), &url)
        .await
        .expect("new");
    assert_eq!(cert, second, "a new connection has the new certificate");

    // Files that do not fit together are not taken: the server goes on with what it has.
    std::fs::copy(keys.path("alice-key.pem"), keys.path("machine-key.pem")).expect("copy");
    let e = tls.reload().expect_err("the key is not the certificate's");
    assert!(
        e.to_string().contains("does not match the certificate"),
        "{e}"
    );
    let (_, cert) = whoami(&keys.client("ca", Some("alice")), &url)
        .await
        .expect("new");
    assert_eq!(cert, second);
}

#[tokio::test]
async fn changed_files_are_reloaded_by_the_watch() {
    let keys = Keys::new();
    let (addr, tls) = start_tls(&keys, Limits::default()).await;
    tokio::spawn(tls.clone().watch(Duration::from_millis(50)));
    let url = format!("https://{addr}");
    let second = keys.reissue_machine();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, cert) = whoami(&keys.client("ca", Some("bob")), &url)
            .await
            .expect("request");
        if cert == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the server closed the connection within `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buffer = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buffer)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_silent_client_is_disconnected_and_others_are_served_meanwhile() {
    let keys = Keys::new();
    let limits = Limits {
        handshake_timeout: Duration::from_millis(400),
        header_read_timeout: Duration::from_millis(400),
        ..Limits::default()
    };
    let (addr, _) = start_tls(&keys, limits).await;

    // One never starts the handshake, one never sends a request.
    let mut mute = TcpStream::connect(addr).await.expect("connect");
    let config = client_config(
        &keys.path("ca.pem"),
        Some((&keys.path("alice.pem"), &keys.path("alice-key.pem"))),
    )
    .expect("config");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut silent = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    let since = Instant::now();

    let url = format!("https://{addr}");
    assert_eq!(
        role_and_name(&keys.client("ca", Some("bob")), &url).await,
        "fleet-viewer bob"
    );

    assert!(
        closed_within(&mut mute, Duration::from_secs(3)).await,
        "handshake timeout"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "header timeout"
    );
    assert!(
        since.elapsed() >= Duration::from_millis(300),
        "closed too early: {:?}",
        since.elapsed()
    );
}

#[tokio::test]
async fn plain_tcp_serves_insecure_callers_with_the_same_limits() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let addr = start(None, limits).await;
    let client = reqwest::Client::new();
    let text = client
        .get(format!("http://{addr}/whoami"))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("text");
    assert!(text.starts_with("insecure "), "{text}");

    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let since = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(since.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn connections_beyond_the_cap_per_address_are_closed() {
    let keys = Keys::new();
    let limits = Limits {
        handshake_timeout: Duration::from_secs(30),
        max_connections_per_ip: 2,
        ..Limits::default()
    };
    let (addr, _) = start_tls(&keys, limits).await;
    let mut first = TcpStream::connect(addr).await.expect("connect");
    let mut second = TcpStream::connect(addr).await.expect("connect");
    let mut third = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_within(&mut third, Duration::from_secs(2)).await,
        "the third is refused"
    );
    assert!(!closed_within(&mut first, Duration::from_millis(200)).await);
    assert!(!closed_within(&mut second, Duration::from_millis(200)).await);

    // A closed connection makes room.
    first.shutdown().await.expect("shutdown");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = TcpStream::connect(addr).await.expect("connect");
        if !closed_within(&mut next, Duration::from_millis(200)).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
    }
}
