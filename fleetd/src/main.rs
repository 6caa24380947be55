//! fleetd: the agent, an engine candidate and the API, in one daemon per machine.

mod config;
mod journal;
mod system;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use fleet_registry::{EtcdConfig, Machine, Presence, Registry};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use config::{Config, PeerListen};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const DEFAULT_SOCKET: &str = "/var/run/fleet.sock";

#[derive(Parser, Debug)]
#[command(
    name = "fleetd",
    version,
    about = "fleet daemon: agent, engine and API of one machine"
)]
struct Args {
    /// Configuration file (default /etc/fleet/fleet.conf, if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to read the machine id from.
    #[arg(long, default_value = "/etc/machine-id", hide = true)]
    machine_id_file: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match Config::load(args.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleetd: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let log_filter = init_logging(config.verbosity);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleetd: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let reloader = Reloader {
        path: args.config.clone(),
        env,
        running: config.clone(),
        log_filter,
        tls: None,
        etcd_keys: Default::default(),
    };
    match runtime.block_on(run(args, config, reloader)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fleetd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The log filter, changed in place when a reload changes `verbosity`; `None` when
/// `FLEETD_LOG` sets the filter (it then wins over `verbosity`, at start-up and on reload).
type LogFilter =
    Option<tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>>;

/// The filter `verbosity` stands for.
fn verbosity_filter(verbosity: u32) -> EnvFilter {
    let default = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    EnvFilter::new(format!("{default},h2=warn,tower=warn,hyper=warn,zbus=warn"))
}

/// Logs to the journal when stderr is connected to it (fleetd runs under systemd), with the
/// events' fields as journal fields (see `journal`); otherwise, or if journald cannot be
/// reached, to stderr as text.
fn init_logging(verbosity: u32) -> LogFilter {
    let (filter, handle) = match EnvFilter::try_from_env("FLEETD_LOG") {
        Ok(filter) => (filter, false),
        Err(_) => (verbosity_filter(verbosity), true),
    };
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    let handle = handle.then_some(reload);
    let registry = tracing_subscriber::registry().with(filter);
    let journal = if systemd_journal_logger::connected_to_journal() {
        match journal::JournalLayer::new() {
            Ok(layer) => Some(layer),
            Err(e) => {
                eprintln!("fleetd: cannot log to the journal ({e}); logging to stderr");
                None
            }
        }
    } else {
        None
    };
    match journal {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
    handle
}

/// Reloads the configuration on SIGHUP, as fleet did: reads it afresh (file and environment
/// as at start-up), applies what can change in place (the log verbosity) and warns about
/// the keys that need a restart. A configuration that does not load is logged and the one in
/// use kept. Units are never touched.
struct Reloader {
    path: Option<PathBuf>,
    env: BTreeMap<String, String>,
    running: Config,
    log_filter: LogFilter,
    /// The machine's certificate, read again on SIGHUP too.
    tls: Option<std::sync::Arc<fleet_trust::ServerTls>>,
    /// The etcd client's keys, read again on SIGHUP too, once the registry is made.
    etcd_keys: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<EtcdKeys>>>,
}

impl Reloader {
    /// Handles SIGHUP from now on (its default action would end fleetd), reloading on each.
    fn listen(self) {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                let mut reloader = self;
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        reloader.reload();
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP: the configuration cannot be reloaded")
            }
        }
    }

    fn reload(&mut self) {
        let path = self
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
        tracing::info!("Reloading configuration from {}", path.display());
        if let Some(keys) = self.etcd_keys.get() {
            let keys = keys.clone();
            tokio::spawn(async move {
                if !keys.reload().await {
                    *keys.seen.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
                }
            });
        }
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(identity) => {
                    tracing::info!(certificate = %identity, "reloaded TLS certificates")
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reload TLS certificates; keeping those in use")
                }
            }
        }
        let fresh = match Config::load(self.path.as_deref(), &self.env) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    error = %format!("{e:#}"),
                    "invalid configuration: keeping the one in use"
                );
                return;
            }
        };
        let reload = config::reload(&self.running, &fresh);
        if let Some(verbosity) = reload.verbosity {
            match &self.log_filter {
                Some(handle) => match handle.reload(verbosity_filter(verbosity)) {
                    Ok(()) => tracing::info!(verbosity, "log verbosity changed"),
                    Err(e) => tracing::warn!(error = %e, "cannot change the log verbosity"),
                },
                None => tracing::warn!("FLEETD_LOG sets the log filter: verbosity is not applied"),
            }
        }
        if !reload.need_restart.is_empty() {
            tracing::warn!(
                keys = %reload.need_restart.join(","),
                "configuration changed in keys that take effect only when fleetd restarts (metadata can also change live with PATCH /fleet/v1/machines): {}",
                reload.need_restart.join(", ")
            );
        }
        self.running = reload.config;
    }
}

