//! fleetd's HTTP API v1, served from the registry.
//!
//! Every request reads etcd afresh (no cache to go stale); while etcd is unreachable every
//! endpoint answers 503 with the JSON error envelope.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use fleet_client::schema;
use fleet_registry::{JobState, Machine, MachineId, Registry};
use fleet_units::{Requirements, UnitFile, UnitName};
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::follows::{self, Client, Follows};
use crate::inspect::{self, section_header, ByteStream, JournalQuery};
use crate::peer::{status_response, text_response, PeerClient};

/// Request bodies larger than this are refused with 413 and nothing is stored.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Default page size of list endpoints (fleet's `token_limit`).
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// The largest page a list request (or a page token) may ask for.
pub const MAX_PAGE_SIZE: u32 = fleet_registry::MAX_PAGE as u32;

#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) registry: Registry,
    pub(crate) page_size: u32,
    pub(crate) inspect: Option<Inspect>,
    pub(crate) follows: Follows,
}

/// fleet's answer to every API request while its fleetd could not register (here: while
/// another live fleetd holds this machine id), as fleet worded it.
pub const UNREGISTERED_MESSAGE: &str = "fleet server unable to communicate with etcd";

/// What the journal and status endpoints need: which machine this is (its units are read
/// here), and how to reach the others' peer endpoints.
#[derive(Clone)]
pub struct Inspect {
    pub machine: MachineId,
    pub peers: PeerClient,
    /// How long after it finds a machine's lease gone a removal by hand waits before it
    /// removes it: the engine's wait before it declares a machine dead
    /// (`fleet_quorum::Timing::engine_wait`).
    pub removal_wait: Duration,
}

/// The API's router, mounted under `/fleet/v1` and `/v1-alpha`, without journal and status (they answer 501).
pub fn router(registry: Registry, version: &str, page_size: u32) -> Router {
    router_with(registry, version, page_size, None, None)
}

/// Names fleetd (`Server: fleetd/<version>`) on every response of `router`, and makes sure
/// every error it answers is the JSON error envelope (see [`into_envelope`]).
pub(crate) fn with_server_header(router: Router, version: &str) -> Router {
    let server = HeaderValue::from_str(&format!("fleetd/{version}"))
        .unwrap_or_else(|_| HeaderValue::from_static("fleetd"));
    router.layer(axum::middleware::map_response(move |response: Response| {
        let server = server.clone();
        async move {
            let mut response = into_envelope(response).await;
            response.headers_mut().insert(header::SERVER, server);
            response
        }
    }))
}

/// An error response that is not JSON, rendered as the envelope with its text as the message.
/// Handlers and extractors here answer with [`ApiError`] already; this is the safety net for
/// what axum answers by itself (its rejections are plain text, its 405 is empty), so that
/// clients can rely on the envelope for every error.
async fn into_envelope(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match text.is_empty() {
        true => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
        false => text,
    };
    let mut envelope = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            envelope.headers_mut().insert(name, value.clone());
        }
    }
    envelope
}

/// A machine id from a route's `{name}`: 400 unless it is one.
pub(crate) fn parse_machine(id: &str) -> Result<MachineId, ApiError> {
    MachineId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A route's `{name}`, percent-decoded. Taken through this rather than axum's `Path`, whose
/// rejection (of `%FF`, say, which is not UTF-8) is plain text.
pub(crate) struct NameParam(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for NameParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<NameParam, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(NameParam(name)),
            Err(e) => Err(ApiError::new(
                e.status(),
                format!("invalid name or id in the path: {}", e.body_text()),
            )),
        }
    }
}

/// The API's router, mounted under `/fleet/v1` and `/v1-alpha`, with the journal and status of units when
/// `inspect` is given. While `registration` says another live fleetd holds this machine id,
/// every API request is answered 503 with [`UNREGISTERED_MESSAGE`], as fleet did (`/metrics`
/// still answers).
pub fn router_with(
    registry: Registry,
    version: &str,
    page_size: u32,
    inspect: Option<Inspect>,
    registration: Option<fleet_registry::Registration>,
) -> Router {
    let api = Api {
        registry,
        page_size: page_size.clamp(1, MAX_PAGE_SIZE),
        inspect,
        follows: Follows::new(follows::OVERALL, follows::PER_CLIENT),
    };
    let v1: Router<Api> = Router::new()
        .route("/units", get(list_units).fallback(method_not_allowed))
        .route(
            "/units/{name}",
            get(get_unit)
                .put(put_unit)
                .delete(delete_unit)
                .fallback(method_not_allowed),
        )
        .route(
            "/units/{name}/journal",
            get(unit_journal).fallback(method_not_allowed),
        )
        .route(
            "/units/{name}/status",
            get(unit_status).fallback(method_not_allowed),
        )
        // Not in fleet's API: additions, which leave fleet's routes as they were.
        .route(
            "/units/{name}/history",
            get(crate::history::unit_history).fallback(method_not_allowed),
        )
        .route(
            "/units/{name}/rollback",
            post(crate::history::rollback_unit).fallback(method_not_allowed),
        )
        .route(
            "/updates",
            get(crate::rolling::list_updates)
                .post(crate::rolling::create_update)
                .fallback(method_not_allowed),
        )
        .route(
            "/updates/{name}",
            get(crate::rolling::get_update).fallback(method_not_allowed),
        )
        .route(
            "/updates/{name}/pause",
            post(crate::rolling::pause_update).fallback(method_not_allowed),
        )
        .route(
            "/updates/{name}/resume",
            post(crate::rolling::resume_update).fallback(method_not_allowed),
        )
        .route(
            "/updates/{name}/abort",
            post(crate::rolling::abort_update).fallback(method_not_allowed),
        )
        .route(
            "/drains",
            get(crate::drain::list_drains).fallback(method_not_allowed),
        )
        .route(
            "/drains/{name}",
            get(crate::drain::get_drain)
                .put(crate::drain::put_drain)
                .delete(crate::drain::delete_drain)
                .fallback(method_not_allowed),
        )
        .route(
            "/events",
            get(crate::events::list_events).fallback(method_not_allowed),
        )
        .route("/state", get(list_states).fallback(method_not_allowed))
        .route("/state/{name}", get(get_state).fallback(method_not_allowed))
        .route("/discovery", get(discovery).fallback(method_not_allowed))
        .route(
            "/machines",
            get(list_machines)
                .patch(patch_machines)
                .fallback(method_not_allowed),
        )
        .route(
            "/machines/{name}",
            delete(crate::removal::remove_machine).fallback(method_not_allowed),
        )
        .layer(axum::middleware::from_fn(
            move |request: Request<Body>, next: axum::middleware::Next| {
                let blocked = registration
                    .as_ref()
                    .is_some_and(|r| r.blocked_by_duplicate());
                async move {
                    if blocked {
                        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, UNREGISTERED_MESSAGE)
                            .into_response()
                    } else {
                        next.run(request).await
                    }
                }
            },
        ));
    // fleet served the same API under its legacy prefix too: one router, mounted twice.
    with_server_header(
        Router::new()
            .nest("/fleet/v1", v1.clone())
            .nest("/v1-alpha", v1)
            .route("/metrics", get(metrics).fallback(method_not_allowed))
            .fallback(not_found)
            .with_state(api)
            .layer(axum::middleware::from_fn(crate::access::authorize)),
        version,
    )
}

