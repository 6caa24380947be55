//! fleetctl over TLS, as a user runs it: keys issued with `fleetctl tls`, a stand-in for
//! fleetd's API served with fleet_trust::serve on loopback (answering like fleetd, the role
//! taken from the client certificate), and the one-line errors of every way a handshake or a
//! key file can be wrong.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use fleet_trust::{Caller, Identity, Limits, Role, ServerTls, TlsFiles};
use serde_json::json;

const MACHINE: &str = "2c6f3a3d4e5b4b0f9a1c0d2e3f405162";

/// fleetctl's exit code, stdout and stderr, with none of its settings from this environment.
fn fleetctl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = support::fleetctl_command()
        .args(args)
        .output()
        .expect("run fleetctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs fleetctl and expects it to succeed.
fn ok(args: &[&str]) -> String {
    let (code, out, err) = fleetctl(args);
    assert_eq!(code, Some(0), "{args:?}: {err}");
    out
}

/// A cluster's keys, issued by `fleetctl tls`: CA `ca/`, a machine certificate for 127.0.0.1,
/// operator alice, viewer bob; and another cluster's CA `other/` with its operator mallory.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let keys = Keys {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let ca = keys.path("ca");
        let other = keys.path("other");
        let (ca, other) = (ca.to_str().expect("utf-8"), other.to_str().expect("utf-8"));
        ok(&["tls", "ca", "create", "--dir", ca]);
        ok(&[
            "tls",
            "ca",
            "create",
            "--dir",
            other,
            "--name",
            "another CA",
        ]);
        let out = |name: &str| keys.path(name).to_str().expect("utf-8").to_owned();
        ok(&[
            "tls",
            "cert",
            "create",
            "--ca",
            ca,
            "--role",
            "machine",
            "--name",
            MACHINE,
            "--ip",
            "127.0.0.1",
            "--out",
            &out("machine"),
        ]);
        for (ca, role, name) in [
            (ca, "operator", "alice"),
            (ca, "viewer", "bob"),
            (other, "operator", "mallory"),
        ] {
            ok(&[
                "tls",
                "cert",
                "create",
                "--ca",
                ca,
                "--role",
                role,
                "--name",
                name,
                "--out",
                &out(name),
            ]);
        }
        keys
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `--ca-file` of a CA (`ca`, `other`), and, given a holder, `--cert-file` and
    /// `--key-file`.
    fn flags(&self, ca: &str, holder: Option<&str>) -> Vec<String> {
        let mut flags = vec!["--ca-file".to_owned(), self.file(&format!("{ca}/ca.pem"))];
        if let Some(holder) = holder {
            flags.extend([
                "--cert-file".to_owned(),
                self.file(&format!("{holder}.pem")),
                "--key-file".to_owned(),
                self.file(&format!("{holder}-key.pem")),
            ]);
        }
        flags
    }

    fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// A stand-in for a fleetd's API over TLS, with the machine certificate of `keys`.
struct Fleetd {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Fleetd {
    fn start(keys: &Keys) -> Fleetd {
        Fleetd::start_on(keys, "127.0.0.1")
    }

    /// [`Fleetd::start`] on another loopback address (`127.0.0.2`, say), which its certificate
    /// (for 127.0.0.1) does not name: no name resolution needed, which a bare machine may lack.
    fn start_on(keys: &Keys, ip: &str) -> Fleetd {
        let tls = ServerTls::load(TlsFiles {
            ca: keys.path("ca/ca.pem"),
            cert: keys.path("machine.pem"),
            key: keys.path("machine-key.pem"),
        })
        .expect("server TLS");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((ip, 0)))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        runtime.spawn(fleet_trust::serve(
            listener,
            Some(Arc::new(tls)),
            api(),
            Limits::default(),
        ));
        Fleetd {
            addr,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// fleetd's answers for one unit on one machine; viewers may read, not change.
fn api() -> Router {
    let unit = || {
        json!({
            "name": "hello.service",
            "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 1d"}],
            "desiredState": "launched",
            "currentState": "launched",
            "machineID": MACHINE,
        })
    };
    let v1 = Router::new()
        .route(
            "/units",
            get(move || async move { Json(json!({ "units": [unit()] })) }),
        )
        .route(
            "/units/{name}",
            get(move |UrlPath(name): UrlPath<String>| async move {
                if name == "hello.service" {
                    Json(unit()).into_response()
                } else {
                    error(StatusCode::NOT_FOUND, "unit does not exist")
                }
            })
            .delete(|Extension(caller): Extension<Caller>| async move {
                match caller {
                    Caller::Certificate(Identity {
                        role: Role::Viewer,
                        name,
                    }) => error(
                        StatusCode::FORBIDDEN,
                        &format!("{name} (fleet-viewer) may only read the cluster"),
                    ),
                    _ => StatusCode::NO_CONTENT.into_response(),
                }
            }),
        )
        .route(
            "/state",
            get(|| async {
                Json(json!({"states": [{
                    "name": "hello.service",
                    "hash": "e55c0ae8e0c5b1bcb0a0cbc0f8a5d0c4c2a3a1b0",
                    "machineID": MACHINE,
                    "systemdLoadState": "loaded",
                    "systemdActiveState": "active",
                    "systemdSubState": "running",
                }]}))
            }),
        )
        .route(
            "/machines",
            get(|| async {
                Json(json!({"machines": [{"id": MACHINE, "primaryIP": "127.0.0.1"}]}))
            }),
        );
    Router::new().nest("/fleet/v1", v1)
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message}});
    (status, Json(body)).into_response()
}