async fn run(args: Args, config: Config, mut reloader: Reloader) -> Result<()> {
    // The machine's certificate: the API's and the peer endpoint's, and towards the peers.
    let tls = match api_tls(&config)? {
        Some(tls) => {
            let tls = std::sync::Arc::new(tls);
            tracing::info!(certificate = %tls.identity(), "serving HTTPS with client certificates");
            // Renewed files are picked up without a restart, and at once on SIGHUP.
            tokio::spawn(tls.clone().watch(CERTIFICATE_CHECK));
            Some(tls)
        }
        None => None,
    };
    reloader.tls = tls.clone();
    let etcd_keys = reloader.etcd_keys.clone();
    reloader.listen();
    let machine_id = system::machine_id(&args.machine_id_file)?;
    let public_ip = match &config.public_ip {
        Some(ip) => ip.clone(),
        None => system::default_route_address()
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
    };
    tracing::info!(machine = %machine_id, %public_ip, version = VERSION, "starting fleetd");

    let etcd = EtcdConfig {
        endpoints: config.etcd_servers.clone(),
        prefix: config.etcd_key_prefix.clone(),
        request_timeout: config.etcd_request_timeout,
        username: config.etcd_username.clone(),
        password: config.etcd_password.clone(),
        tls: etcd_tls(&config)?,
    };
    let registry = connect_etcd(&etcd).await?;
    // A wrong certificate, password or permission stops fleetd here, said plainly; an etcd
    // that is down is waited for like any outage.
    check_etcd_tls(&config).await?;
    if config.etcd_certfile.is_some() {
        let keys = std::sync::Arc::new(EtcdKeys::new(registry.clone(), config.clone()));
        tokio::spawn(keys.clone().watch());
        let _ = etcd_keys.set(keys);
    }
    match registry.check_access().await {
        Ok(()) => {}
        Err(e @ fleet_registry::Error::Refused { .. }) => {
            return Err(e).context("etcd refuses this fleetd; check etcd_cafile, etcd_certfile, etcd_keyfile, etcd_username and etcd_password");
        }
        Err(e) => tracing::warn!(error = %e, "etcd is not reachable yet; going on and retrying"),
    }

    if config.api_insecure_http {
        tracing::warn!(
            "api_insecure_http=true: the API's TCP listeners and the peer endpoint speak plain HTTP and admit anyone who reaches them, who can then run anything as root on every machine"
        );
    }
    let peers = fleet_api::peer::PeerClient::new(tls.clone());

    // The API first: it answers (503) even while etcd is unreachable (with etcd_username,
    // once etcd answered a first time: connecting waited for it).
    let inspect = fleet_api::server::Inspect {
        machine: machine_id.clone(),
        peers: peers.clone(),
        removal_wait: fleet_quorum::Timing::for_ttl(config.agent_ttl, config.etcd_request_timeout)
            .engine_wait(),
    };
    // Whether another live fleetd holds this machine id: the API answers 503 meanwhile.
    let registration = fleet_registry::Registration::new();
    let router = fleet_api::server::router_with(
        registry.clone(),
        VERSION,
        config.token_limit,
        Some(inspect),
        Some(registration.clone()),
    );
    serve_api(router, &config, tls.clone()).await?;
    // What this machine answers its peers about its lease, from now on.
    let liveness = fleet_registry::Liveness::new();
    let peer_address = serve_peers(
        &config,
        &public_ip,
        fleet_api::peer::router(
            registry.clone(),
            machine_id.clone(),
            liveness.clone(),
            VERSION,
        ),
        tls,
    )
    .await?;
    if peer_address.is_none() {
        tracing::warn!(
            "no peer endpoint: no other machine can ask this one whether it reaches etcd, so it counts for no majority (units of lost machines move only while a majority of the members answer), and it fences when its lease may expire even if etcd is down for everyone"
        );
    }
    let witness: std::sync::Arc<dyn fleet_registry::Witness> =
        std::sync::Arc::new(fleet_api::peer::PeerWitness::new(peers));
    system::notify_ready();

    let machine = Machine {
        id: machine_id.clone(),
        public_ip,
        metadata: config.metadata.clone(),
        version: VERSION.to_string(),
        peer_address,
    };
    let lease_file = config.units_directory.join("..").join("lease");
    let members = async {
        let presence = Presence::start_with(
            registry.clone(),
            machine,
            config.agent_ttl,
            fleet_registry::PresenceOptions {
                lease_file: Some(lease_file),
                liveness: Some(liveness),
                witness: Some(witness.clone()),
                registration: Some(registration),
            },
        )
        .await
        .context("cannot register this machine")?;
        let agent = fleet_agent::Agent::new(
            registry.clone(),
            machine_id.clone(),
            fleet_agent::AgentConfig {
                units_directory: config.units_directory.clone(),
                resync_interval: Duration::from_secs(60),
            },
        )
        .await
        .context("cannot start the agent")?;
        let agent_task = tokio::spawn(agent.run(presence.subscribe()));
        let engine_task = (!config.disable_engine).then(|| {
            tokio::spawn(fleet_engine::run(
                registry.clone(),
                machine_id.clone(),
                presence.subscribe(),
                fleet_engine::EngineConfig {
                    reconcile_interval: config.engine_reconcile_interval,
                    timing: fleet_quorum::Timing::for_ttl(
                        config.agent_ttl,
                        config.etcd_request_timeout,
                    ),
                    witness: Some(witness),
                },
            ))
        });
        // Both loops run until fleetd stops; keep the presence (the lease) alive meanwhile.
        let _ = agent_task.await;
        if let Some(t) = engine_task {
            t.abort();
        }
        drop(presence);
        anyhow::Ok(())
    };
    tokio::select! {
        result = members => result,
        _ = shutdown_signal() => {
            // The lease is not revoked: a fleetd restarted within agent_ttl takes it back and
            // no unit moves.
            tracing::info!("stopping fleetd; units keep running");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// How often the certificate files are checked for a renewal.
const CERTIFICATE_CHECK: Duration = Duration::from_secs(5);

/// The machine's certificate from `api_cafile`, `api_certfile` and `api_keyfile`, checked now
/// so that a mistake stops fleetd.
fn api_tls(config: &Config) -> Result<Option<fleet_trust::ServerTls>> {
    let (Some(ca), Some(cert), Some(key)) = (
        &config.api_cafile,
        &config.api_certfile,
        &config.api_keyfile,
    ) else {
        return Ok(None);
    };
    let files = fleet_trust::TlsFiles {
        ca: ca.clone(),
        cert: cert.clone(),
        key: key.clone(),
    };
    let tls = fleet_trust::ServerTls::load(files)
        .context("invalid api_cafile, api_certfile or api_keyfile")?;
    Ok(Some(tls))
}

/// Refuses a TCP listener that would be plain HTTP without the operator asking for it.
fn check_plain_tcp(
    config: &Config,
    tls: Option<&fleet_trust::ServerTls>,
    what: &str,
) -> Result<()> {
    if tls.is_none() && !config.api_insecure_http {
        anyhow::bail!(
            "{what} is TCP, which needs api_cafile, api_certfile and api_keyfile (HTTPS with client certificates), or api_insecure_http=true to serve plain HTTP to anyone who reaches it"
        );
    }
    Ok(())
}

/// Serves the API on the sockets systemd passed, else on the default unix socket, plus any
/// configured TCP addresses: HTTPS with client certificates with `tls`, plain HTTP only with
/// `api_insecure_http`.
async fn serve_api(
    router: axum::Router,
    config: &Config,
    tls: Option<std::sync::Arc<fleet_trust::ServerTls>>,
) -> Result<()> {
    let inherited = system::inherited_sockets()?;
    let mut unix = Vec::new();
    let mut tcp = Vec::new();
    if inherited.is_empty() {
        unix.push(bind_unix(DEFAULT_SOCKET)?);
        for addr in &config.api_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tcp.push(listener);
        }
    } else {
        for socket in inherited {
            match socket {
                system::Inherited::Unix(l) => unix.push(tokio::net::UnixListener::from_std(l)?),
                system::Inherited::Tcp(l) => tcp.push(tokio::net::TcpListener::from_std(l)?),
            }
        }
    }
    for listener in unix {
        let address = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "an unnamed unix socket".into());
        tracing::info!(%address, "serving the API");
        let router = router.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "API server stopped");
            }
        });
    }
    for listener in tcp {
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        check_plain_tcp(
            config,
            tls.as_deref(),
            &format!("the API listener {address}"),
        )?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%address, scheme, "serving the API");
        tokio::spawn(fleet_trust::serve(
            listener,
            tls.clone(),
            router.clone(),
            fleet_trust::Limits::default(),
        ));
    }
    Ok(())
}