/// An API error, rendered as fleet's JSON error envelope.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn status(&self) -> StatusCode {
        self.status
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<fleet_registry::Error> for ApiError {
    fn from(e: fleet_registry::Error) -> ApiError {
        if let fleet_registry::Error::TooLarge { .. } = e {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
        }
        if let fleet_registry::Error::OutOfSpace { .. } = e {
            return ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string());
        }
        if e.is_unavailable() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("etcd cluster unavailable: {e}"),
            )
        } else {
            tracing::error!(error = %e, "registry error");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = schema::ErrorEnvelope {
            error: schema::ErrorBody {
                code: self.status.as_u16(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not found")
}

pub(crate) async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not supported against this resource"),
    )
}

// ---- paging ---------------------------------------------------------------------------------

/// The page token: base64url of `{"limit":N,"after":"<position>"}`, opaque to clients, who echo
/// it back. `after` is where the previous page ended (a unit name; a machine id; a machine id
/// and a unit name for states), so that the next page is read from etcd starting there: a page
/// costs the same at any depth of the listing, and a unit created or removed between two
/// pages moves nothing in the pages around it.
///
/// fleet's own tokens (`{"limit":N,"page":P}`) are refused (400): serving page P that way
/// would mean reading every key before it, and clients never make tokens, they only echo
/// what this server gave them. Only a listing under way across an upgrade of the fleetd it
/// talks to sees the 400.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageToken {
    limit: u32,
    after: String,
}

/// The longest position a token may carry: a machine id, '/' and the longest unit name.
const MAX_POSITION_BYTES: usize = 512;

impl PageToken {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE.encode(json)
    }

    fn decode(s: &str) -> Result<PageToken, ApiError> {
        let bytes = base64::engine::general_purpose::URL_SAFE
            .decode(s)
            .map_err(|_| bad_token(s))?;
        let token: PageToken = serde_json::from_slice(&bytes).map_err(|_| bad_token(s))?;
        if token.limit == 0
            || token.limit > MAX_PAGE_SIZE
            || token.after.is_empty()
            || token.after.len() > MAX_POSITION_BYTES
        {
            return Err(bad_token(s));
        }
        Ok(token)
    }
}

fn bad_token(token: &str) -> ApiError {
    ApiError::bad_request(format!("invalid nextPageToken {token:?}"))
}

/// Where a list request starts: how many items a page holds and, for a page after the first,
/// the position the previous one ended at, read by `position` (a token whose position is not
/// one of this list's is refused like any bad token).
pub(crate) fn page_start<C>(
    page_size: u32,
    params: &BTreeMap<String, Vec<String>>,
    position: impl Fn(&str) -> Option<C>,
) -> Result<(u32, Option<C>), ApiError> {
    match params.get("nextPageToken").and_then(|v| v.first()) {
        None => Ok((page_size, None)),
        Some(t) => {
            let token = PageToken::decode(t)?;
            let after = position(&token.after).ok_or_else(|| bad_token(t))?;
            Ok((token.limit, Some(after)))
        }
    }
}

/// The token of the page after the one that ended at `next` (empty when it was the last).
pub(crate) fn next_page_token(limit: u32, next: Option<String>) -> String {
    match next {
        Some(after) => PageToken { limit, after }.encode(),
        None => String::new(),
    }
}

/// The one value of query parameter `key`, if given; given more than once, an error.
pub(crate) fn single_param<'a>(
    params: &'a BTreeMap<String, Vec<String>>,
    key: &str,
) -> Result<Option<&'a str>, String> {
    match params.get(key).map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([v]) => Ok(Some(v.as_str())),
        Some(_) => Err(format!("{key} given more than once")),
    }
}

