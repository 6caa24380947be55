//! A client of fleetd's API, over a unix socket, TCP, or TLS with a client certificate.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::schema;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "invalid endpoint {0:?}: expected unix:///path, /path, http://host:port or https://host:port"
    )]
    InvalidEndpoint(String),
    /// TLS settings for an endpoint that is not https.
    #[error("TLS settings apply to https:// endpoints only, and {0:?} is not one")]
    NotHttps(String),
    /// A CA, certificate or key file that cannot be used (the error names the file).
    #[error("{0}")]
    Tls(#[from] fleet_trust::TrustError),
    #[error("cannot reach fleetd at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("fleetd at {endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    /// fleetd answered with an error envelope.
    #[error("{message} (HTTP {code})")]
    Api { code: u16, message: String },
    #[error("unexpected answer from fleetd: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How to reach fleetd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(String),
    Http(String),
    /// TLS, checking fleetd's certificate and usually presenting a client certificate ([`Tls`]).
    Https(String),
}

/// The system's CA bundle, which a client over https trusts when given no CA file.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How a client over https checks fleetd's certificate and shows its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// The cluster's CA certificate, which signs fleetd's. `None`: the CAs of the system's
    /// bundle ([`SYSTEM_CA_BUNDLE`]).
    pub ca_file: Option<PathBuf>,
    /// This client's certificate and its private key, signed by the cluster's CA; its role
    /// says what the client may do. `None`: no client certificate (which fleetd refuses).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl Tls {
    /// The rustls configuration, its files read and checked now.
    fn config(&self) -> Result<fleet_trust::rustls::ClientConfig, ClientError> {
        let identity = self
            .identity
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        let config = match &self.ca_file {
            Some(ca) => fleet_trust::client_config(ca, identity)?,
            None => fleet_trust::client_config_with_bundle(SYSTEM_CA_BUNDLE.as_ref(), identity)?,
        };
        Ok(config)
    }

    /// `line`, an explanation of a failed handshake, with what a reader needs to know when
    /// this client trusts the system's bundle and fleetd's certificate is not signed by it.
    fn explained(&self, line: String) -> String {
        if self.ca_file.is_none() && line.starts_with("the server's certificate is not signed by") {
            format!("{line}; without a CA file, this client trusts the CAs of {SYSTEM_CA_BUNDLE}")
        } else {
            line
        }
    }
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, ClientError> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(Endpoint::Unix(path.to_string()));
            }
        } else if s.starts_with('/') {
            return Ok(Endpoint::Unix(s.to_string()));
        } else if let Some(rest) = s.strip_prefix("http://") {
            if !rest.is_empty() {
                return Ok(Endpoint::Http(s.trim_end_matches('/').to_string()));
            }
        } else if let Some(rest) = s.strip_prefix("https://") {
            if !rest.trim_end_matches('/').is_empty() {
                return Ok(Endpoint::Https(s.trim_end_matches('/').to_string()));
            }
        }
        Err(ClientError::InvalidEndpoint(s.to_string()))
    }
}

/// What a removal by hand takes fleetd beyond answering ([`Client::remove_machine`]): its
/// engine's wait before declaring a machine dead is about 2.4 s.
pub const REMOVAL_TIME: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Without an overall timeout, for answers that last (a followed journal).
    streaming: reqwest::Client,
    base: String,
    endpoint: String,
    timeout: Duration,
    /// Over https, how fleetd's certificate is checked (for explaining a failed handshake).
    tls: Option<Tls>,
    /// Print each request's URL and answer status to stderr (`fleetctl --debug`).
    debug: bool,
}