/// Serves the peer endpoint (journals and statuses for other fleetds) as `peer_listen` says;
/// returns the address other fleetds reach it at, if any. A default listener that cannot bind
/// is a warning; an explicitly configured one is an error.
async fn serve_peers(
    config: &Config,
    public_ip: &str,
    router: axum::Router,
    tls: Option<std::sync::Arc<fleet_trust::ServerTls>>,
) -> Result<Option<String>> {
    use std::net::{IpAddr, SocketAddr};
    let public: Option<IpAddr> = public_ip.parse().ok();
    if config.peer_listen != PeerListen::Off && tls.is_none() && !config.api_insecure_http {
        // Machines prove who they are to each other with their certificates.
        if matches!(config.peer_listen, PeerListen::Address(_)) {
            check_plain_tcp(config, None, "peer_listen")?;
        }
        tracing::warn!(
            "no machine certificate (api_cafile, api_certfile, api_keyfile): no peer endpoint"
        );
        return Ok(None);
    }
    let (bind, explicit) = match &config.peer_listen {
        PeerListen::Off => return Ok(None),
        PeerListen::Address(a) => (*a, true),
        PeerListen::Default => match public {
            Some(ip) => (SocketAddr::new(ip, config::DEFAULT_PEER_PORT), false),
            None => {
                tracing::warn!(
                    "no public address: other machines cannot read journals and statuses here (set public_ip or peer_listen)"
                );
                return Ok(None);
            }
        },
    };
    let listener = match tokio::net::TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) if !explicit => {
            tracing::warn!(address = %bind, error = %e, "cannot serve the peer endpoint");
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {bind} (peer_listen)")),
    };
    let local = listener.local_addr()?;
    let advertised = if local.ip().is_unspecified() {
        public.map(|ip| SocketAddr::new(ip, local.port()))
    } else {
        Some(local)
    };
    tracing::info!(address = %local, ?advertised, "serving the peer endpoint");
    tokio::spawn(fleet_trust::serve(
        listener,
        tls,
        router,
        fleet_trust::Limits::default(),
    ));
    Ok(advertised.map(|a| a.to_string()))
}