/// A `true`/`false` query parameter (`follow`), false when not given.
pub(crate) fn flag_param(
    params: &BTreeMap<String, Vec<String>>,
    key: &str,
) -> Result<bool, String> {
    match single_param(params, key)? {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(format!("invalid {key} {v:?}: expected true or false")),
    }
}

/// Query parameters, keeping repeated keys.
pub(crate) fn query_params(query: Option<String>) -> BTreeMap<String, Vec<String>> {
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            params
                .entry(k.into_owned())
                .or_default()
                .push(v.into_owned());
        }
    }
    params
}

// ---- units ----------------------------------------------------------------------------------

pub(crate) fn parse_name(name: &str) -> Result<UnitName, ApiError> {
    UnitName::parse(name).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The API's view of a unit, given where it is placed, what that machine reports and why it
/// cannot be placed.
fn unit_json(
    unit: fleet_registry::Unit,
    machine: Option<&MachineId>,
    state: Option<&fleet_registry::UnitState>,
    unplaceable: Option<&Vec<String>>,
) -> schema::Unit {
    let global = unit.is_global();
    let machine = if global { None } else { machine };
    let current_state = match machine {
        _ if global => String::new(),
        Some(_) => state
            .map(|s| s.job_state.to_string())
            .unwrap_or_else(|| JobState::Inactive.to_string()),
        None => JobState::Inactive.to_string(),
    };
    let reason = match machine {
        Some(_) => String::new(),
        None => unplaceable.map(|r| r.join("; ")).unwrap_or_default(),
    };
    let start_failure = match machine {
        Some(_) => state.and_then(|s| s.start_failure.clone()),
        None => None,
    };
    schema::Unit {
        name: unit.name.to_string(),
        options: unit.options,
        desired_state: unit.desired_state.to_string(),
        current_state,
        machine_id: machine.map(|m| m.to_string()).unwrap_or_default(),
        reason,
        start_failure: start_failure.unwrap_or_default(),
    }
}

async fn list_units(
    State(api): State<Api>,
    RawQuery(query): RawQuery,
) -> Result<Json<schema::UnitPage>, ApiError> {
    let params = query_params(query);
    let (limit, after) = page_start(api.page_size, &params, |p| UnitName::parse(p).ok())?;
    let page = api
        .registry
        .units_page(after.as_ref(), limit as usize)
        .await?;
    let units = page
        .items
        .into_iter()
        .map(|v| {
            unit_json(
                v.unit,
                v.machine.as_ref(),
                v.state.as_ref(),
                v.unplaceable.as_ref(),
            )
        })
        .collect();
    Ok(Json(schema::UnitPage {
        units,
        next_page_token: next_page_token(limit, page.next.map(|n| n.to_string())),
    }))
}

async fn get_unit(
    State(api): State<Api>,
    NameParam(name): NameParam,
) -> Result<Json<schema::Unit>, ApiError> {
    let name = parse_name(&name)?;
    let Some(view) = api.registry.unit_view(&name).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist"));
    };
    Ok(Json(unit_json(
        view.unit,
        view.machine.as_ref(),
        view.state.as_ref(),
        view.unplaceable.as_ref(),
    )))
}

/// The body of a request that must say it is JSON (`PUT /units/{name}`, as fleet): 415 for
/// another content type or none, 413 when too large.
pub(crate) async fn json_body(request: Request<Body>) -> Result<axum::body::Bytes, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only application/json is supported",
        ));
    }
    read_body(request).await
}

/// The body of a request, whatever content type it claims (fleet decoded `PATCH /machines`
/// as JSON without looking at it): 413 when too large.
pub(crate) async fn read_body(request: Request<Body>) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            )
        })
}

/// A validated `PUT /units/{name}`: the unit's name, the desired state if one was given, and
/// the options as they will be stored if any were given.
#[derive(Debug)]
struct UnitRequest {
    name: UnitName,
    desired: Option<JobState>,
    options: Option<Vec<fleet_units::UnitOption>>,
}

/// Decodes and validates a `PUT /units/{name}` body for the unit named in the path, without
/// touching the registry.
fn unit_request(name: &str, body: &[u8]) -> Result<UnitRequest, ApiError> {
    let mut submitted: schema::Unit = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("unable to decode body: {e}")))?;
    if submitted.name.is_empty() {
        submitted.name = name.to_string();
    }
    if submitted.name != name {
        return Err(ApiError::bad_request(format!(
            "name in URL {name:?} differs from unit name in request body {:?}",
            submitted.name
        )));
    }
    let name = parse_name(name)?;
    let desired: Option<JobState> =
        match submitted.desired_state.as_str() {
            "" => None,
            s => Some(s.parse().map_err(|e: fleet_registry::InvalidJobState| {
                ApiError::bad_request(e.to_string())
            })?),
        };
    if name.is_template() && desired.is_some_and(|d| d != JobState::Inactive) {
        return Err(ApiError::bad_request(format!(
            "unit {name} is a template: only its instances can be loaded or launched"
        )));
    }
    let options = if submitted.options.is_empty() {
        None
    } else {
        let file = UnitFile::from_options(submitted.options)
            .normalized()
            .map_err(|e| ApiError::bad_request(format!("invalid unit options: {e}")))?;
        Requirements::from_unit(&name, &file).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Some(file.into_options())
    };
    Ok(UnitRequest {
        name,
        desired,
        options,
    })
}

