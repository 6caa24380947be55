//! The peer endpoint every fleetd serves to the others (`/fleet/peer/v1`), so that the fleetd
//! that received an API request can read a unit's journal or status on the machine that runs
//! it, and the client side of it.
//!
//! It also answers the questions of the majority protocol (`fleet-quorum`): how long this
//! machine has had no lease renewal acknowledged (`GET /presence`), and a renewal made on
//! request (`POST /presence/renew`); [`PeerWitness`] asks them of every member.
//!
//! Peers authenticate with the cluster secret (`Authorization: Bearer <secret>`), which fleetd
//! learns from etcd ([`fleet_registry::Registry::peer_secret`]); until it is known, peer
//! requests are refused with 503.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use fleet_errors::root_cause;
use fleet_registry::{Liveness, Machine, MachineId, Witness};
use fleet_units::UnitName;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};

use fleet_client::schema::{ErrorEnvelope, EXIT_STATUS_HEADER};

use crate::inspect::{self, ByteStream, JournalQuery};
use crate::server::{method_not_allowed, query_params, with_server_header, ApiError};

/// Where the peer endpoint lives on a peer listener.
pub const PEER_PREFIX: &str = "/fleet/peer/v1";

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a peer may take to start answering (a journal's body then lasts as it must).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a peer's `systemctl status` may take, end to end.
const STATUS_TIMEOUT: Duration = Duration::from_secs(20);

/// The cluster secret, once known. Cheap to clone.
#[derive(Clone, Default)]
pub struct Secret(Arc<OnceLock<String>>);

impl Secret {
    pub fn new() -> Secret {
        Secret::default()
    }

    /// Records the secret (the first value wins).
    pub fn set(&self, secret: String) {
        let _ = self.0.set(secret);
    }

    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    /// Whether `header` is `Bearer <the secret>` (compared in constant time).
    fn admits(&self, header: Option<&HeaderValue>) -> Result<(), ApiError> {
        let Some(secret) = self.get() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this fleetd does not know the cluster secret yet (etcd unreachable?)",
            ));
        };
        let given = header
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), secret.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong peer credentials",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the peer endpoint serves from.
#[derive(Clone)]
struct PeerState {
    secret: Secret,
    liveness: Liveness,
}

impl axum::extract::FromRef<PeerState> for Secret {
    fn from_ref(state: &PeerState) -> Secret {
        state.secret.clone()
    }
}

/// The peer endpoint's router: `GET /fleet/peer/v1/journal?unit=X&lines=N&follow=B`,
/// `GET /fleet/peer/v1/status?unit=X`, `GET /fleet/peer/v1/presence` and
/// `POST /fleet/peer/v1/presence/renew`.
pub fn router(secret: Secret, liveness: Liveness, version: &str) -> Router {
    let v1 = Router::new()
        .route("/journal", get(journal).fallback(method_not_allowed))
        .route("/status", get(status).fallback(method_not_allowed))
        .route("/presence", get(presence).fallback(method_not_allowed))
        .route("/presence/renew", post(renew).fallback(method_not_allowed))
        .with_state(PeerState { secret, liveness });
    with_server_header(
        Router::new()
            .nest(PEER_PREFIX, v1)
            .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not found") }),
        version,
    )
}

fn unit_param(
    params: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<UnitName, ApiError> {
    match params.get("unit").map(Vec::as_slice) {
        Some([name]) => UnitName::parse(name).map_err(|e| ApiError::bad_request(e.to_string())),
        _ => Err(ApiError::bad_request(
            "exactly one unit parameter is required",
        )),
    }
}

async fn journal(
    State(secret): State<Secret>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    secret.admits(headers.get(header::AUTHORIZATION))?;
    let params = query_params(query);
    let unit = unit_param(&params)?;
    let query = JournalQuery::from_params(&params).map_err(ApiError::bad_request)?;
    let body = inspect::local_journal(&unit, query).map_err(inspect::not_run("journalctl"))?;
    Ok(text_response(body))
}

/// This machine's answer to a peer asking whether it reaches etcd.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceAnswer {
    /// How long no renewal of this machine's lease has been acknowledged.
    pub since_renewal_ms: u64,
}

/// This machine's answer to a peer asking it to renew its lease now.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct RenewAnswer {
    pub renewed: bool,
}

async fn presence(
    State(state): State<PeerState>,
    headers: HeaderMap,
) -> Result<Json<PresenceAnswer>, ApiError> {
    state.secret.admits(headers.get(header::AUTHORIZATION))?;
    let since = state.liveness.since_renewal();
    Ok(Json(PresenceAnswer {
        since_renewal_ms: since.as_millis().min(u64::MAX as u128) as u64,
    }))
}

async fn renew(
    State(state): State<PeerState>,
    headers: HeaderMap,
) -> Result<Json<RenewAnswer>, ApiError> {
    state.secret.admits(headers.get(header::AUTHORIZATION))?;
    Ok(Json(RenewAnswer {
        renewed: state.liveness.renew_now().await,
    }))
}

async fn status(
    State(secret): State<Secret>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    secret.admits(headers.get(header::AUTHORIZATION))?;
    let params = query_params(query);
    let unit = unit_param(&params)?;
    let (code, text) = inspect::local_status(&unit)
        .await
        .map_err(inspect::not_run("systemctl status"))?;
    Ok(status_response(code, text))
}

/// A streamed `text/plain` response.
pub(crate) fn text_response(body: ByteStream) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}