/// Where the system keeps the certificate authorities it trusts (Debian's ca-certificates),
/// for `https://` etcd servers given without `etcd_cafile`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// With `https://` etcd servers: the files are checked (a certificate expired, not signed by
/// `etcd_cafile`, or not its key's stops fleetd), then every member that answers is asked
/// whether it accepts this fleetd's certificate ([`fleet_trust::probe`]); a refusal stops
/// fleetd with the reason, a member that is down is an outage.
async fn check_etcd_tls(config: &Config) -> Result<()> {
    if !config
        .etcd_servers
        .iter()
        .any(|s| s.starts_with("https://"))
    {
        return Ok(());
    }
    let identity = config
        .etcd_certfile
        .as_deref()
        .zip(config.etcd_keyfile.as_deref());
    let mut tls = fleet_trust::etcd_client_config(
        config.etcd_cafile.as_deref(),
        SYSTEM_CA_BUNDLE.as_ref(),
        identity,
    )
    .context("invalid etcd_cafile, etcd_certfile or etcd_keyfile")?;
    // etcd speaks gRPC: HTTP/2.
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = std::sync::Arc::new(tls);
    for server in &config.etcd_servers {
        // Asked twice before it counts: a member restarting can close a connection just
        // after its handshake, as a refusal does.
        let mut refused = None;
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match fleet_trust::probe_url(
                server,
                tls.clone(),
                config.etcd_request_timeout,
                Duration::from_secs(1),
            )
            .await
            {
                fleet_trust::Probe::Accepted => {
                    refused = None;
                    break;
                }
                fleet_trust::Probe::Unreachable(why) => {
                    tracing::warn!(server = %server, reason = %why, "etcd member not reachable yet");
                    refused = None;
                    break;
                }
                fleet_trust::Probe::Refused(why) => refused = Some(why),
            }
        }
        if let Some(why) = refused {
            anyhow::bail!(
                "etcd refuses this fleetd: {server}: {why} (check etcd_cafile, etcd_certfile and etcd_keyfile)"
            );
        }
    }
    Ok(())
}

/// fleetd's keys towards etcd, used again when renewed: when their files change (looked at
/// every [`CERTIFICATE_CHECK`]) and on SIGHUP. New requests use the renewed certificate; a
/// renewal that does not load keeps the keys in use.
struct EtcdKeys {
    registry: Registry,
    config: Config,
    seen: std::sync::Mutex<fleet_trust::FilesStamp>,
}

impl EtcdKeys {
    fn new(registry: Registry, config: Config) -> EtcdKeys {
        let keys = EtcdKeys {
            registry,
            config,
            seen: std::sync::Mutex::new(Default::default()),
        };
        *keys.seen.lock().unwrap_or_else(|e| e.into_inner()) = keys.stamp();
        keys
    }

