//! The peer endpoint every fleetd serves to the others (`/fleet/peer/v1`), so that the fleetd
//! that received an API request can read a unit's journal or status on the machine that runs
//! it, and the client side of it.
//!
//! It also answers the questions of the majority protocol (`fleet-quorum`): how long this
//! machine has had no lease renewal acknowledged (`GET /presence`), and a renewal made on
//! request (`POST /presence/renew`); [`PeerWitness`] asks them of every member.
//!
//! Peers prove they are members of the cluster with their machine certificate over mutual TLS
//! ([`fleet_trust::serve`] sets each request's [`Caller`]): only a certificate of the machine
//! role is served (or anyone, on a plain-HTTP listener, `api_insecure_http`). A peer is served
//! the journal and status only of units that are this machine's business: placed on it, or
//! global and running on it ([`Registry::runs_on`]); any other name is 404.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Json;
use axum::Router;
use fleet_errors::root_cause;
use fleet_registry::{Liveness, Machine, MachineId, Registry, Renewal, Witness};
use fleet_trust::{Caller, Role, ServerTls};
use fleet_units::UnitName;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};

use fleet_client::schema::{ErrorEnvelope, EXIT_STATUS_HEADER};

use crate::follows::{self, Client, Follows};
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

/// What the peer endpoint serves from.
#[derive(Clone)]
struct PeerState {
    liveness: Liveness,
    registry: Registry,
    machine: MachineId,
    /// Peers follow for their own clients, whom they cap: here each peer machine and the whole.
    follows: Follows,
}

/// Refuses callers that are not machines of the cluster (a plain-HTTP listener admits all).
fn admit(caller: Option<&Extension<Caller>>) -> Result<(), ApiError> {
    match caller.map(|c| &c.0) {
        Some(Caller::Certificate(id)) if id.role == Role::Machine => Ok(()),
        Some(Caller::Insecure) => Ok(()),
        Some(Caller::Certificate(id)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the peer endpoint serves machines of the cluster only, not {} ({})",
                id.name, id.role
            ),
        )),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the peer endpoint serves machines of the cluster only",
        )),
    }
}

/// The unit of the request, if it is this machine's business; 404 otherwise, as for a unit
/// that does not exist (a peer learns nothing about the machine's other services).
async fn own_unit(
    state: &PeerState,
    params: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<UnitName, ApiError> {
    let unit = unit_param(params)?;
    if state.registry.runs_on(&state.machine, &unit).await? {
        Ok(unit)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{unit} is not fleet's on this machine"),
        ))
    }
}

/// The peer endpoint's router: `GET /fleet/peer/v1/journal?unit=X&lines=N&follow=B`,
/// `GET /fleet/peer/v1/status?unit=X`, `GET /fleet/peer/v1/presence` and
/// `POST /fleet/peer/v1/presence/renew`.
pub fn router(registry: Registry, machine: MachineId, liveness: Liveness, version: &str) -> Router {
    let v1 = Router::new()
        .route("/journal", get(journal).fallback(method_not_allowed))
        .route("/status", get(status).fallback(method_not_allowed))
        .route("/presence", get(presence).fallback(method_not_allowed))
        .route("/presence/renew", post(renew).fallback(method_not_allowed))
        .with_state(PeerState {
            liveness,
            registry,
            machine,
            follows: Follows::new(follows::OVERALL, follows::PER_PEER),
        });
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
    State(state): State<PeerState>,
    caller: Option<Extension<Caller>>,
    client: Client,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(caller.as_ref())?;
    let params = query_params(query);
    let query = JournalQuery::from_params(&params).map_err(ApiError::bad_request)?;
    let unit = own_unit(&state, &params).await?;
    let permit = query
        .follow
        .then(|| state.follows.admit(client))
        .transpose()?;
    let body = inspect::local_journal(&unit, query).map_err(inspect::not_run("journalctl"))?;
    Ok(text_response(follows::held(body, permit)))
}

