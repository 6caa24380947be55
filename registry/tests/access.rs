//! Whether etcd serves fleet: authentication (`etcd_username`/`etcd_password`) against an etcd
//! with `auth enable`, and how a refusal is told apart from an outage.

mod support;

use fleet_registry::{Error, Registry};
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