/// Runs fleetctl against `fleetd` with `flags`, expecting it to fail within a bound, with
/// exit code 1 and one line; returns that line.
fn refused(url: &str, flags: &[String], command: &[&str]) -> String {
    let mut args: Vec<&str> = vec!["--endpoint", url, "--request-timeout", "20"];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(command);
    let started = Instant::now();
    let (code, out, err) = fleetctl(&args);
    let elapsed = started.elapsed();
    assert_eq!(code, Some(1), "{args:?}: {out}{err}");
    assert!(
        elapsed < Duration::from_secs(10),
        "answered after {elapsed:?}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    lines[0].to_owned()
}

#[test]
fn an_operator_lists_units_over_tls() {
    let keys = Keys::new();
    let fleetd = Fleetd::start(&keys);
    let url = fleetd.url();
    let mut args = vec!["--endpoint", url.as_str()];
    let flags = keys.flags("ca", Some("alice"));
    args.extend(flags.iter().map(String::as_str));
    args.push("list-units");
    let out = ok(&args);
    assert_eq!(
        out,
        "UNIT\t\tMACHINE\t\t\tACTIVE\tSUB\nhello.service\t2c6f3a3d.../127.0.0.1\tactive\trunning\n"
    );
}

#[test]
fn a_viewer_is_told_what_fleetd_refused() {
    let keys = Keys::new();
    let fleetd = Fleetd::start(&keys);
    let line = refused(
        &fleetd.url(),
        &keys.flags("ca", Some("bob")),
        &["destroy", "hello.service"],
    );
    assert_eq!(
        line,
        "Error destroying units: bob (fleet-viewer) may only read the cluster (HTTP 403)"
    );
    // Reading is allowed.
    let mut args = vec!["--endpoint".to_owned(), fleetd.url()];
    args.extend(keys.flags("ca", Some("bob")));
    args.push("list-unit-files".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(ok(&args).contains("hello.service"));
}

#[test]
fn each_failed_handshake_is_one_line_saying_why() {
    let keys = Keys::new();
    let fleetd = Fleetd::start(&keys);
    let url = fleetd.url();
    let elsewhere = Fleetd::start_on(&keys, "127.0.0.2");
    let other_name = elsewhere.url();
    let reach = |url: &str, reason: &str| {
        format!("Error retrieving list of units from repository: cannot reach fleetd at {url}: {reason}")
    };
    let cases = [
        (
            url.as_str(),
            keys.flags("ca", None),
            reach(&url, "the server requires a client certificate signed by the cluster's CA, and this client sent none"),
        ),
        (
            url.as_str(),
            keys.flags("other", Some("mallory")),
            reach(&url, "the server's certificate is not signed by the CA this client trusts (a server of another cluster, or the wrong CA file)"),
        ),
        (
            other_name.as_str(),
            keys.flags("ca", Some("alice")),
            reach(&other_name, "the server's certificate is not valid for \"127.0.0.2\", the name this client asked for (it is valid for 127.0.0.1)"),
        ),
    ];
    for (url, flags, expected) in cases {
        assert_eq!(refused(url, &flags, &["list-units"]), expected, "{flags:?}");
    }
    // A client trusting both CAs gets through its own checks with another cluster's
    // certificate: fleetd refuses it.
    let both = keys.path("both.pem");
    let pems = [keys.path("ca/ca.pem"), keys.path("other/ca.pem")]
        .map(|p| std::fs::read_to_string(p).expect("read"));
    std::fs::write(&both, pems.concat()).expect("write");
    let mut flags = keys.flags("other", Some("mallory"));
    flags[1] = both.display().to_string();
    assert_eq!(
        refused(&url, &flags, &["list-units"]),
        reach(
            &url,
            "the server refused this client's certificate: it is not signed by the cluster's CA"
        )
    );
    // Without --ca-file, the system's CAs are trusted, and the error says so.
    if Path::new(fleet_client::SYSTEM_CA_BUNDLE).exists() {
        assert_eq!(
            refused(&url, &[], &["list-units"]),
            reach(&url, "the server's certificate is not signed by the CA this client trusts (a server of another cluster, or the wrong CA file); without a CA file, this client trusts the CAs of /etc/ssl/certs/ca-certificates.crt")
        );
    }
}

#[test]
fn key_files_are_checked_before_connecting() {
    let keys = Keys::new();
    // Nothing listens there: each error comes from the files, before any connection.
    let url = "https://127.0.0.1:1";
    let ca = keys.file("ca/ca.pem");
    let alice = keys.file("alice.pem");
    let missing = keys.file("missing-key.pem");
    let flags = |cert: &str, key: &str| -> Vec<String> {
        ["--ca-file", &ca, "--cert-file", cert, "--key-file", key]
            .map(str::to_owned)
            .to_vec()
    };
    let cases = [
        (
            flags(&alice, &missing),
            format!("cannot read {missing}: No such file or directory (os error 2)"),
        ),
        (
            flags(&alice, &keys.file("bob-key.pem")),
            format!(
                "{}: this private key does not match the certificate in {alice}",
                keys.file("bob-key.pem")
            ),
        ),
        (
            flags(&keys.file("mallory.pem"), &keys.file("mallory-key.pem")),
            format!(
                "{}: the certificate of \"mallory\" is not signed by the CA in {ca}",
                keys.file("mallory.pem")
            ),
        ),
    ];
    for (flags, expected) in cases {
        assert_eq!(refused(url, &flags, &["list-units"]), expected);
    }

    // An expired certificate is refused when loaded, with its date.
    let ca_pem = fleet_trust::Pem {
        cert: std::fs::read_to_string(keys.path("ca/ca.pem")).expect("ca"),
        key: std::fs::read_to_string(keys.path("ca/ca-key.pem")).expect("ca key"),
    };
    let now = std::time::SystemTime::now();
    let past = fleet_trust::Validity {
        not_before: now - Duration::from_secs(2 * 86_400),
        not_after: now - Duration::from_secs(86_400),
    };
    let carol = fleet_trust::issue(&ca_pem, Role::Operator, "carol", &[], past).expect("issue");
    fleet_trust::write_pem(keys.dir.path(), "carol", &carol).expect("write");
    let line = refused(
        url,
        &flags(&keys.file("carol.pem"), &keys.file("carol-key.pem")),
        &["list-units"],
    );
    let expected = format!(
        "{}: the certificate of \"carol\" expired on ",
        keys.file("carol.pem")
    );
    assert!(line.starts_with(&expected), "{line}");
}

#[test]
fn issued_files_carry_their_role_and_keep_their_keys_private() {
    let keys = Keys::new();
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    for key in [
        "ca/ca-key.pem",
        "machine-key.pem",
        "alice-key.pem",
        "bob-key.pem",
    ] {
        assert_eq!(mode(&keys.path(key)), 0o600, "{key}");
    }
    let ca = keys.path("ca/ca.pem");
    for (holder, role, name) in [
        ("alice", Role::Operator, "alice"),
        ("bob", Role::Viewer, "bob"),
        ("machine", Role::Machine, MACHINE),
    ] {
        let cert = keys.path(&format!("{holder}.pem"));
        let key = keys.path(&format!("{holder}-key.pem"));
        fleet_trust::client_config(&ca, Some((&cert, &key))).expect("a client's certificate");
        let der = fleet_trust::load_certificates(&cert).expect("load");
        let identity = Identity::from_der(&der[0]).expect("identity");
        assert_eq!(
            identity,
            Identity {
                role,
                name: name.into()
            },
            "{holder}"
        );
    }
    let server = ServerTls::load(TlsFiles {
        ca: ca.clone(),
        cert: keys.path("machine.pem"),
        key: keys.path("machine-key.pem"),
    })
    .expect("a server's certificate");
    assert_eq!(server.identity().name, MACHINE);

    // Nothing is overwritten: not the CA, not a holder's key.
    let dir = keys.file("ca");
    let before = std::fs::read(keys.path("ca/ca-key.pem")).expect("read");
    let (code, _, err) = fleetctl(&["tls", "ca", "create", "--dir", &dir]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!(
            "{} exists already: not overwriting it\n",
            keys.file("ca/ca.pem")
        )
    );
    assert_eq!(
        std::fs::read(keys.path("ca/ca-key.pem")).expect("read"),
        before
    );
    let out = keys.file("alice");
    let (code, _, err) = fleetctl(&[
        "tls", "cert", "create", "--ca", &dir, "--role", "viewer", "--name", "alice", "--out", &out,
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!(
            "{} exists already: not overwriting it\n",
            keys.file("alice.pem")
        )
    );
}

#[test]
fn issuing_says_what_it_wrote_and_connects_nowhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let pki = pki.to_str().expect("utf-8");
    // An endpoint and TLS flags that would fail any connection are not even looked at.
    let elsewhere = [
        "--endpoint",
        "https://192.0.2.1:1",
        "--ca-file",
        "/nonexistent/ca.pem",
    ];
    let run = |args: &[&str]| {
        let mut all = elsewhere.to_vec();
        all.extend_from_slice(args);
        ok(&all)
    };
    let out = run(&["tls", "ca", "create", "--dir", pki, "--days", "30"]);
    assert_eq!(
        out,
        format!(
            "wrote {pki}/ca.pem (certificate of the CA \"fleet CA\", valid for 30 days: give it to every fleetd and fleetctl)\n\
             wrote {pki}/ca-key.pem (its private key: keep it secret, it signs the cluster's certificates)\n"
        )
    );
    let out = run(&[
        "tls",
        "cert",
        "create",
        "--ca",
        pki,
        "--role",
        "etcd-server",
        "--name",
        "etcd0",
        "--ip",
        "10.0.0.5",
        "--dns",
        "etcd0.example",
        "--out",
        &format!("{pki}/"),
    ]);
    assert_eq!(
        out,
        format!(
            "wrote {pki}/etcd0.pem (certificate of \"etcd0\", etcd server, for 10.0.0.5, etcd0.example, valid for 365 days)\n\
             wrote {pki}/etcd0-key.pem (its private key: keep it secret)\n"
        )
    );
    // A directory --out names is made, for its owner only.
    let certs = dir.path().join("certs");
    let prefix = certs.join("fleetd-etcd");
    run(&[
        "tls",
        "cert",
        "create",
        "--ca",
        pki,
        "--role",
        "etcd-client",
        "--name",
        "fleetd",
        "--out",
        prefix.to_str().expect("utf-8"),
    ]);
    assert!(certs.join("fleetd-etcd.pem").is_file() && certs.join("fleetd-etcd-key.pem").is_file());
    let mode = std::fs::metadata(&certs)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    // etcd's certificates name no fleet role: a fleetd would refuse them.
    let der = fleet_trust::load_certificates(&Path::new(pki).join("etcd0.pem")).expect("load");
    let e = Identity::from_der(&der[0]).expect_err("no role");
    assert!(e.to_string().contains("names no organization"), "{e}");
}

#[test]
fn plain_http_to_a_tls_fleetd_suggests_https() {
    let keys = Keys::new();
    let fleetd = Fleetd::start(&keys);
    let url = format!("http://{}", fleetd.addr);
    assert_eq!(
        refused(&url, &[], &["list-units"]),
        format!("Error retrieving list of units from repository: cannot reach fleetd at {url}: the server did not answer in plain HTTP (does it serve TLS? then use an https:// endpoint)")
    );
}