impl Client {
    /// A client of fleetd at `endpoint`, over https with the system's CA bundle and no client
    /// certificate.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Client, ClientError> {
        Client::with_tls(endpoint, timeout, Tls::default())
    }

    /// A client of fleetd at `endpoint`, over https with `tls` (whose files are read and
    /// checked now). `tls` must be empty for any other endpoint.
    pub fn with_tls(endpoint: &str, timeout: Duration, tls: Tls) -> Result<Client, ClientError> {
        let parsed = Endpoint::parse(endpoint)?;
        let tls = match &parsed {
            Endpoint::Https(_) => Some(tls),
            Endpoint::Unix(_) | Endpoint::Http(_) if tls == Tls::default() => None,
            Endpoint::Unix(_) | Endpoint::Http(_) => {
                return Err(ClientError::NotHttps(endpoint.to_string()))
            }
        };
        let config = tls.as_ref().map(Tls::config).transpose()?;
        let builder = || {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(timeout)
                .user_agent(concat!("fleetctl/", env!("CARGO_PKG_VERSION")));
            if let Endpoint::Unix(path) = &parsed {
                builder = builder.unix_socket(path.as_str());
            }
            if let Some(config) = &config {
                builder = builder.use_preconfigured_tls(config.clone());
            }
            builder
        };
        let base = match &parsed {
            Endpoint::Unix(_) => "http://fleetd".to_string(),
            Endpoint::Http(url) | Endpoint::Https(url) => url.clone(),
        };
        let build = |b: reqwest::ClientBuilder| {
            b.build()
                .map_err(|e| ClientError::InvalidEndpoint(format!("{endpoint}: {e}")))
        };
        let http = build(builder().timeout(timeout))?;
        let streaming = build(builder())?;
        Ok(Client {
            http,
            streaming,
            base: format!("{base}/fleet/v1"),
            endpoint: endpoint.to_string(),
            timeout,
            tls,
            debug: false,
        })
    }

    /// Prints each request and its answer's status to stderr.
    pub fn with_debug(mut self, debug: bool) -> Client {
        self.debug = debug;
        self
    }

    fn trace(&self, method: &Method, response: &reqwest::Response) {
        if self.debug {
            eprintln!(
                "DEBUG: {method} {} -> {}",
                response.url(),
                response.status()
            );
        }
    }

    /// A request that could not be sent: [`Client::transport_error`], and over https when that
    /// says nothing of TLS, fleetd asked for its verdict on this client's certificate
    /// ([`fleet_trust::probe`]). TLS 1.3 refuses a certificate after the handshake, and the
    /// refusal can reach a request as a mere closed connection ("connection was not ready").
    async fn send_error(&self, e: reqwest::Error) -> ClientError {
        let explained = fleet_trust::explain(&e).is_some();
        let error = self.transport_error(e);
        let (Some(tls), false, ClientError::Unreachable { .. }) = (&self.tls, explained, &error)
        else {
            return error;
        };
        let Ok(config) = tls.config() else {
            return error;
        };
        match fleet_trust::probe_url(
            &self.endpoint,
            std::sync::Arc::new(config),
            self.timeout,
            Duration::from_secs(1),
        )
        .await
        {
            fleet_trust::Probe::Refused(why) => ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: tls.explained(why),
            },
            _ => error,
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        if e.is_timeout() {
            return ClientError::Timeout {
                endpoint: self.endpoint.clone(),
                timeout: self.timeout,
            };
        }
        // A failed handshake in one line (the CA, the names, the client certificate), not
        // rustls' innermost error.
        let reason = match (fleet_trust::explain(&e), &self.tls) {
            (Some(line), Some(tls)) => tls.explained(line),
            (Some(line), None) => line,
            (None, _) => {
                let cause = fleet_errors::root_cause(&e);
                // hyper's reading of a TLS record (an alert) as an HTTP answer.
                let tls_answer = cause == "invalid HTTP version parsed"
                    && matches!(Endpoint::parse(&self.endpoint), Ok(Endpoint::Http(_)));
                if tls_answer {
                    "the server did not answer in plain HTTP (does it serve TLS? then use an \
                     https:// endpoint)"
                        .to_string()
                } else {
                    cause
                }
            }
        };
        ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&impl serde::Serialize>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        self.send_within(method, path, query, body, self.timeout)
            .await
    }

    /// [`Client::send`] with a timeout of its own, for a request fleetd takes longer over.
    async fn send_within(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&impl serde::Serialize>,
        timeout: Duration,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let within = |e: ClientError| match e {
            ClientError::Timeout { endpoint, .. } => ClientError::Timeout { endpoint, timeout },
            other => other,
        };
        let mut request = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path))
            .query(query)
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err(within(self.send_error(e).await)),
        };
        self.trace(&method, &response);
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| within(self.transport_error(e)))?
            .to_vec();
        if status.is_client_error() || status.is_server_error() {
            return Err(api_error(status, &bytes));
        }
        Ok((status, bytes))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let (_, bytes) = self.send(Method::GET, path, query, None::<&()>).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Every item of a paged list, following `nextPageToken`.
    async fn get_all<P: schema::Page>(
        &self,
        path: &str,
        filters: &[(&str, &str)],
    ) -> Result<Vec<P::Item>, ClientError> {
        Ok(self.get_pages::<P>(path, filters).await?.0)
    }

    /// Every item of a paged list, following `nextPageToken`, and how many pages (requests)
    /// that took.
    async fn get_pages<P: schema::Page>(
        &self,
        path: &str,
        filters: &[(&str, &str)],
    ) -> Result<(Vec<P::Item>, usize), ClientError> {
        let mut all = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let mut query = filters.to_vec();
            if !token.is_empty() {
                query.push(("nextPageToken", token.as_str()));
            }
            let page: P = self.get(path, &query).await?;
            pages += 1;
            let (items, next) = page.into_parts();
            all.extend(items);
            if next.is_empty() {
                return Ok((all, pages));
            }
            token = next;
        }
    }

    /// All units, following pages.
    pub async fn units(&self) -> Result<Vec<schema::Unit>, ClientError> {
        self.get_all::<schema::UnitPage>("/units", &[]).await
    }

    /// All units, following pages, and how many pages (requests) the listing took: what
    /// reading them again this way costs.
    pub async fn units_counting_pages(&self) -> Result<(Vec<schema::Unit>, usize), ClientError> {
        self.get_pages::<schema::UnitPage>("/units", &[]).await
    }

    /// One unit; `None` when it does not exist.
    pub async fn unit(&self, name: &str) -> Result<Option<schema::Unit>, ClientError> {
        match self.get(&format!("/units/{}", escape(name)), &[]).await {
            Ok(u) => Ok(Some(u)),
            Err(ClientError::Api { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates or replaces a unit.
    pub async fn create_unit(&self, unit: &schema::Unit) -> Result<(), ClientError> {
        self.send(
            Method::PUT,
            &format!("/units/{}", escape(&unit.name)),
            &[],
            Some(unit),
        )
        .await?;
        Ok(())
    }

    pub async fn set_desired_state(&self, name: &str, state: &str) -> Result<(), ClientError> {
        let body = schema::Unit {
            name: name.to_string(),
            desired_state: state.to_string(),
            ..Default::default()
        };
        self.send(
            Method::PUT,
            &format!("/units/{}", escape(name)),
            &[],
            Some(&body),
        )
        .await?;
        Ok(())
    }

    pub async fn destroy_unit(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &format!("/units/{}", escape(name)),
            &[],
            None::<&()>,
        )
        .await?;
        Ok(())
    }

    /// A unit's versions, the current one first (`GET /units/{name}/history`).
    pub async fn unit_history(&self, name: &str) -> Result<schema::UnitHistory, ClientError> {
        self.get(&format!("/units/{}/history", escape(name)), &[])
            .await
    }

    /// Rolls a unit back to the version whose hash starts with `hash`, or without one to the
    /// version before the current one (`POST /units/{name}/rollback`).
    pub async fn rollback_unit(
        &self,
        name: &str,
        hash: Option<&str>,
    ) -> Result<schema::Rollback, ClientError> {
        let body = schema::RollbackRequest {
            hash: hash.unwrap_or_default().to_string(),
        };
        let (_, bytes) = self
            .send(
                Method::POST,
                &format!("/units/{}/rollback", escape(name)),
                &[],
                Some(&body),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Unit states, optionally only of some units and machines, following pages.
    pub async fn unit_states(
        &self,
        units: &[&str],
        machines: &[&str],
    ) -> Result<Vec<schema::UnitState>, ClientError> {
        let mut filters: Vec<(&str, &str)> = units.iter().map(|u| ("unitName", *u)).collect();
        filters.extend(machines.iter().map(|m| ("machineID", *m)));
        self.get_all::<schema::UnitStatePage>("/state", &filters)
            .await
    }

    /// Opens a unit's journal (`lines` last lines, then new ones if `follow`), on the machine
    /// `machine` (id or prefix) for a unit that runs on several. Read it with
    /// [`Journal::next_chunk`].
    pub async fn journal(
        &self,
        name: &str,
        lines: u32,
        follow: bool,
        machine: Option<&str>,
    ) -> Result<Journal, ClientError> {
        let lines = lines.to_string();
        let mut query = vec![("lines", lines.as_str()), ("follow", bool_str(follow))];
        if let Some(m) = machine {
            query.push(("machineID", m));
        }
        let request = self
            .streaming
            .get(format!("{}/units/{}/journal", self.base, escape(name)))
            .query(&query);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.send_error(e).await),
        };
        self.trace(&Method::GET, &response);
        let response = self.check(response).await?;
        Ok(Journal {
            response,
            client: self.clone(),
        })
    }

    /// `systemctl status` of a unit on the machine(s) running it: the exit code of
    /// systemctl and its output.
    pub async fn status(
        &self,
        name: &str,
        machine: Option<&str>,
    ) -> Result<(i32, Vec<u8>), ClientError> {
        let mut query = Vec::new();
        if let Some(m) = machine {
            query.push(("machineID", m));
        }
        let response = self
            .http
            .get(format!("{}/units/{}/status", self.base, escape(name)))
            .query(&query)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        self.trace(&Method::GET, &response);
        let response = self.check(response).await?;
        let code = response
            .headers()
            .get(schema::EXIT_STATUS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Decode("no exit status in the answer".into()))?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        Ok((code, bytes.to_vec()))
    }

    /// Turns an error status into the error envelope's [`ClientError::Api`].
    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = response.status();
        if !(status.is_client_error() || status.is_server_error()) {
            return Ok(response);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        Err(api_error(status, &bytes))
    }

    /// Sets (`Some`) or removes (`None`) one metadata key of a live machine.
    pub async fn set_machine_metadata(
        &self,
        machine: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), ClientError> {
        let path = format!("/{machine}/metadata/{key}");
        let op = match value {
            Some(v) => serde_json::json!([{"op": "add", "path": path, "value": v}]),
            None => serde_json::json!([{"op": "remove", "path": path}]),
        };
        self.send(Method::PATCH, "/machines", &[], Some(&op))
            .await?;
        Ok(())
    }

    pub async fn machines(&self) -> Result<Vec<schema::Machine>, ClientError> {
        self.get_all::<schema::MachinePage>("/machines", &[]).await
    }

    /// Asks for a rolling update (`POST /updates`).
    pub async fn create_update(
        &self,
        request: &schema::UpdateRequest,
    ) -> Result<schema::Update, ClientError> {
        let (_, bytes) = self
            .send(Method::POST, "/updates", &[], Some(request))
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Every rolling update kept, oldest first (`GET /updates`).
    pub async fn updates(&self) -> Result<Vec<schema::Update>, ClientError> {
        Ok(self
            .get::<schema::UpdateList>("/updates", &[])
            .await?
            .updates)
    }

    /// One rolling update (`GET /updates/{id}`).
    pub async fn update(&self, id: &str) -> Result<schema::Update, ClientError> {
        self.get(&format!("/updates/{}", escape(id)), &[]).await
    }

    /// Pauses, resumes or aborts an update (`POST /updates/{id}/{action}`).
    pub async fn steer_update(
        &self,
        id: &str,
        action: &str,
    ) -> Result<schema::Update, ClientError> {
        let (_, bytes) = self
            .send(
                Method::POST,
                &format!("/updates/{}/{action}", escape(id)),
                &[],
                None::<&()>,
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Every drain, by machine id (`GET /drains`).
    pub async fn drains(&self) -> Result<Vec<schema::Drain>, ClientError> {
        Ok(self.get::<schema::DrainList>("/drains", &[]).await?.drains)
    }

    /// One machine's drain (`GET /drains/{machine}`); `None` when it is not drained.
    pub async fn drain_status(&self, machine: &str) -> Result<Option<schema::Drain>, ClientError> {
        match self.get(&format!("/drains/{}", escape(machine)), &[]).await {
            Ok(drain) => Ok(Some(drain)),
            Err(ClientError::Api { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts draining a machine (`PUT /drains/{machine}`); draining one already drained is
    /// not an error. Its drain as it stands.
    pub async fn drain(&self, machine: &str) -> Result<schema::Drain, ClientError> {
        let (_, bytes) = self
            .send(
                Method::PUT,
                &format!("/drains/{}", escape(machine)),
                &[],
                None::<&()>,
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Ends a machine's drain (`DELETE /drains/{machine}`).
    pub async fn undrain(&self, machine: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &format!("/drains/{}", escape(machine)),
            &[],
            None::<&()>,
        )
        .await
        .map(drop)
    }

    /// Removes a member whose lease is gone from the cluster, on the operator's word that it
    /// is powered off for good (`DELETE /machines/{machine}`). fleetd asks the machine and
    /// waits as long as its engine would before it declares a machine dead (a few seconds):
    /// this request has [`REMOVAL_TIME`] more than the client's timeout.
    pub async fn remove_machine(
        &self,
        machine: &str,
    ) -> Result<schema::MachineRemoval, ClientError> {
        let (_, bytes) = self
            .send_within(
                Method::DELETE,
                &format!("/machines/{}", escape(machine)),
                &[],
                None::<&()>,
                self.timeout + REMOVAL_TIME,
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// The events `query` asks for, oldest first (`GET /events`): the newest `last`, or every
    /// event kept, following pages.
    pub async fn events(&self, query: &EventQuery<'_>) -> Result<Vec<schema::Event>, ClientError> {
        let params = query.params();
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.get_all::<schema::EventPage>("/events", &params).await
    }

    /// Follows the events `query` asks for (`GET /events?follow=true`): the newest `last`
    /// first, if asked, then each one as it is recorded. Read them with [`EventStream::next`].
    pub async fn follow_events(&self, query: &EventQuery<'_>) -> Result<EventStream, ClientError> {
        let mut params = query.params();
        params.push(("follow", "true".to_string()));
        let request = self
            .streaming
            .get(format!("{}/events", self.base))
            .query(&params);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.send_error(e).await),
        };
        self.trace(&Method::GET, &response);
        let response = self.check(response).await?;
        Ok(EventStream {
            response,
            client: self.clone(),
            buffer: Vec::new(),
        })
    }
}

/// Which events to read (`GET /events`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventQuery<'a> {
    /// Only this unit's.
    pub unit: Option<&'a str>,
    /// Only those about this machine (its full id).
    pub machine: Option<&'a str>,
    /// Only the newest so many (else every event kept).
    pub last: Option<u32>,
}

impl EventQuery<'_> {
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(unit) = self.unit {
            params.push(("unit", unit.to_string()));
        }
        if let Some(machine) = self.machine {
            params.push(("machine", machine.to_string()));
        }
        if let Some(last) = self.last {
            params.push(("last", last.to_string()));
        }
        params
    }
}

/// The longest line of a followed event stream taken: an event is a few hundred bytes.
const MAX_EVENT_LINE: usize = 1024 * 1024;

/// Events being followed: one JSON object per line.
pub struct EventStream {
    response: reqwest::Response,
    client: Client,
    /// What arrived of the next lines.
    buffer: Vec<u8>,
}

impl EventStream {
    /// The next event as it is recorded; `None` when fleetd ended the stream.
    pub async fn next(&mut self) -> Result<Option<schema::Event>, ClientError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| ClientError::Decode(format!("an event: {e}")));
            }
            if self.buffer.len() > MAX_EVENT_LINE {
                return Err(ClientError::Decode(format!(
                    "an event line longer than {MAX_EVENT_LINE} bytes"
                )));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.client.transport_error(e)),
            }
        }
    }
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<schema::ErrorEnvelope>(bytes) {
        Ok(envelope) => ClientError::Api {
            code: envelope.error.code,
            message: envelope.error.message,
        },
        Err(_) => ClientError::Api {
            code: status.as_u16(),
            message: String::from_utf8_lossy(bytes).trim().to_string(),
        },
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// A journal being read.
pub struct Journal {
    response: reqwest::Response,
    client: Client,
}

impl Journal {
    /// The next piece of the journal as it arrives; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.response.chunk().await {
            Ok(chunk) => Ok(chunk.map(|c| c.to_vec())),
            Err(e) => Err(self.client.transport_error(e)),
        }
    }
}

/// Percent-encodes a unit name for a URL path segment (`@`, `\` and `:` may appear in names).
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let cases = [
            (
                "unix:///var/run/fleet.sock",
                Some(Endpoint::Unix("/var/run/fleet.sock".into())),
            ),
            (
                "/run/fleet.sock",
                Some(Endpoint::Unix("/run/fleet.sock".into())),
            ),
            (
                "http://10.0.0.1:49153",
                Some(Endpoint::Http("http://10.0.0.1:49153".into())),
            ),
            (
                "http://10.0.0.1:49153/",
                Some(Endpoint::Http("http://10.0.0.1:49153".into())),
            ),
            (
                "https://10.0.0.1:49153/",
                Some(Endpoint::Https("https://10.0.0.1:49153".into())),
            ),
            (
                " https://node1.example:443 ",
                Some(Endpoint::Https("https://node1.example:443".into())),
            ),
            ("unix://relative", None),
            ("", None),
            ("http://", None),
            ("https://", None),
            ("https:///", None),
            ("HTTPS://x", None),
            ("ftp://x", None),
        ];
        for (input, want) in cases {
            assert_eq!(Endpoint::parse(input).ok(), want, "{input:?}");
        }
    }

    #[test]
    fn tls_settings_need_an_https_endpoint() {
        let tls = Tls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            identity: None,
        };
        let second = Duration::from_secs(1);
        for endpoint in [
            "unix:///run/fleet.sock",
            "/run/fleet.sock",
            "http://10.0.0.1:1",
        ] {
            let e = Client::with_tls(endpoint, second, tls.clone()).err();
            assert_eq!(
                e.map(|e| e.to_string()),
                Some(format!(
                    "TLS settings apply to https:// endpoints only, and {endpoint:?} is not one"
                ))
            );
            assert!(Client::with_tls(endpoint, second, Tls::default()).is_ok());
        }
        // Over https, the files are read at once, and the error names the one missing.
        let e = Client::with_tls("https://10.0.0.1:1", second, tls).err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("cannot read /nonexistent/ca.pem: No such file or directory (os error 2)".into())
        );
    }

    #[test]
    fn without_a_ca_file_an_unknown_ca_says_which_cas_are_trusted() {
        use fleet_trust::rustls;
        let unknown = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let line = fleet_trust::explain(&unknown).expect("explained");
        let system = Tls::default();
        assert_eq!(
            system.explained(line.clone()),
            format!("{line}; without a CA file, this client trusts the CAs of {SYSTEM_CA_BUNDLE}")
        );
        let own = Tls {
            ca_file: Some("ca.pem".into()),
            identity: None,
        };
        assert_eq!(own.explained(line.clone()), line);
        let other = "the server requires a client certificate".to_string();
        assert_eq!(system.explained(other.clone()), other);
    }

    #[test]
    fn names_are_escaped_for_paths() {
        assert_eq!(escape("foo@1.service"), "foo%401.service");
        assert_eq!(escape("a\\x2d:b.service"), "a%5Cx2d%3Ab.service");
    }
}