    fn stamp(&self) -> fleet_trust::FilesStamp {
        let paths: Vec<&std::path::Path> = [
            &self.config.etcd_cafile,
            &self.config.etcd_certfile,
            &self.config.etcd_keyfile,
        ]
        .into_iter()
        .flatten()
        .map(|p| p.as_path())
        .collect();
        fleet_trust::FilesStamp::of(&paths)
    }

    async fn watch(self: std::sync::Arc<Self>) {
        loop {
            tokio::time::sleep(CERTIFICATE_CHECK).await;
            let stamp = self.stamp();
            let changed = {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                let changed = *seen != stamp;
                *seen = stamp;
                changed
            };
            // Tried again at the next look until every endpoint has the new keys.
            if changed && !self.reload().await {
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
            }
        }
    }

    /// Whether every endpoint now uses the files' keys.
    async fn reload(&self) -> bool {
        let identity = self
            .config
            .etcd_certfile
            .as_deref()
            .zip(self.config.etcd_keyfile.as_deref());
        let checked = fleet_trust::etcd_client_config(
            self.config.etcd_cafile.as_deref(),
            SYSTEM_CA_BUNDLE.as_ref(),
            identity,
        );
        let tls = match checked
            .map_err(anyhow::Error::from)
            .and_then(|_| etcd_tls(&self.config))
        {
            Ok(Some(tls)) => tls,
            Ok(None) => return true,
            Err(e) => {
                // Not tried again until the files change again: they are wrong as they stand.
                tracing::error!(error = %format!("{e:#}"), "cannot reload the etcd client's certificates; keeping those in use");
                return true;
            }
        };
        match self.registry.set_tls(tls).await {
            Ok(()) => {
                tracing::info!("reloaded the etcd client's certificates");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reloaded the etcd client's certificates, but not every etcd endpoint could be connected with them; trying again");
                false
            }
        }
    }
}

/// The etcd client. With `etcd_username`, connecting authenticates, so it needs an endpoint
/// that answers: while none does (a machine booting before etcd is reachable), fleetd waits,
/// trying again after pauses doubling from 1 s to 30 s, as it waits for etcd in any outage
/// (exiting would have systemd restart it until its start limit, then give up). Under
/// systemd it says so each time (`STATUS`), and extends its start timeout past the next try,
/// so that the wait is not taken for a start that hangs. A refusal (a wrong password) stops
/// it at once.
async fn connect_etcd(etcd: &EtcdConfig) -> Result<Registry> {
    let mut pause = Duration::from_secs(1);
    loop {
        match Registry::connect(etcd).await {
            Ok(registry) => return Ok(registry),
            Err(e) if e.is_unavailable() && !matches!(e, fleet_registry::Error::Refused { .. }) => {
                tracing::warn!(error = %e, retry_in_s = pause.as_secs(), "etcd is not reachable yet; connecting again");
                // The next try ends within the pause and a request timeout per endpoint.
                let tries = u32::try_from(etcd.endpoints.len()).unwrap_or(u32::MAX);
                let within =
                    pause + etcd.request_timeout.saturating_mul(tries) + Duration::from_secs(5);
                system::notify_waiting("waiting for etcd to answer", within);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e).context("cannot set up the etcd client"),
        }
    }
}

/// TLS to etcd from the configured files, read now so that a missing one stops fleetd.
fn etcd_tls(config: &Config) -> Result<Option<fleet_registry::EtcdTls>> {
    if !config
        .etcd_servers
        .iter()
        .any(|s| s.starts_with("https://"))
    {
        return Ok(None);
    }
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let ca_pem = match &config.etcd_cafile {
        Some(ca) => read(ca, "etcd_cafile")?,
        None => read(
            SYSTEM_CA_BUNDLE.as_ref(),
            "the system's certificate authorities",
        )?,
    };
    let identity = match (&config.etcd_certfile, &config.etcd_keyfile) {
        (Some(cert), Some(key)) => Some((read(cert, "etcd_certfile")?, read(key, "etcd_keyfile")?)),
        _ => None,
    };
    Ok(Some(fleet_registry::EtcdTls { ca_pem, identity }))
}

/// Binds the default unix socket, replacing a stale one, readable by root only: whoever can
/// talk to fleetd can run anything as root on every machine.
fn bind_unix(path: &str) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).with_context(|| format!("cannot remove stale {path}"))?;
        }
    }
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).with_context(|| format!("cannot listen on {path}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {path}"))?;
    Ok(listener)
}
