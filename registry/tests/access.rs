//! Whether etcd serves fleet: authentication (`etcd_username`/`etcd_password`) against an etcd
//! with `auth enable`, and how a refusal is told apart from an outage.

mod support;

use std::time::Duration;

use fleet_registry::{Error, EtcdTls, Registry};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_user_with_its_password_works_and_a_wrong_password_is_a_refusal() {
    let etcd = Etcd::start();
    etcd.enable_auth("root-secret", "fleet", "fleet-secret")
        .await;

    let mut good = config(&etcd);
    good.username = Some("fleet".into());
    good.password = Some("fleet-secret".into());
    let registry = Registry::connect(&good)
        .await
        .expect("connect with the password");
    registry
        .check_access()
        .await
        .expect("the user may use the prefix");
    registry
        .put_unit(&unit("hello.service"))
        .await
        .expect("write");
    let names: Vec<String> = registry
        .units()
        .await
        .expect("read")
        .into_iter()
        .map(|u| u.name.to_string())
        .collect();
    assert_eq!(names, ["hello.service"]);

    let mut wrong = good.clone();
    wrong.password = Some("guess".into());
    let error = match Registry::connect(&wrong).await {
        Err(e) => e,
        Ok(r) => r
            .check_access()
            .await
            .expect_err("a wrong password is refused"),
    };
    assert!(matches!(error, Error::Refused { .. }), "{error:?}");
    assert!(
        error.to_string().contains("authentication failed"),
        "{error}"
    );

    // Refused by one endpoint while another is down, whichever comes first: a refusal, which
    // fleetd stops for, not an outage, which it waits out.
    let mut down_first = wrong.clone();
    down_first.endpoints = vec![
        format!("http://127.0.0.1:{}", closed_port()),
        etcd.endpoint.clone(),
    ];
    let error = match Registry::connect(&down_first).await {
        Err(e) => e,
        Ok(_) => panic!("connected with a wrong password"),
    };
    assert!(matches!(error, Error::Refused { .. }), "{error:?}");

    // No credentials at all: refused too, not taken for an outage.
    let anonymous = Registry::connect(&config(&etcd)).await.expect("connect");
    let error = anonymous
        .check_access()
        .await
        .expect_err("anonymous is refused");
    assert!(matches!(error, Error::Refused { .. }), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_without_permission_on_the_prefix_is_refused() {
    let etcd = Etcd::start();
    etcd.enable_auth("root-secret", "fleet", "fleet-secret")
        .await;
    let mut other = config(&etcd);
    other.prefix = "/elsewhere/".into();
    other.username = Some("fleet".into());
    other.password = Some("fleet-secret".into());
    let registry = Registry::connect(&other).await.expect("connect");
    let error = registry
        .check_access()
        .await
        .expect_err("no permission outside the prefix");
    assert!(matches!(error, Error::Refused { .. }), "{error:?}");
    assert!(error.to_string().contains("permission denied"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_that_is_down_is_an_outage_not_a_refusal() {
    let mut down = config(&Etcd::start());
    down.endpoints = vec![format!("http://127.0.0.1:{}", closed_port())];
    let registry = Registry::connect(&down).await.expect("connecting is lazy");
    let error = registry.check_access().await.expect_err("nothing answers");
    assert!(!matches!(error, Error::Refused { .. }), "{error:?}");
    assert!(error.is_unavailable(), "{error:?}");
}

/// What a machine's peer endpoint may serve: its own units, and global units it runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_unit_runs_on_the_machine_it_is_placed_on_and_a_global_one_where_it_reports() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let (_one, lease_one) = present(&registry, 1).await;
    let (_two, _) = present(&registry, 2).await;
    let leadership = registry
        .campaign(&machine_id(1), lease_one)
        .await
        .unwrap()
        .unwrap();
    registry.put_unit(&unit("web.service")).await.unwrap();
    registry
        .put_unit(&global_unit("log.service"))
        .await
        .unwrap();
    registry
        .apply_placements(leadership, &[place(&machine_id(1), "web.service")])
        .await
        .unwrap();
    let runs_on = |m: u8, unit: &'static str| {
        let registry = registry.clone();
        async move { registry.runs_on(&machine_id(m), &name(unit)).await.unwrap() }
    };
    assert!(runs_on(1, "web.service").await);
    assert!(!runs_on(2, "web.service").await, "placed elsewhere");
    assert!(!runs_on(1, "log.service").await, "global, not reported yet");
    registry
        .publish_state(lease_one, &state(1, "log.service"))
        .await
        .unwrap();
    assert!(runs_on(1, "log.service").await, "global and reported");
    assert!(!runs_on(2, "log.service").await);
    assert!(!runs_on(1, "sshd.service").await, "not fleet's");
}

/// TLS as fleetd's etcd_cafile, etcd_certfile and etcd_keyfile give it.
fn tls_of(
    keys: &fleet_testkit::EtcdKeys,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> EtcdTls {
    let read = |p: &std::path::Path| std::fs::read(p).expect("read a key file");
    EtcdTls {
        ca_pem: read(&keys.ca),
        identity: Some((read(cert), read(key))),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_client_certificates_and_a_renewal_used_without_a_restart() {
    let etcd = Etcd::start_tls();
    let keys = etcd.keys.clone().expect("a TLS etcd has keys");
    let mut tls = config(&etcd);
    tls.tls = Some(tls_of(&keys, &keys.cert, &keys.key));
    let registry = Registry::connect(&tls).await.expect("connect");
    registry
        .check_access()
        .await
        .expect("its own CA's client is served");
    registry
        .put_unit(&unit("a.service"))
        .await
        .expect("write over TLS");

    // Without a client certificate, or with another CA's: nothing is served.
    let mut anonymous = tls.clone();
    anonymous.tls = Some(EtcdTls {
        ca_pem: std::fs::read(&keys.ca).expect("ca"),
        identity: None,
    });
    let refused = Registry::connect(&anonymous)
        .await
        .expect("connecting is lazy");
    let error = refused.units().await.expect_err("no client certificate");
    assert!(error.is_unavailable(), "{error:?}");

    // A renewal applies to the next requests: first to a certificate etcd refuses (which shows
    // the new one is used), then to a good renewed one.
    let (foreign, foreign_key) = keys.foreign_client("mallory");
    registry
        .set_tls(tls_of(&keys, &foreign, &foreign_key))
        .await
        .expect("reconnect");
    let error = registry
        .units()
        .await
        .expect_err("another CA's certificate");
    assert!(error.is_unavailable(), "{error:?}");
    let (renewed, renewed_key) = keys.issue_client("fleet-renewed");
    registry
        .set_tls(tls_of(&keys, &renewed, &renewed_key))
        .await
        .expect("reconnect");
    let names: Vec<String> = registry
        .units()
        .await
        .expect("served again with the renewed certificate")
        .into_iter()
        .map(|u| u.name.to_string())
        .collect();
    assert_eq!(names, ["a.service"]);
}

/// A TCP gate on loopback in front of etcd: while open it forwards each connection to etcd;
/// closed, it drops the connections it forwards and those that come (a member down).
struct Gate {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections forwarded so far.
    forwarded: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The forwarding tasks, aborted when the gate closes.
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn new(etcd: &Etcd, open: bool) -> Gate {
        let target = etcd.endpoint.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a gate");
        let port = listener.local_addr().expect("the gate's address").port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(open));
        let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepting = tokio::spawn({
            let (open, forwarded, links) = (open.clone(), forwarded.clone(), links.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        continue;
                    };
                    forwarded.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let link = tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                    links.lock().unwrap().push(link.abort_handle());
                }
            }
        });
        Gate {
            port,
            open,
            forwarded,
            links,
            accepting,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
        if !open {
            for link in self.links.lock().unwrap().drain(..) {
                link.abort();
            }
        }
    }

    fn forwarded(&self) -> usize {
        self.forwarded.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.set_open(false);
        self.accepting.abort();
    }
}

/// With authentication, connecting to an endpoint authenticates, so a member down when
/// fleetd starts cannot be connected then. It is connected once it is up, and serves fleetd
/// when the member that was up is lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_down_at_start_up_is_connected_once_it_is_up() {
    let etcd = Etcd::start();
    etcd.enable_auth("root-secret", "fleet", "fleet-secret")
        .await;
    let first = Gate::new(&etcd, true).await;
    let second = Gate::new(&etcd, false).await;
    let mut both = config(&etcd);
    both.endpoints = vec![first.endpoint(), second.endpoint()];
    both.username = Some("fleet".into());
    both.password = Some("fleet-secret".into());
    let registry = Registry::connect(&both)
        .await
        .expect("connect through the first");
    registry.put_unit(&unit("a.service")).await.expect("write");
    assert_eq!(second.forwarded(), 0);

    second.set_open(true);
    eventually(
        "the second endpoint connected",
        Duration::from_secs(10),
        || async { second.forwarded() > 0 },
    )
    .await;
    // A connection forwarded: the client connecting (it joins the ring once it has
    // authenticated, which the requests below wait for). The first lost: requests move to
    // the second.
    first.set_open(false);
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match registry.put_unit(&unit("b.service")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < until,
                    "no request reached etcd through the second endpoint: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let names: Vec<String> = registry
        .units()
        .await
        .expect("read through the second")
        .into_iter()
        .map(|u| u.name.to_string())
        .collect();
    assert_eq!(names, ["a.service", "b.service"]);
}