async fn put_unit(
    State(api): State<Api>,
    NameParam(name): NameParam,
    request: Request<Body>,
) -> Result<StatusCode, ApiError> {
    let body = json_body(request).await?;
    let UnitRequest {
        name,
        desired,
        options,
    } = unit_request(&name, &body)?;
    // Most requests with options create a unit: one etcd request for those.
    let existing = match &options {
        Some(options) => {
            let unit = fleet_registry::Unit {
                name: name.clone(),
                options: options.clone(),
                desired_state: desired.unwrap_or(JobState::Inactive),
            };
            match api.registry.create_unit(&unit).await? {
                None => return Ok(StatusCode::CREATED),
                existing => existing,
            }
        }
        None => api.registry.unit(&name).await?,
    };
    match (existing, options) {
        (None, None) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "unit does not exist and options field empty",
        )),
        (None, Some(options)) => {
            let unit = fleet_registry::Unit {
                name,
                options,
                desired_state: desired.unwrap_or(JobState::Inactive),
            };
            api.registry.put_unit(&unit).await?;
            Ok(StatusCode::CREATED)
        }
        (Some(existing), Some(options)) if existing.options != options => {
            let unit = fleet_registry::Unit {
                name,
                options,
                desired_state: desired.unwrap_or(existing.desired_state),
            };
            api.registry.put_unit(&unit).await?;
            Ok(StatusCode::CREATED)
        }
        (Some(_), _) => {
            let Some(desired) = desired else {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "must provide DesiredState to update existing unit",
                ));
            };
            if !api.registry.set_desired_state(&name, desired).await? {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist"));
            }
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

async fn delete_unit(
    State(api): State<Api>,
    NameParam(name): NameParam,
) -> Result<StatusCode, ApiError> {
    let name = parse_name(&name)?;
    if api.registry.delete_unit(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist"))
    }
}

// ---- state and machines ---------------------------------------------------------------------

async fn list_states(
    State(api): State<Api>,
    RawQuery(query): RawQuery,
) -> Result<Json<schema::UnitStatePage>, ApiError> {
    let params = query_params(query);
    let (limit, after) = page_start(api.page_size, &params, |p| {
        let (machine, unit) = p.split_once('/')?;
        Some((MachineId::parse(machine).ok()?, UnitName::parse(unit).ok()?))
    })?;
    // A machine id or unit name that cannot exist matches nothing; when every one asked for
    // is such, nothing matches (an empty filter would match everything).
    let machines = params.get("machineID").cloned().unwrap_or_default();
    let units = params.get("unitName").cloned().unwrap_or_default();
    let machine_ids: BTreeSet<MachineId> = machines
        .iter()
        .filter_map(|m| MachineId::parse(m).ok())
        .collect();
    let unit_names: BTreeSet<UnitName> = units
        .iter()
        .filter_map(|u| UnitName::parse(u).ok())
        .collect();
    // Both filters ask for each pair of them: bounded, so that a long query cannot make this
    // fleetd (and etcd) read millions of keys.
    if machine_ids.len().saturating_mul(unit_names.len()) > MAX_STATE_PAIRS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_STATE_PAIRS} pairs of machineID and unitName in one request"
        )));
    }
    if (!machines.is_empty() && machine_ids.is_empty())
        || (!units.is_empty() && unit_names.is_empty())
    {
        return Ok(Json(schema::UnitStatePage {
            states: Vec::new(),
            next_page_token: String::new(),
        }));
    }
    let page = api
        .registry
        .unit_states_page(after.as_ref(), limit as usize, &machine_ids, &unit_names)
        .await?;
    Ok(Json(schema::UnitStatePage {
        states: page.items.into_iter().map(state_view).collect(),
        next_page_token: next_page_token(limit, page.next.map(|(m, n)| format!("{m}/{n}"))),
    }))
}

/// The most (machine, unit) pairs `GET /state` reads when given both filters.
const MAX_STATE_PAIRS: usize = 10_000;

fn state_view(s: fleet_registry::UnitState) -> schema::UnitState {
    schema::UnitState {
        name: s.name.to_string(),
        hash: s.hash.to_string(),
        machine_id: s.machine_id.to_string(),
        systemd_load_state: s.systemd_load_state,
        systemd_active_state: s.systemd_active_state,
        systemd_sub_state: s.systemd_sub_state,
    }
}

/// The state of one unit, as the registry has it (`Registry::unit_state`): what the machine
/// it is placed on reports, or for a global unit the first machine's that reports it.
async fn get_state(
    State(api): State<Api>,
    NameParam(name): NameParam,
) -> Result<Json<schema::UnitState>, ApiError> {
    let name = parse_name(&name)?;
    match api.registry.unit_state(&name).await? {
        Some(s) => Ok(Json(state_view(s))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unit state does not exist",
        )),
    }
}

async fn discovery() -> Json<serde_json::Value> {
    Json(crate::discovery::document())
}

/// One operation of `PATCH /machines`: `{"op":"add"|"replace"|"remove",
/// "path":"/<machine id>/metadata/<key>", "value":"..."}`.
#[derive(Debug, Deserialize)]
struct MachineOp {
    op: String,
    path: String,
    #[serde(default)]
    value: Option<String>,
}

