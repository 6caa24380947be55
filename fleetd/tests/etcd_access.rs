//! fleetd against a real etcd that authenticates (`etcdctl auth enable`): a wrong password stops
//! it at once with etcd's reason, before it serves or registers anything.

use std::process::Command;
use std::time::{Duration, Instant};

use fleet_testkit::{Etcd, TempDir};

/// Runs fleetd with `conf` as its only configuration; waits at most 30 s for it to exit.
fn fleetd(conf: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("fleetd-conf");
    let path = dir.path().join("fleet.conf");
    std::fs::write(&path, conf).expect("write fleet.conf");
    let machine_id = dir.path().join("machine-id");
    std::fs::write(&machine_id, format!("{}\n", "c".repeat(32))).expect("write machine-id");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--config")
        .arg(&path)
        .arg("--machine-id-file")
        .arg(&machine_id)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fleetd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("fleetd's output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_wrong_etcd_password_stops_fleetd_with_etcds_reason() {
    let etcd = Etcd::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(etcd.enable_auth("root-secret", "fleet", "fleet-secret"));
    let (code, stderr) = fleetd(&format!(
        "etcd_servers={}\netcd_key_prefix={}\netcd_username=fleet\netcd_password=guess\n\
         peer_listen=off\npublic_ip=127.0.0.1\n",
        etcd.endpoint, etcd.prefix
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("fleetd:")).count(),
        1,
        "one line on stderr says why: {stderr}"
    );
}

/// With authentication, connecting to etcd authenticates, so it needs etcd to answer: a
/// fleetd that starts while etcd does not (a machine booting before etcd is reachable) waits
/// for it, saying so, instead of exiting (systemd would restart it until its start limit and
/// then give up), and goes on once etcd answers. It tells systemd why it is not ready yet and
/// extends its start timeout meanwhile (`Type=notify`), then that it is ready.
#[test]
fn a_fleetd_with_a_password_waits_for_etcd_to_answer() {
    let etcd = Etcd::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(etcd.enable_auth("root-secret", "fleet", "fleet-secret"));
    let dir = TempDir::new("fleetd-conf");
    let conf = dir.path().join("fleet.conf");
    std::fs::write(
        &conf,
        format!(
            "etcd_servers={}\netcd_key_prefix={}\netcd_username=fleet\n\
             etcd_password=fleet-secret\netcd_request_timeout=0.5\npeer_listen=off\n\
             public_ip=127.0.0.1\nunits_directory={}\n",
            etcd.endpoint,
            etcd.prefix,
            dir.path().join("units").display()
        ),
    )
    .expect("write fleet.conf");
    let machine_id = dir.path().join("machine-id");
    std::fs::write(&machine_id, format!("{}\n", "d".repeat(32))).expect("write machine-id");
    let log = dir.path().join("stderr");
    // systemd's notification socket, as `Type=notify` gives it.
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind a socket");
    notify.set_nonblocking(true).expect("non-blocking");
    etcd.pause();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .arg("--config")
        .arg(&conf)
        .arg("--machine-id-file")
        .arg(&machine_id)
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("LISTEN_FDS")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("create the log"))
        .spawn()
        .expect("run fleetd");
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let until = |what: &str, check: &dyn Fn(&str) -> bool, child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = stderr();
            if check(&text) {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                etcd.resume();
                panic!("fleetd exited ({status}) before {what}: {text}");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                etcd.resume();
                panic!("not {what} within 30 s: {text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Tries again, and again: two warnings, 1 s apart, and still running.
    until(
        "waiting for etcd",
        &|t| t.matches("etcd is not reachable yet").count() >= 2,
        &mut child,
    );
    etcd.resume();
    until(
        "registered once etcd answers",
        &|t| t.contains("registered machine"),
        &mut child,
    );
    let _ = child.kill();
    let _ = child.wait();
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let extended = |m: &String| {
        m.contains("STATUS=waiting for etcd")
            && m.lines()
                .filter_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
                .any(|v| v.parse::<u64>().is_ok_and(|us| us >= 1_500_000))
    };
    let waiting = messages.iter().position(extended);
    let ready = messages.iter().position(|m| m == "READY=1");
    assert!(
        matches!((waiting, ready), (Some(w), Some(r)) if w < r),
        "systemd told of the wait, then of readiness: {messages:?}"
    );
}