/// A status text with its exit code in [`EXIT_STATUS_HEADER`].
pub(crate) fn status_response(code: i32, text: Vec<u8>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::HeaderName::from_static(EXIT_STATUS_HEADER),
                code.to_string(),
            ),
        ],
        text,
    )
        .into_response()
}

/// Requests to other fleetds' peer endpoints.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: Secret,
}

impl PeerClient {
    pub fn new(secret: Secret) -> PeerClient {
        // No overall timeout: a followed journal lasts as long as its reader.
        // Never through an HTTP proxy from the environment: the request carries the secret.
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(15))
            .user_agent(concat!("fleetd/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        PeerClient { http, secret }
    }

    async fn get(
        &self,
        address: &str,
        path: &str,
        query: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ApiError> {
        self.request(reqwest::Method::GET, address, path, query, timeout)
            .await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        address: &str,
        path: &str,
        query: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ApiError> {
        let Some(secret) = self.secret.get() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this fleetd does not know the cluster secret yet (etcd unreachable?)",
            ));
        };
        let mut request = self
            .http
            .request(method, format!("http://{address}{PEER_PREFIX}{path}"))
            .query(query)
            .bearer_auth(secret);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = tokio::time::timeout(ANSWER_TIMEOUT, request.send())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("the peer at {address} did not answer within {ANSWER_TIMEOUT:?}"),
                )
            })?
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot reach the peer at {address}: {}", root_cause(&e)),
                )
            })?;
        let code = response.status();
        if code.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<ErrorEnvelope>(&bytes)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
        Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the peer at {address} answered {code}: {message}"),
        ))
    }

    /// Streams a unit's journal from the peer at `address`.
    pub async fn journal(
        &self,
        address: &str,
        unit: &UnitName,
        query: JournalQuery,
    ) -> Result<ByteStream, ApiError> {
        let mut params = vec![("unit", unit.to_string())];
        params.extend(query.to_params());
        let response = self.get(address, "/journal", &params, None).await?;
        Ok(stream::unfold(Some(response), |response| async move {
            let mut response = response?;
            match response.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        })
        .boxed())
    }

    /// A unit's status from the peer at `address`: systemctl's exit code and output.
    pub async fn status(&self, address: &str, unit: &UnitName) -> Result<(i32, Vec<u8>), ApiError> {
        let params = [("unit", unit.to_string())];
        let response = self
            .get(address, "/status", &params, Some(STATUS_TIMEOUT))
            .await?;
        let code = response
            .headers()
            .get(EXIT_STATUS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the peer at {address} sent no exit status"),
                )
            })?;
        let text = response.bytes().await.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("reading the status from {address}: {}", root_cause(&e)),
            )
        })?;
        Ok((code, text.to_vec()))
    }
}

/// Asks the members' peer endpoints for the majority protocol. Members without a peer address
/// and members that do not answer in time count as not answering.
#[derive(Clone)]
pub struct PeerWitness {
    client: PeerClient,
}

impl PeerWitness {
    pub fn new(client: PeerClient) -> PeerWitness {
        PeerWitness { client }
    }

    async fn ask<T: serde::de::DeserializeOwned>(
        client: PeerClient,
        method: reqwest::Method,
        address: String,
        path: &'static str,
        timeout: Duration,
    ) -> Option<T> {
        let answer = async {
            let response = client
                .request(method, &address, path, &[], Some(timeout))
                .await
                .ok()?;
            response.json::<T>().await.ok()
        };
        tokio::time::timeout(timeout, answer).await.ok().flatten()
    }

    /// The answers of the members that answered, with their ids.
    fn ask_all<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        members: Vec<Machine>,
        method: reqwest::Method,
        path: &'static str,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<(MachineId, T)>> {
        let client = self.client.clone();
        Box::pin(async move {
            let asks = members.into_iter().filter_map(|m| {
                let (id, address) = (m.id, m.peer_address?);
                let ask =
                    PeerWitness::ask::<T>(client.clone(), method.clone(), address, path, timeout);
                Some(async move { ask.await.map(|answer| (id, answer)) })
            });
            futures_util::future::join_all(asks)
                .await
                .into_iter()
                .flatten()
                .collect()
        })
    }
}

impl Witness for PeerWitness {
    fn since_renewal(
        &self,
        members: Vec<Machine>,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<Duration>> {
        let answers =
            self.ask_all::<PresenceAnswer>(members, reqwest::Method::GET, "/presence", timeout);
        Box::pin(async move {
            answers
                .await
                .into_iter()
                .map(|(_, a)| Duration::from_millis(a.since_renewal_ms))
                .collect()
        })
    }

    fn renew_now(
        &self,
        members: Vec<Machine>,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<MachineId>> {
        let answers =
            self.ask_all::<RenewAnswer>(members, reqwest::Method::POST, "/presence/renew", timeout);
        Box::pin(async move {
            answers
                .await
                .into_iter()
                .filter(|(_, a)| a.renewed)
                .map(|(id, _)| id)
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_admits_only_its_bearer() {
        let secret = Secret::new();
        let bearer = HeaderValue::from_static("Bearer s3cret");
        assert_eq!(
            secret.admits(Some(&bearer)).unwrap_err().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        secret.set("s3cret".into());
        assert!(secret.admits(Some(&bearer)).is_ok());
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "s3cret",
            "Basic s3cret",
            "",
        ] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert_eq!(
                secret.admits(Some(&v)).unwrap_err().status(),
                StatusCode::UNAUTHORIZED,
                "{bad:?}"
            );
        }
        assert_eq!(
            secret.admits(None).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