/// The operations of a `PATCH /machines` body, per machine, all validated: a refused body
/// changes nothing. Keys are fleet's (letters, digits, `_`, `.`, `-`); values must be
/// matchable by a `MachineMetadata=` item ([`fleet_units::check_metadata`]).
fn machine_ops(
    body: &[u8],
) -> Result<BTreeMap<MachineId, fleet_registry::MetadataOverrides>, ApiError> {
    let ops: Vec<MachineOp> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("unable to decode body: {e}")))?;
    if ops.is_empty() {
        return Err(ApiError::bad_request("no operation given"));
    }
    let mut changes: BTreeMap<MachineId, fleet_registry::MetadataOverrides> = BTreeMap::new();
    for op in ops {
        let parts: Vec<&str> = op.path.split('/').collect();
        let (machine, key) = match parts.as_slice() {
            ["", id, "metadata", key] if !key.is_empty() => (
                MachineId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))?,
                key.to_string(),
            ),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid path {:?}: expected /<machine id>/metadata/<key>",
                    op.path
                )))
            }
        };
        // fleet's rule for keys; it leaves out every key no MachineMetadata item can match
        // (`=`, quotes, specifiers, control characters).
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(ApiError::bad_request(format!(
                "invalid metadata key {key:?}: expected letters, digits, '_', '.' and '-'"
            )));
        }
        let value = match (op.op.as_str(), op.value) {
            ("add" | "replace", Some(v)) if !v.is_empty() => {
                fleet_units::check_metadata(&key, &v).map_err(|e| {
                    ApiError::bad_request(format!("invalid value for metadata {key:?}: {e}"))
                })?;
                Some(v)
            }
            ("add" | "replace", _) => {
                return Err(ApiError::bad_request(format!(
                    "operation {:?} on {:?} needs a non-empty value",
                    op.op, op.path
                )))
            }
            ("remove", _) => None,
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "invalid op {other:?}: expected add, replace or remove"
                )))
            }
        };
        changes.entry(machine).or_default().insert(key, value);
    }
    Ok(changes)
}

async fn patch_machines(
    State(api): State<Api>,
    request: Request<Body>,
) -> Result<StatusCode, ApiError> {
    let body = read_body(request).await?;
    let changes = machine_ops(&body)?;
    let live: Vec<MachineId> = api
        .registry
        .machines()
        .await?
        .into_iter()
        .map(|m| m.id)
        .collect();
    if let Some(missing) = changes.keys().find(|m| !live.contains(m)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("machine {missing} does not exist"),
        ));
    }
    for (machine, overrides) in &changes {
        if !api
            .registry
            .patch_machine_metadata(machine, overrides)
            .await?
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("machine {machine} does not exist"),
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn list_machines(
    State(api): State<Api>,
    RawQuery(query): RawQuery,
) -> Result<Json<schema::MachinePage>, ApiError> {
    let params = query_params(query);
    let (limit, after) = page_start(api.page_size, &params, |p| MachineId::parse(p).ok())?;
    let page = api
        .registry
        .machines_page(after.as_ref(), limit as usize)
        .await?;
    let machines = page
        .items
        .into_iter()
        .map(|m| schema::Machine {
            id: m.id.to_string(),
            primary_ip: m.public_ip,
            metadata: m.metadata,
        })
        .collect();
    Ok(Json(schema::MachinePage {
        machines,
        next_page_token: next_page_token(limit, page.next.map(|m| m.to_string())),
    }))
}

// ---- metrics ----------------------------------------------------------------------------------

/// `/metrics`, in Prometheus' text format: gauges read from the registry when scraped, then
/// this process's counters. While etcd does not answer, the registry's gauges are left out,
/// `fleet_etcd_up` is 0, and the counters are still served (never a 5xx).
///
/// Units and states are counted by what their values hold (desired state, active state), so
/// counting them reads them whole: only the fleetd leading the engine serves those counts.
/// Every fleetd serving them made each scrape of a whole cluster read every unit and state
/// once per machine (at 10,000 machines and 100,000 units, 10,000 reads of 200,000 keys per
/// scrape interval). Machines are only counted (a count-only read), by every fleetd.
async fn metrics(State(api): State<Api>) -> Response {
    let mut out = fleet_telemetry::Exposition::new();
    let leading = fleet_telemetry::ENGINE_LEADER.get() == 1;
    let read = async {
        if leading {
            let (units, states, machines) = tokio::try_join!(
                api.registry.units(),
                api.registry.unit_states(),
                api.registry.machine_count()
            )?;
            Ok::<_, fleet_registry::Error>((Some((units, states)), machines))
        } else {
            Ok((None, api.registry.machine_count().await?))
        }
    }
    .await;
    let up = if read.is_ok() { 1.0 } else { 0.0 };
    out.gauge(
        "fleet_etcd_up",
        "Whether etcd answered this scrape's reads (1) or not (0).",
        &[(&[], up)],
    );
    match read {
        Ok((counted, machines)) => {
            if let Some((units, states)) = counted {
                unit_metrics(&mut out, &units, &states);
            }
            out.gauge(
                "fleet_machines",
                "Live machines in the cluster.",
                &[(&[], machines as f64)],
            );
        }
        Err(e) => tracing::debug!(error = %e, "metrics without the registry's gauges"),
    }
    fleet_telemetry::render(&mut out);
    (
        [(header::CONTENT_TYPE, fleet_telemetry::CONTENT_TYPE)],
        out.finish(),
    )
        .into_response()
}

/// The gauges of the units, on the engine's leader: units by desired state (every state,
/// zeros included), published unit states by systemd active state.
fn unit_metrics(
    out: &mut fleet_telemetry::Exposition,
    units: &[fleet_registry::Unit],
    states: &[fleet_registry::UnitState],
) {
    out.gauge_family(
        "fleet_units",
        "Units in the cluster, by desired state (served by the fleetd leading the engine).",
    );
    for state in [JobState::Inactive, JobState::Loaded, JobState::Launched] {
        let n = units.iter().filter(|u| u.desired_state == state).count();
        let label = state.to_string();
        out.gauge_sample("fleet_units", &[("desired_state", &label)], n as f64);
    }

    let mut active: BTreeMap<&str, usize> = BTreeMap::new();
    for s in states {
        *active.entry(s.systemd_active_state.as_str()).or_default() += 1;
    }
    out.gauge_family(
        "fleet_unit_states",
        "Unit states published by all machines, by systemd active state (served by the fleetd \
         leading the engine).",
    );
    for (state, n) in active {
        out.gauge_sample("fleet_unit_states", &[("active_state", state)], n as f64);
    }
}

// ---- journal and status -----------------------------------------------------------------------

/// The machines to read a unit from (`targets`: its machine, or for a global unit every
/// machine that published a state for it), narrowed to `wanted` (a machine id or a prefix of
/// one).
fn select_targets(
    name: &UnitName,
    targets: Vec<Machine>,
    wanted: Option<&str>,
) -> Result<Vec<Machine>, ApiError> {
    if targets.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unit {name} does not run on any machine"),
        ));
    }
    let Some(wanted) = wanted else {
        return Ok(targets);
    };
    if wanted.is_empty() || wanted.len() > 32 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "invalid machineID {wanted:?}: expected a machine id or a prefix of one"
        )));
    }
    let wanted_lower = wanted.to_ascii_lowercase();
    let chosen: Vec<Machine> = targets
        .into_iter()
        .filter(|r| r.id.as_str().starts_with(&wanted_lower))
        .collect();
    match chosen.len() {
        0 => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unit {name} does not run on machine {wanted}"),
        )),
        1 => Ok(chosen),
        _ => Err(ApiError::bad_request(format!(
            "machineID {wanted} matches several machines running {name}"
        ))),
    }
}