/// This machine's answer to a peer asking whether it reaches etcd.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceAnswer {
    /// How long no renewal of this machine's lease has been acknowledged.
    pub since_renewal_ms: u64,
    /// The machine answering ([`Answer::machine`]); absent from older fleetds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineId>,
}

/// This machine's answer to a peer asking it to renew its lease now.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewAnswer {
    pub renewed: bool,
    /// How long this machine had answered no peer's question with anything but zero
    /// ([`Liveness::quiet_for`]), read after the renewal; absent from older fleetds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_ms: Option<u64>,
    /// The machine answering ([`Answer::machine`]); absent from older fleetds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineId>,
}

/// An answer to one of the majority protocol's questions, which names the machine that gave
/// it.
trait Answer {
    /// The machine that answered. An answer from another machine than the member asked (two
    /// members announcing one address: a container bridge's, say, where each machine's
    /// questions would reach itself) must not count as that member's, or one machine's answer
    /// would count several times towards a majority.
    fn machine(&self) -> Option<&MachineId>;
}

impl Answer for PresenceAnswer {
    fn machine(&self) -> Option<&MachineId> {
        self.machine.as_ref()
    }
}

impl Answer for RenewAnswer {
    fn machine(&self) -> Option<&MachineId> {
        self.machine.as_ref()
    }
}

async fn presence(
    State(state): State<PeerState>,
    caller: Option<Extension<Caller>>,
) -> Result<Json<PresenceAnswer>, ApiError> {
    admit(caller.as_ref())?;
    let since = state.liveness.answer_peer();
    Ok(Json(PresenceAnswer {
        since_renewal_ms: since.as_millis().min(u64::MAX as u128) as u64,
        machine: Some(state.machine.clone()),
    }))
}

async fn renew(
    State(state): State<PeerState>,
    caller: Option<Extension<Caller>>,
) -> Result<Json<RenewAnswer>, ApiError> {
    admit(caller.as_ref())?;
    let renewed = state.liveness.renew_now().await;
    // Read after the renewal was acknowledged, as the quiet wait's argument needs.
    let quiet = state.liveness.quiet_for();
    Ok(Json(RenewAnswer {
        renewed,
        quiet_ms: Some(quiet.as_millis().min(u64::MAX as u128) as u64),
        machine: Some(state.machine.clone()),
    }))
}

async fn status(
    State(state): State<PeerState>,
    caller: Option<Extension<Caller>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(caller.as_ref())?;
    let params = query_params(query);
    let unit = own_unit(&state, &params).await?;
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
    tls: Option<Arc<ServerTls>>,
    /// The HTTP client, built for the certificates of a generation of `tls`.
    http: Arc<Mutex<(u64, reqwest::Client)>>,
}

impl PeerClient {
    /// A client of the peers: over mutual TLS with `tls` (this machine's certificate, the
    /// cluster's CA; renewed certificates are used from the next request), else plain HTTP
    /// (`api_insecure_http`).
    pub fn new(tls: Option<Arc<ServerTls>>) -> PeerClient {
        let generation = tls.as_ref().map(|t| t.generation()).unwrap_or_default();
        let http = PeerClient::build(tls.as_deref());
        PeerClient {
            tls,
            http: Arc::new(Mutex::new((generation, http))),
        }
    }

