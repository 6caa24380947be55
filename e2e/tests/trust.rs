//! Only holders of the cluster's keys get an answer, and a certificate's role is what its
//! holder may do: on the local cluster, whose keys `fleet-cluster up` made (`pki()`), with
//! etcd serving TLS to its own CA's client certificates only.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fleet_e2e::{api_url, cluster, eventually, https, node_ip, pki, unique, Cluster};

/// The fleetctl under test, with no `FLEETCTL_*` variable but those each step sets.
fn fleetctl() -> Command {
    fleet_e2e::bare_fleetctl(&fleet_e2e::target_dir().join("debug"))
}

/// `fleetctl tls ARGS`, which must succeed.
fn tls(args: &[&str]) {
    let out = fleetctl()
        .arg("tls")
        .args(args)
        .output()
        .expect("run fleetctl tls");
    assert!(out.status.success(), "fleetctl tls {args:?}: {out:?}");
}

/// `fleetctl list-units` on node1 with the TLS files of `env` (`FLEETCTL_*`, path): its exit
/// code and standard error.
fn list_units_with(env: &[(&str, PathBuf)]) -> (Option<i32>, String) {
    let mut command = fleetctl();
    command.env("FLEETCTL_ENDPOINT", api_url(1));
    for (key, path) in env {
        command.env(key, path);
    }
    let out = command.arg("list-units").output().expect("run fleetctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Renews `stem.pem` and `stem-key.pem` of node1's keys as an operator renews: new files
/// issued by `fleetctl tls cert create` with `args` from the CA `ca` of the cluster's keys,
/// moved over the old ones (the key first).
fn renew_on_node1(c: &Cluster, stem: &str, ca: &str, args: &[&str]) {
    let fresh = c.scratch().join(unique(&format!("fresh-{stem}")));
    let ca = pki().join(ca).to_string_lossy().to_string();
    let out = fresh.to_string_lossy().to_string();
    let mut create = vec!["cert", "create", "--ca", &ca];
    create.extend_from_slice(args);
    create.extend(["--out", &out]);
    tls(&create);
    let node = pki().join("nodes/node1");
    for suffix in ["-key.pem", ".pem"] {
        let target = node.join(format!("{stem}{suffix}"));
        let staged = node.join(format!("{stem}{suffix}.new"));
        std::fs::copy(format!("{out}{suffix}"), &staged).expect("copy");
        std::fs::rename(&staged, &target).expect("rename");
    }
}

/// A scratch directory of keys not the cluster's: another CA, and an operator it signed.
fn foreign_keys(c: &Cluster) -> PathBuf {
    let dir = c.scratch().join(unique("foreign"));
    let d = dir.to_string_lossy().to_string();
    tls(&[
        "ca",
        "create",
        "--dir",
        &format!("{d}/ca"),
        "--name",
        "another CA",
    ]);
    tls(&[
        "cert",
        "create",
        "--ca",
        &format!("{d}/ca"),
        "--role",
        "operator",
        "--name",
        "mallory",
        "--out",
        &format!("{d}/mallory"),
    ]);
    dir
}

#[test]
fn without_a_certificate_of_the_cluster_nothing_is_answered() {
    let c = cluster();
    let units = format!("{}/fleet/v1/units", api_url(1));

    // No client certificate: refused in the handshake, said in one line.
    let none = https("GET", &units, None, "ca/ca.pem", None, None).expect_err("no certificate");
    assert!(none.contains("client certificate"), "{none}");
    assert!(!none.contains('\n'), "{none}");

    // An operator of another cluster: fleetctl trusting both CAs sends its certificate, and
    // fleetd refuses it.
    let foreign = foreign_keys(c);
    let both = foreign.join("both-cas.pem");
    let mut bundle = std::fs::read(pki().join("ca/ca.pem")).expect("the cluster's CA");
    bundle.extend(std::fs::read(foreign.join("ca/ca.pem")).expect("the other CA"));
    std::fs::write(&both, bundle).expect("write the bundle");
    let (code, stderr) = list_units_with(&[
        ("FLEETCTL_CA_FILE", both),
        ("FLEETCTL_CERT_FILE", foreign.join("mallory.pem")),
        ("FLEETCTL_KEY_FILE", foreign.join("mallory-key.pem")),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("not signed by the cluster's CA"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // A client that trusts another CA does not trust fleetd.
    let (code, stderr) = list_units_with(&[("FLEETCTL_CA_FILE", foreign.join("ca/ca.pem"))]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("not signed by the CA this client trusts"),
        "{stderr}"
    );

    // The operator is answered.
    c.fleetctl(&["list-units"])
        .expect_ok("the operator lists units");
}

#[test]
fn a_viewer_reads_and_its_changes_are_refused_and_change_nothing() {
    let c = cluster();
    let units = c.start_one_per_node("viewed");
    let name = units[0].name.as_str();
    let viewer = |args: &[&str]| c.fleetctl_as("viewer", 1, args);

    for args in [
        vec!["list-units"],
        vec!["list-unit-files"],
        vec!["list-machines"],
        vec!["cat", name],
        vec!["status", name],
        vec!["journal", "-n", "1", name],
    ] {
        viewer(&args).expect_ok(&format!("the viewer may {args:?}"));
    }
    let before = [
        c.fleetctl(&["list-unit-files", "--no-legend", "--full"])
            .stdout,
        c.fleetctl(&["list-machines", "--no-legend", "--full"])
            .stdout,
    ];
    let path = c.unit_file(&unique("refused"), &fleet_e2e::ticker_unit("refused"));
    let path = path.to_string_lossy().to_string();
    for args in [
        vec!["stop", "--no-block", name],
        vec!["unload", "--no-block", name],
        vec!["destroy", name],
        vec!["start", "--no-block", path.as_str()],
        vec!["submit", path.as_str()],
    ] {
        let out = viewer(&args);
        assert_eq!(out.code, Some(1), "viewer {args:?}: {out:#?}");
        assert!(
            out.stderr.contains("may only read"),
            "viewer {args:?}: {out:#?}"
        );
    }
    // The machines' metadata, which fleetctl does not change: straight to the API.
    let patch = format!(
        r#"[{{"op":"add","path":"/{}/metadata/role","value":"hacked"}}]"#,
        c.machine_id(1)
    );
    let (code, text) = https(
        "PATCH",
        &format!("{}/fleet/v1/machines", api_url(1)),
        Some("viewer"),
        "ca/ca.pem",
        None,
        Some(&patch),
    )
    .expect("an answer");
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("\"code\":403"), "{text}");

    let after = [
        c.fleetctl(&["list-unit-files", "--no-legend", "--full"])
            .stdout,
        c.fleetctl(&["list-machines", "--no-legend", "--full"])
            .stdout,
    ];
    assert_eq!(before, after, "a refused change changed the cluster");
    c.assert_unchanged(&units, "after the viewer's refused changes");
    c.destroy_all(&units);
}

#[test]
fn the_peer_endpoint_answers_the_cluster_s_machines_only() {
    let _c = cluster();
    let presence = format!("https://{}:49154/fleet/peer/v1/presence", node_ip(1));
    let (code, text) = https(
        "GET",
        &presence,
        Some("nodes/node2/machine"),
        "ca/ca.pem",
        None,
        None,
    )
    .expect("a machine is answered");
    assert_eq!(code, 200, "{text}");
    for person in ["operator", "viewer"] {
        let (code, text) =
            https("GET", &presence, Some(person), "ca/ca.pem", None, None).expect("an answer");
        assert_eq!(code, 403, "{person}: {text}");
    }
    let none = https("GET", &presence, None, "ca/ca.pem", None, None).expect_err("no certificate");
    assert!(none.contains("client certificate"), "{none}");
}

#[test]
fn renewed_certificates_are_used_without_a_restart() {
    let c = cluster();
    let units = c.start_one_per_node("renewed");
    let pid = c
        .exec(1, &["systemctl", "show", "-P", "MainPID", "fleet.service"])
        .stdout;
    let renewed = unique("renewed");
    let units_url = format!("{}/fleet/v1/units", api_url(1));
    let by_new_name = || {
        https(
            "GET",
            &units_url,
            Some("operator"),
            "ca/ca.pem",
            Some(&renewed),
            None,
        )
    };
    let before = by_new_name().expect_err("not a name of the certificate in use");
    assert!(before.contains("not valid for"), "{before}");

    // Renewed as an operator renews, with one more name.
    let machine = c.machine_id(1);
    let ip = node_ip(1);
    renew_on_node1(
        c,
        "machine",
        "ca",
        &[
            "--role", "machine", "--name", &machine, "--ip", &ip, "--dns", "node1", "--dns",
            &renewed,
        ],
    );
    // Its etcd client certificate too.
    let etcd_before = c.fleetd_log_count(1, "reloaded the etcd client's certificates");
    renew_on_node1(
        c,
        "etcd",
        "etcd-ca",
        &["--role", "etcd-client", "--name", "node1-renewed"],
    );

    let answered = eventually(Duration::from_secs(20), || by_new_name().ok());
    let (code, text) = answered.expect("the renewed certificate is served");
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        c.exec(1, &["systemctl", "show", "-P", "MainPID", "fleet.service"])
            .stdout,
        pid,
        "fleetd restarted"
    );
    let etcd_reloaded = eventually(Duration::from_secs(20), || {
        (c.fleetd_log_count(1, "reloaded the etcd client's certificates") > etcd_before)
            .then_some(())
    });
    assert!(
        etcd_reloaded.is_some(),
        "node1 did not reload its etcd certificate"
    );
    // It still works with etcd: a unit started through it runs.
    let started = unique("after-renewal");
    let path = c.unit_file(&started, &fleet_e2e::ticker_unit("after the renewal"));
    c.fleetctl_via(1, &["start", &path.to_string_lossy()])
        .expect_ok("start through node1");
    c.fleetctl_via(1, &["destroy", &started])
        .expect_ok("destroy through node1");
    // Its peers reach it, and it them, with the new certificate.
    c.fleetctl_via(2, &["status", &units[0].name])
        .expect_ok("a peer reads node1's unit");
    c.fleetctl_via(1, &["status", &units[1].name])
        .expect_ok("node1 reads a peer's unit");
    c.assert_unchanged(&units, "after the renewal");
    c.destroy_all(&units);
}

/// Runs a second fleetd on node1 with its fleet.conf edited by `sed`; it must stop at once.
fn fleetd_with(c: &Cluster, sed: &str) -> fleet_e2e::Run {
    let script = format!(
        "sed {sed} /etc/fleet/fleet.conf > /tmp/refused.conf && \
         timeout 20 /opt/bin/fleetd --config /tmp/refused.conf"
    );
    c.exec(1, &["/bin/bash", "-c", &script])
}

#[test]
fn fleetd_stops_when_its_etcd_keys_are_wrong() {
    let c = cluster();
    // A client certificate of the cluster's CA, not etcd's: refused before any connection.
    let out = fleetd_with(
        c,
        "-e 's|^etcd_certfile=.*|etcd_certfile=/etc/fleet/pki/machine.pem|' \
         -e 's|^etcd_keyfile=.*|etcd_keyfile=/etc/fleet/pki/machine-key.pem|'",
    );
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("etcd_certfile"), "{out:#?}");
    assert!(out.stderr.contains("not signed by the CA"), "{out:#?}");

    // Trusting the wrong CA: etcd's certificate is refused in the handshake.
    let out = fleetd_with(
        c,
        "-e 's|^etcd_cafile=.*|etcd_cafile=/etc/fleet/pki/ca.pem|' \
         -e 's|^etcd_certfile=.*|etcd_certfile=/etc/fleet/pki/machine.pem|' \
         -e 's|^etcd_keyfile=.*|etcd_keyfile=/etc/fleet/pki/machine-key.pem|'",
    );
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("etcd refuses this fleetd"), "{out:#?}");
    assert!(out.stderr.contains("not signed by the CA"), "{out:#?}");
    // The node's own fleetd is untouched.
    c.fleetctl(&["list-machines"]).expect_ok("list-machines");
}