/// The machines a journal or status request reads from (`Registry::unit_machines`: the
/// unit's keys and its machines' only), and whether each gets a header (a global unit, no
/// machine chosen).
async fn resolve(
    api: &Api,
    name: &UnitName,
    params: &BTreeMap<String, Vec<String>>,
) -> Result<(Vec<Machine>, bool), ApiError> {
    let Some(unit) = api.registry.unit_machines(name).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unit does not exist"));
    };
    let wanted = single_param(params, "machineID").map_err(ApiError::bad_request)?;
    let targets = select_targets(name, unit.machines, wanted)?;
    Ok((targets, unit.global && wanted.is_none()))
}

fn inspector(api: &Api) -> Result<Inspect, ApiError> {
    api.inspect.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this fleetd does not serve journals and statuses",
        )
    })
}

fn no_peer(target: &Machine) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "machine {} serves no peer endpoint (peer_listen off, or an older fleetd)",
            target.id
        ),
    )
}

fn header_of(target: &Machine) -> String {
    section_header(target.id.as_str(), &target.public_ip)
}

async fn open_journal(
    inspect: &Inspect,
    target: &Machine,
    name: &UnitName,
    query: JournalQuery,
) -> Result<ByteStream, ApiError> {
    if target.id == inspect.machine {
        return inspect::local_journal(name, query).map_err(inspect::not_run("journalctl"));
    }
    match &target.peer_address {
        Some(address) => inspect.peers.journal(address, name, query).await,
        None => Err(no_peer(target)),
    }
}

async fn read_status(
    inspect: &Inspect,
    target: &Machine,
    name: &UnitName,
) -> Result<(i32, Vec<u8>), ApiError> {
    if target.id == inspect.machine {
        return inspect::local_status(name)
            .await
            .map_err(inspect::not_run("systemctl status"));
    }
    match &target.peer_address {
        Some(address) => inspect.peers.status(address, name).await,
        None => Err(no_peer(target)),
    }
}

async fn unit_journal(
    State(api): State<Api>,
    client: Client,
    NameParam(name): NameParam,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let inspect = inspector(&api)?;
    let name = parse_name(&name)?;
    let params = query_params(query);
    let query = JournalQuery::from_params(&params).map_err(ApiError::bad_request)?;
    let (targets, sections) = resolve(&api, &name, &params).await?;
    if query.follow && targets.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "unit {name} runs on {} machines: pick one with machineID (fleetctl journal --machine) to follow its journal",
            targets.len()
        )));
    }
    if let [target] = targets.as_slice() {
        // Counted for as long as the body is streamed.
        let permit = query
            .follow
            .then(|| api.follows.admit(client))
            .transpose()?;
        // Errors before the first byte get a proper status code.
        let body = open_journal(&inspect, target, &name, query).await?;
        let body = if sections {
            let header = axum::body::Bytes::from(header_of(target));
            stream::once(async move { Ok(header) }).chain(body).boxed()
        } else {
            body
        };
        return Ok(text_response(follows::held(body, permit)));
    }
    let body = stream::iter(targets)
        .then(move |target| {
            let inspect = inspect.clone();
            let name = name.clone();
            async move {
                let header = axum::body::Bytes::from(header_of(&target));
                match open_journal(&inspect, &target, &name, query).await {
                    Ok(body) => stream::once(async move { Ok(header) }).chain(body).boxed(),
                    Err(e) => stream::iter([
                        Ok(header),
                        Ok(axum::body::Bytes::from(format!("error: {}\n", e.message))),
                    ])
                    .boxed(),
                }
            }
        })
        .flatten()
        .boxed();
    Ok(text_response(body))
}