    fn build(tls: Option<&ServerTls>) -> reqwest::Client {
        // No overall timeout: a followed journal lasts as long as its reader.
        // Never through an HTTP proxy from the environment: the peers are the cluster's.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(15))
            .user_agent(concat!("fleetd/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls((*tls.client_config()).clone());
        }
        builder.build().unwrap_or_else(|e| {
            // Only a TLS backend that cannot start fails here; such a client reaches no peer.
            tracing::error!(error = %e, "cannot build the client of the peers");
            reqwest::Client::new()
        })
    }

    /// The HTTP client for the certificates in use now, and the scheme it speaks.
    fn http(&self) -> (reqwest::Client, &'static str) {
        let mut http = self.http.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tls) = &self.tls else {
            return (http.1.clone(), "http");
        };
        let generation = tls.generation();
        if http.0 != generation {
            *http = (generation, PeerClient::build(Some(tls)));
        }
        (http.1.clone(), "https")
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
        let (http, scheme) = self.http();
        let mut request = http
            .request(method, format!("{scheme}://{address}{PEER_PREFIX}{path}"))
            .query(query);
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
                let reason = fleet_trust::explain(&e).unwrap_or_else(|| root_cause(&e));
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot reach the peer at {address}: {reason}"),
                )
            })?;
        let code = response.status();
        if code.is_success() {
            return Ok(response);
        }
        let bytes = tokio::time::timeout(ANSWER_TIMEOUT, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
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
    /// The members whose answers were not counted, with the machine that answered for them,
    /// already warned of: rounds come every 250 or 500 ms, a misconfiguration lasts.
    warned: Arc<Warned>,
}

/// Each member whose answers were not counted, with the machine that answered for it.
type Warned = Mutex<std::collections::HashSet<(MachineId, Option<MachineId>)>>;

impl PeerWitness {
    pub fn new(client: PeerClient) -> PeerWitness {
        PeerWitness {
            client,
            warned: Arc::default(),
        }
    }

    /// Says once per member and answering machine that an answer was not counted.
    fn not_counted(warned: &Warned, member: &MachineId, answered: Option<&MachineId>) {
        let first = warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((member.clone(), answered.cloned()));
        match (first, answered) {
            (true, Some(other)) => tracing::warn!(
                member = %member,
                answered = %other,
                "a member's peer address answered as another machine: its answers are not counted"
            ),
            (true, None) => tracing::warn!(
                member = %member,
                "a member's peer address is another member's too, and its fleetd does not say which machine answers: its answers are not counted"
            ),
            (false, _) => tracing::debug!(member = %member, "answer not counted"),
        }
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

    /// The answers of the members that answered, with their ids. An answer counts only as the
    /// member it names; one that names none (an older fleetd) only if no other member asked
    /// announces the same address.
    fn ask_all<T: serde::de::DeserializeOwned + Answer + Send + 'static>(
        &self,
        members: Vec<Machine>,
        method: reqwest::Method,
        path: &'static str,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<(MachineId, T)>> {
        let client = self.client.clone();
        let warned = self.warned.clone();
        let mut sharing: std::collections::HashMap<String, usize> = Default::default();
        for address in members.iter().filter_map(|m| m.peer_address.clone()) {
            *sharing.entry(address).or_default() += 1;
        }
        Box::pin(async move {
            let asks = members.into_iter().filter_map(|m| {
                let (id, address) = (m.id, m.peer_address?);
                let shared = sharing.get(&address).is_some_and(|n| *n > 1);
                let ask =
                    PeerWitness::ask::<T>(client.clone(), method.clone(), address, path, timeout);
                let warned = warned.clone();
                Some(async move {
                    let answer = ask.await?;
                    let own = match answer.machine() {
                        Some(machine) => *machine == id,
                        None => !shared,
                    };
                    if !own {
                        PeerWitness::not_counted(&warned, &id, answer.machine());
                    }
                    own.then_some((id, answer))
                })
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
    ) -> BoxFuture<'static, Vec<Renewal>> {
        let answers =
            self.ask_all::<RenewAnswer>(members, reqwest::Method::POST, "/presence/renew", timeout);
        Box::pin(async move {
            answers
                .await
                .into_iter()
                .filter(|(_, a)| a.renewed)
                .map(|(machine, a)| Renewal {
                    machine,
                    quiet_for: a.quiet_ms.map(Duration::from_millis),
                })
                .collect()
        })
    }
}