async fn unit_status(
    State(api): State<Api>,
    NameParam(name): NameParam,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let inspect = inspector(&api)?;
    let name = parse_name(&name)?;
    let params = query_params(query);
    let (targets, sections) = resolve(&api, &name, &params).await?;
    if let ([target], false) = (targets.as_slice(), sections) {
        let (code, text) = read_status(&inspect, target, &name).await?;
        return Ok(status_response(code, text));
    }
    let results = futures_util::future::join_all(
        targets
            .iter()
            .map(|target| read_status(&inspect, target, &name)),
    )
    .await;
    let mut text = Vec::new();
    let mut exit = 0;
    for (i, (target, result)) in targets.iter().zip(results).enumerate() {
        if i > 0 {
            text.push(b'\n');
        }
        text.extend_from_slice(header_of(target).as_bytes());
        match result {
            Ok((code, out)) => {
                text.extend_from_slice(&out);
                if exit == 0 {
                    exit = code;
                }
            }
            Err(e) => {
                text.extend_from_slice(format!("error: {}\n", e.message).as_bytes());
                if exit == 0 {
                    exit = 1;
                }
            }
        }
    }
    Ok(status_response(exit, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8, peer: bool) -> Machine {
        Machine {
            id: MachineId::parse(&format!("f1ee70{n:02}{}", "0".repeat(24))).unwrap(),
            public_ip: format!("10.233.0.{}", 10 + n),
            metadata: Default::default(),
            version: String::new(),
            peer_address: peer.then(|| format!("10.233.0.{}:49154", 10 + n)),
        }
    }

    #[test]
    fn journal_targets() {
        let name = UnitName::parse("web.service").unwrap();
        let records = vec![record(1, true), record(2, true), record(3, false)];
        let ids = |rs: &[Machine]| -> Vec<String> { rs.iter().map(|r| r.id.to_string()).collect() };
        let m2 = records[1].id.clone();

        // Its machine, or its machines (a global unit's: which ones is the registry's
        // `unit_machines`, tested against etcd).
        let t = select_targets(&name, vec![records[1].clone()], None).unwrap();
        assert_eq!(ids(&t), [m2.to_string()]);
        let t = select_targets(&name, records[..2].to_vec(), None).unwrap();
        assert_eq!(t.len(), 2);
        // None: not placed, placed on a machine that is gone, global and reported nowhere.
        let e = select_targets(&name, Vec::new(), None).unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert!(
            e.message().contains("does not run on any machine"),
            "{}",
            e.message()
        );
        let e = select_targets(&name, Vec::new(), Some("f1ee7002")).unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        // Narrowed by machineID: an id or a prefix, in any case.
        let t = select_targets(&name, records.clone(), Some("F1EE7002")).unwrap();
        assert_eq!(ids(&t), [m2.to_string()]);
        let e = select_targets(&name, records[..2].to_vec(), Some("f1ee7003")).unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = select_targets(&name, records.clone(), Some("f1ee70")).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        for bad in ["", "xyz", "../etc", &"f".repeat(33)] {
            let e = select_targets(&name, records.clone(), Some(bad)).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn errors_axum_answers_by_itself_become_the_envelope() {
        async fn body(response: Response) -> serde_json::Value {
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            serde_json::from_slice(&bytes).unwrap_or_default()
        }
        let plain = (StatusCode::BAD_REQUEST, "Invalid URL: bad").into_response();
        let r = into_envelope(plain).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body(r).await,
            serde_json::json!({"error": {"code": 400, "message": "Invalid URL: bad"}})
        );

        let empty = (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")]).into_response();
        let r = into_envelope(empty).await;
        assert_eq!(r.headers().get(header::ALLOW).unwrap(), "GET");
        assert_eq!(
            body(r).await["error"]["message"],
            serde_json::json!("method not allowed")
        );

        // Successes and errors already in the envelope are left alone.
        let ok = (StatusCode::OK, "journal text").into_response();
        assert_eq!(into_envelope(ok).await.status(), StatusCode::OK);
        let own = ApiError::new(StatusCode::CONFLICT, "mine").into_response();
        assert_eq!(
            body(into_envelope(own).await).await["error"]["message"],
            "mine"
        );
    }

    mod fuzz {
        //! Arbitrary names, bodies, query strings and page tokens: the API's decoding answers
        //! every one without a panic, and what it accepts is what gets stored.

        use super::super::*;
        use proptest::prelude::*;

        /// Bodies shaped like `PUT /units` bodies, some fields of the wrong type.
        fn unit_body() -> impl Strategy<Value = Vec<u8>> {
            let text = || prop_oneof!["(?s).{0,24}", "[A-Za-z-]{1,10}"];
            let option = (
                prop_oneof![Just("X-Fleet".to_string()), Just("Service".to_string()), text()],
                prop_oneof![
                    Just("MachineID".to_string()),
                    Just("Global".to_string()),
                    Just("Conflicts".to_string()),
                    Just("MachineOf".to_string()),
                    text()
                ],
                text(),
            )
                .prop_map(|(section, name, value)| {
                    serde_json::json!({"section": section, "name": name, "value": value})
                });
            let options = prop_oneof![
                8 => proptest::collection::vec(option, 0..6).prop_map(serde_json::Value::from),
                1 => Just(serde_json::json!("not a list")),
                1 => Just(serde_json::json!([{"section": 1}])),
            ];
            let state = prop_oneof![
                Just("".to_string()),
                Just("inactive".to_string()),
                Just("loaded".to_string()),
                Just("launched".to_string()),
                text(),
            ];
            let name = prop_oneof![
                Just(None),
                text().prop_map(Some),
                Just(Some("web@1.service".to_string()))
            ];
            prop_oneof![
                8 => (name, state, options).prop_map(|(name, state, options)| {
                    let mut body = serde_json::json!({"desiredState": state, "options": options});
                    if let Some(name) = name {
                        body["name"] = name.into();
                    }
                    serde_json::to_vec(&body).unwrap_or_default()
                }),
                1 => proptest::collection::vec(any::<u8>(), 0..64),
                1 => Just(b"{\"options\": [".to_vec()),
            ]
        }

        fn unit_name() -> impl Strategy<Value = String> {
            prop_oneof![
                "(?s).{0,16}",
                "[a-z@.%/-]{0,8}\\.(service|socket|x)",
                Just("web@1.service".to_string()),
                Just("web@.service".to_string()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_unit_request_is_decoded_or_refused(name in unit_name(), body in unit_body()) {
                match unit_request(&name, &body) {
                    Ok(request) => {
                        prop_assert_eq!(request.name.as_str(), name.as_str());
                        if let Some(options) = request.options {
                            // What is stored re-reads as stored.
                            let file = UnitFile::from_options(options);
                            let again = file.normalized();
                            prop_assert_eq!(again.as_ref(), Ok(&file));
                            prop_assert!(Requirements::from_unit(&request.name, &file).is_ok());
                        }
                    }
                    Err(e) => {
                        prop_assert!(e.status().is_client_error());
                        prop_assert!(!e.message().is_empty());
                    }
                }
            }

            #[test]
            fn any_machine_patch_is_decoded_or_refused(
                ops in proptest::collection::vec(
                    (
                        prop_oneof![Just("add"), Just("replace"), Just("remove"), Just("move")],
                        prop_oneof![Just(format!("{:032x}", 7)), "(?s).{0,34}"],
                        "(?s).{0,10}",
                        proptest::option::of("(?s).{0,10}"),
                    ),
                    0..4,
                ),
                noise in proptest::collection::vec(any::<u8>(), 0..32),
            ) {
                let ops: Vec<serde_json::Value> = ops
                    .into_iter()
                    .map(|(op, machine, key, value)| {
                        serde_json::json!({"op": op, "path": format!("/{machine}/metadata/{key}"), "value": value})
                    })
                    .collect();
                let body = serde_json::to_vec(&ops).unwrap_or_default();
                match machine_ops(&body) {
                    Ok(changes) => {
                        for (key, value) in changes.values().flatten() {
                            let shown = value.as_deref().unwrap_or("x");
                            prop_assert!(fleet_units::check_metadata(key, shown).is_ok(), "{key:?}={value:?}");
                        }
                    }
                    Err(e) => prop_assert_eq!(e.status(), StatusCode::BAD_REQUEST),
                }
                let _ = machine_ops(&noise);
            }

            #[test]
            fn any_query_string_is_read(query in "(?s).{0,40}|([a-zA-Z]{0,6}=?(%[0-9A-Fa-f]{0,2}|[^&]){0,6}&?){0,4}") {
                let params = query_params(Some(query));
                if let Ok(journal) = inspect::JournalQuery::from_params(&params) {
                    prop_assert!((1..=inspect::MAX_LINES).contains(&journal.lines));
                }
                if let Ok(events) = crate::events::EventsQuery::from_params(&params, DEFAULT_PAGE_SIZE) {
                    prop_assert!((1..=MAX_PAGE_SIZE).contains(&events.limit));
                    prop_assert!(events.last.is_none() || events.after.is_none());
                }
                let _ = PageToken::decode(params.get("nextPageToken").and_then(|v| v.first()).map(String::as_str).unwrap_or(""));
            }

            #[test]
            fn any_page_token_is_decoded_or_refused(token in "(?s).{0,40}|[A-Za-z0-9_=-]{0,60}") {
                if let Ok(t) = PageToken::decode(&token) {
                    prop_assert!((1..=MAX_PAGE_SIZE).contains(&t.limit));
                    prop_assert!(!t.after.is_empty() && t.after.len() <= MAX_POSITION_BYTES);
                }
            }

            #[test]
            fn page_tokens_round_trip_and_positions_are_checked(
                limit in 1..=MAX_PAGE_SIZE,
                after in "(?s).{1,80}",
            ) {
                let token = PageToken { limit, after: after.clone() };
                prop_assert_eq!(PageToken::decode(&token.encode()).ok(), Some(token.clone()));
                let params = BTreeMap::from([("nextPageToken".to_string(), vec![token.encode()])]);
                match page_start(DEFAULT_PAGE_SIZE, &params, |p| UnitName::parse(p).ok()) {
                    Ok((l, Some(name))) => {
                        prop_assert_eq!(l, limit);
                        prop_assert_eq!(name.as_str(), after.as_str());
                    }
                    Ok((_, None)) => prop_assert!(false, "a token read as the first page"),
                    Err(e) => {
                        prop_assert_eq!(e.status(), StatusCode::BAD_REQUEST);
                        prop_assert!(UnitName::parse(&after).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let t = PageToken {
            limit: 5,
            after: "a.service".into(),
        };
        assert_eq!(PageToken::decode(&t.encode()).unwrap(), t);
        let b64 = |json: &str| base64::engine::general_purpose::URL_SAFE.encode(json);
        let garbage = [
            "".to_string(),
            "xyz".into(),
            "e30=".into(),
            "!!!".into(),
            // fleet's page numbers: refused, see `PageToken`.
            b64(r#"{"limit":5,"page":3}"#),
            b64(r#"{"limit":5,"after":""}"#),
            b64(r#"{"limit":0,"after":"a.service"}"#),
            b64(r#"{"limit":10001,"after":"a.service"}"#),
            b64(r#"{"limit":5,"after":"a.service","page":2}"#),
            b64(&format!(r#"{{"limit":5,"after":"{}"}}"#, "a".repeat(513))),
        ];
        for bad in &garbage {
            assert!(PageToken::decode(bad).is_err(), "{bad:?}");
        }
    }
}
