//! fleetd's configuration: fleet's `fleet.conf` (INI-style `key=value`) and `FLEET_<KEY>`
//! environment variables, the environment winning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/fleet/fleet.conf";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub etcd_servers: Vec<String>,
    pub etcd_key_prefix: String,
    /// PEM files for TLS to etcd (fleet's keys): the CA that signs etcd's certificates, and
    /// this fleetd's client certificate and key.
    pub etcd_cafile: Option<PathBuf>,
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    pub etcd_request_timeout: Duration,
    pub public_ip: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub agent_ttl: Duration,
    pub engine_reconcile_interval: Duration,
    pub units_directory: PathBuf,
    pub disable_engine: bool,
    pub token_limit: u32,
    pub verbosity: u32,
    /// TCP addresses to serve the API on when systemd passes no sockets (not in fleet, whose
    /// users added a `ListenStream=` to fleet.socket instead; that works here too).
    pub api_listen: Vec<String>,
    /// Where other fleetds reach this one for journals and statuses (not in fleet, whose
    /// fleetctl used SSH for these).
    pub peer_listen: PeerListen,
    /// The cluster's CA and this machine's certificate and key (PEM): HTTPS with client
    /// certificates on the API's TCP listeners and mutual TLS on the peer endpoint.
    pub api_cafile: Option<PathBuf>,
    pub api_certfile: Option<PathBuf>,
    pub api_keyfile: Option<PathBuf>,
    /// Plain HTTP on TCP without any authentication, as fleet had: only when asked for.
    pub api_insecure_http: bool,
}

/// The `peer_listen` key: `<public_ip>:49154` by default, an `address:port`, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerListen {
    /// The public address, port [`DEFAULT_PEER_PORT`].
    Default,
    Off,
    Address(std::net::SocketAddr),
}

pub const DEFAULT_PEER_PORT: u16 = 49154;

impl Default for Config {
    fn default() -> Self {
        Config {
            etcd_servers: vec!["http://127.0.0.1:2379".into()],
            etcd_key_prefix: fleet_registry::DEFAULT_PREFIX.into(),
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            etcd_username: None,
            etcd_password: None,
            etcd_request_timeout: Duration::from_secs(1),
            public_ip: None,
            metadata: BTreeMap::new(),
            agent_ttl: Duration::from_secs(30),
            engine_reconcile_interval: Duration::from_secs(2),
            units_directory: PathBuf::from("/run/fleet/units/"),
            disable_engine: false,
            token_limit: 100,
            verbosity: 0,
            api_listen: Vec::new(),
            peer_listen: PeerListen::Default,
            api_cafile: None,
            api_certfile: None,
            api_keyfile: None,
            api_insecure_http: false,
        }
    }
}

const KEYS: &[&str] = &[
    "etcd_servers",
    "etcd_key_prefix",
    "etcd_cafile",
    "etcd_certfile",
    "etcd_keyfile",
    "etcd_username",
    "etcd_password",
    "etcd_request_timeout",
    "public_ip",
    "metadata",
    "agent_ttl",
    "engine_reconcile_interval",
    "units_directory",
    "systemd_user",
    "disable_engine",
    "token_limit",
    "verbosity",
    "api_listen",
    "peer_listen",
    "api_cafile",
    "api_certfile",
    "api_keyfile",
    "api_insecure_http",
];

impl Config {
    /// Reads `path` (a missing default file is fine, a missing explicit one is not), then the
    /// environment.
    pub fn load(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config> {
        let mut values: BTreeMap<String, (String, String)> = BTreeMap::new();
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (key, value) in
                    parse_file(&text).with_context(|| format!("in {}", path.display()))?
                {
                    values.insert(key, (value, path.display().to_string()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        for key in KEYS {
            let var = format!("FLEET_{}", key.to_ascii_uppercase());
            if let Some(v) = env.get(&var) {
                values.insert(key.to_string(), (v.clone(), format!("${var}")));
            }
        }
        let mut config = Config::default();
        for (key, (value, origin)) in values {
            config
                .set(&key, &value)
                .with_context(|| format!("invalid {key} {value:?} (from {origin})"))?;
        }
        config.check()?;
        Ok(config)
    }

    /// Rules across keys.
    fn check(&self) -> Result<()> {
        let https = self.etcd_servers.iter().any(|s| s.starts_with("https://"));
        let tls_files = self.etcd_cafile.is_some()
            || self.etcd_certfile.is_some()
            || self.etcd_keyfile.is_some();
        // Refused rather than ignored: a daemon that silently dropped its TLS settings would
        // talk to etcd in the clear.
        if tls_files && !https {
            bail!("etcd_cafile, etcd_certfile and etcd_keyfile need https:// etcd_servers");
        }
        if self.etcd_certfile.is_some() != self.etcd_keyfile.is_some() {
            bail!("etcd_certfile and etcd_keyfile go together: give both or neither");
        }
        let api_files = [&self.api_cafile, &self.api_certfile, &self.api_keyfile];
        if api_files.iter().any(|f| f.is_some()) && !api_files.iter().all(|f| f.is_some()) {
            bail!("api_cafile, api_certfile and api_keyfile go together: give all three or none");
        }
        if self.api_insecure_http && self.api_certfile.is_some() {
            bail!("api_insecure_http=true and api_certfile contradict each other: choose one");
        }
        if self.etcd_username.is_some() != self.etcd_password.is_some() {
            bail!("etcd_username and etcd_password go together: give both or neither");
        }
        Ok(())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let value = unquote(value);
        let optional = |v: &str| (!v.is_empty()).then(|| v.to_string());
        match key {
            "etcd_servers" => {
                let servers = parse_list(value);
                if servers.is_empty() {
                    bail!("no etcd server given");
                }
                for s in &servers {
                    if !s.starts_with("http://") && !s.starts_with("https://") {
                        bail!("etcd server {s:?} is not an http:// or https:// URL");
                    }
                }
                if servers.iter().any(|s| s.starts_with("https://"))
                    && servers.iter().any(|s| s.starts_with("http://"))
                {
                    bail!("etcd servers mix http:// and https://; use one for all");
                }
                self.etcd_servers = servers;
            }
            "etcd_key_prefix" => {
                if value.is_empty() {
                    bail!("the key prefix cannot be empty");
                }
                self.etcd_key_prefix = value.to_string();
            }
            "etcd_cafile" => self.etcd_cafile = absolute_path(value)?,
            "etcd_certfile" => self.etcd_certfile = absolute_path(value)?,
            "etcd_keyfile" => self.etcd_keyfile = absolute_path(value)?,
            "etcd_username" => self.etcd_username = optional(value),
            "etcd_password" => self.etcd_password = optional(value),
            "etcd_request_timeout" => self.etcd_request_timeout = seconds(value)?,
            "public_ip" => {
                if !value.is_empty() {
                    value
                        .parse::<std::net::IpAddr>()
                        .context("not an IP address")?;
                }
                self.public_ip = optional(value);
            }
            "metadata" => self.metadata = parse_metadata(value)?,
            "agent_ttl" => {
                let ttl = parse_duration(value)?;
                if ttl < Duration::from_secs(2) {
                    bail!("agent_ttl must be at least 2s");
                }
                if ttl > MAX_DURATION {
                    bail!("agent_ttl must be at most 24h");
                }
                self.agent_ttl = ttl;
            }
            "engine_reconcile_interval" => self.engine_reconcile_interval = seconds(value)?,
            "units_directory" => {
                if !value.starts_with('/') {
                    bail!("must be an absolute path");
                }
                self.units_directory = PathBuf::from(value);
            }
            "systemd_user" => {
                if boolean(value)? {
                    bail!("driving a user's systemd instance is not supported yet");
                }
            }
            "disable_engine" => self.disable_engine = boolean(value)?,
            "token_limit" => {
                let limit: u32 = value.parse().context("not a number")?;
                // The API refuses page tokens of larger pages, so a larger page size would
                // break every list's second page.
                if !(1..=fleet_api::server::MAX_PAGE_SIZE).contains(&limit) {
                    bail!("must be from 1 to {}", fleet_api::server::MAX_PAGE_SIZE);
                }
                self.token_limit = limit;
            }
            "verbosity" => self.verbosity = value.parse().context("not a number")?,
            "api_listen" => {
                let addrs = parse_list(value);
                for a in &addrs {
                    a.parse::<std::net::SocketAddr>()
                        .with_context(|| format!("{a:?} is not an address:port"))?;
                }
                self.api_listen = addrs;
            }
            "peer_listen" => {
                self.peer_listen = match value {
                    "" => PeerListen::Default,
                    v if v.eq_ignore_ascii_case("off") => PeerListen::Off,
                    v => PeerListen::Address(
                        v.parse()
                            .with_context(|| format!("{v:?} is not an address:port or off"))?,
                    ),
                }
            }
            "api_cafile" => self.api_cafile = absolute_path(value)?,
            "api_certfile" => self.api_certfile = absolute_path(value)?,
            "api_keyfile" => self.api_keyfile = absolute_path(value)?,
            "api_insecure_http" => self.api_insecure_http = boolean(value)?,
            _ => unreachable!("only known keys are set"),
        }
        Ok(())
    }
}

/// `key=value` lines; `#` and `;` start comments; unknown keys are warned about.
fn parse_file(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('[')
        {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("line {}: expected key=value, found {line:?}", i + 1);
        };
        let key = key.trim().replace('-', "_");
        if !KEYS.contains(&key.as_str()) {
            tracing::warn!(key, line = i + 1, "ignoring unknown configuration key");
            continue;
        }
        out.push((key, value.trim().to_string()));
    }
    Ok(out)
}

/// An absolute path, or none for an empty value.
fn absolute_path(value: &str) -> Result<Option<PathBuf>> {
    if value.is_empty() {
        return Ok(None);
    }
    if !value.starts_with('/') {
        bail!("must be an absolute path");
    }
    Ok(Some(PathBuf::from(value)))
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// `a,b`, `"a","b"` or `["a","b"]`.
fn parse_list(v: &str) -> Vec<String> {
    let v = v.trim();
    let v = v
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(v);
    v.split(',')
        .map(|s| unquote(s).to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_metadata(v: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, val)) = item.split_once('=') else {
            bail!("metadata item {item:?} is not key=value");
        };
        let (k, val) = (k.trim(), val.trim());
        if k.is_empty() {
            bail!("metadata item {item:?} has an empty key");
        }
        // Metadata no MachineMetadata= item could match is a mistake, not a setting.
        fleet_units::check_metadata(k, val).with_context(|| format!("metadata item {item:?}"))?;
        out.insert(k.to_string(), val.to_string());
    }
    Ok(out)
}

/// The longest duration any key takes (a day): longer ones are typos, and would overflow the
/// arithmetic of timers and leases built on them.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// The shortest interval or timeout (a millisecond): shorter ones would round to zero, a
/// timeout that always expires or a loop that never sleeps.
const MIN_SECONDS: Duration = Duration::from_millis(1);

/// A number of seconds, from [`MIN_SECONDS`] to [`MAX_DURATION`].
fn seconds(v: &str) -> Result<Duration> {
    let secs: f64 = v.parse().context("not a number of seconds")?;
    // NaN, infinities and out-of-range numbers fail here rather than panic in
    // `Duration::from_secs_f64`.
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if (MIN_SECONDS..=MAX_DURATION).contains(&d) => Ok(d),
        _ => bail!("must be a number of seconds from 0.001 to 86400"),
    }
}

/// Go-style durations as fleet took them: `30s`, `1m`, `1m30s`, `500ms`, `1h`. Durations that
/// do not fit a `Duration` (`99999999999999999999h`) are refused; the caller bounds the rest.
fn parse_duration(v: &str) -> Result<Duration> {
    let too_long = || anyhow::anyhow!("duration {v:?} is out of range");
    let mut total = Duration::ZERO;
    let mut rest = v.trim();
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            bail!("expected a number in {v:?}");
        }
        let n: f64 = rest[..digits].parse().context("bad number")?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            other => bail!("unknown unit {other:?} in {v:?} (use h, m, s or ms)"),
        };
        rest = &rest[unit_len..];
        let term = Duration::try_from_secs_f64(n * factor).map_err(|_| too_long())?;
        total = total.checked_add(term).ok_or_else(too_long)?;
    }
    Ok(total)
}

fn boolean(v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "on" => Ok(true),
        "0" | "f" | "false" | "no" | "off" | "" => Ok(false),
        _ => bail!("not a boolean"),
    }
}

/// What a reload (SIGHUP) does with a configuration read afresh: fleet rebuilt its server
/// with it; here what can change in place does, and the rest waits for a restart of fleetd.
/// Never does a reload stop or restart a unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    /// The configuration in effect afterwards: the running one with what was applied.
    pub config: Config,
    /// The new log verbosity, when it changed.
    pub verbosity: Option<u32>,
    /// Keys whose new values need a restart of fleetd, in the order of [`KEYS`].
    pub need_restart: Vec<&'static str>,
}

/// Compares the running configuration with one read afresh: which changes apply in place (the
/// log verbosity) and which keys need a restart.
pub fn reload(running: &Config, fresh: &Config) -> Reload {
    let changed: [(&'static str, bool); 22] = [
        ("etcd_servers", running.etcd_servers != fresh.etcd_servers),
        (
            "etcd_key_prefix",
            running.etcd_key_prefix != fresh.etcd_key_prefix,
        ),
        ("etcd_cafile", running.etcd_cafile != fresh.etcd_cafile),
        (
            "etcd_certfile",
            running.etcd_certfile != fresh.etcd_certfile,
        ),
        ("etcd_keyfile", running.etcd_keyfile != fresh.etcd_keyfile),
        (
            "etcd_username",
            running.etcd_username != fresh.etcd_username,
        ),
        (
            "etcd_password",
            running.etcd_password != fresh.etcd_password,
        ),
        (
            "etcd_request_timeout",
            running.etcd_request_timeout != fresh.etcd_request_timeout,
        ),
        ("public_ip", running.public_ip != fresh.public_ip),
        ("metadata", running.metadata != fresh.metadata),
        ("agent_ttl", running.agent_ttl != fresh.agent_ttl),
        (
            "engine_reconcile_interval",
            running.engine_reconcile_interval != fresh.engine_reconcile_interval,
        ),
        (
            "units_directory",
            running.units_directory != fresh.units_directory,
        ),
        (
            "disable_engine",
            running.disable_engine != fresh.disable_engine,
        ),
        ("token_limit", running.token_limit != fresh.token_limit),
        ("api_listen", running.api_listen != fresh.api_listen),
        ("peer_listen", running.peer_listen != fresh.peer_listen),
        // The files' paths; their contents are read again on SIGHUP and when they change.
        ("api_cafile", running.api_cafile != fresh.api_cafile),
        ("api_certfile", running.api_certfile != fresh.api_certfile),
        ("api_keyfile", running.api_keyfile != fresh.api_keyfile),
        (
            "api_insecure_http",
            running.api_insecure_http != fresh.api_insecure_http,
        ),
        // Applied in place, below.
        ("verbosity", false),
    ];
    let verbosity = (running.verbosity != fresh.verbosity).then_some(fresh.verbosity);
    Reload {
        config: Config {
            verbosity: fresh.verbosity,
            ..running.clone()
        },
        verbosity,
        need_restart: changed
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| *key)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, env: &[(&str, &str)]) -> Result<Config> {
        let dir = std::env::temp_dir().join(format!(
            "fleetd-config-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("fleet.conf");
        std::fs::write(&path, file)?;
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let result = Config::load(Some(&path), &env);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn file_values_and_env_overrides() {
        let c = load(
            "# written by a tool\netcd_servers=[\"http://10.0.0.1:2379\",\"http://10.0.0.2:2379\"]\npublic_ip=10.0.0.5\nmetadata=\"role=web,region=eu\"\nagent_ttl=10s\nengine_reconcile_interval=0.5\nunknown_key=1\n",
            &[("FLEET_PUBLIC_IP", "10.0.0.9"), ("FLEET_AGENT_TTL", "1m30s")],
        )
        .unwrap();
        assert_eq!(
            c.etcd_servers,
            vec!["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(c.public_ip.as_deref(), Some("10.0.0.9"));
        assert_eq!(c.metadata.get("role").map(String::as_str), Some("web"));
        assert_eq!(c.metadata.get("region").map(String::as_str), Some("eu"));
        assert_eq!(c.agent_ttl, Duration::from_secs(90));
        assert_eq!(c.engine_reconcile_interval, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let long_ttl = format!("agent_ttl={}s", "9".repeat(400));
        let cases = [
            ("agent_ttl=forever", "agent_ttl"),
            ("agent_ttl=1s", "agent_ttl"),
            ("etcd_servers=10.0.0.1:2379", "etcd_servers"),
            ("public_ip=not-an-ip", "public_ip"),
            ("metadata=role", "metadata"),
            ("metadata=role=a=b", "metadata"),
            ("metadata=role=\"web\",region=eu", "metadata"),
            ("metadata=role=", "metadata"),
            ("metadata=role=%i", "metadata"),
            ("etcd_request_timeout=-1", "etcd_request_timeout"),
            ("units_directory=relative/dir", "units_directory"),
            ("disable_engine=maybe", "disable_engine"),
            ("etcd_cafile=/etc/ssl/ca.pem", "https://"),
            ("etcd_cafile=ca.pem", "etcd_cafile"),
            (
                "etcd_servers=https://10.0.0.1:2379\netcd_certfile=/c.pem",
                "give both",
            ),
            (
                "etcd_servers=https://10.0.0.1:2379,http://10.0.0.2:2379",
                "mix",
            ),
            ("etcd_username=fleet", "etcd_password"),
            ("systemd_user=true", "systemd_user"),
            ("peer_listen=10.0.0.1", "peer_listen"),
            ("peer_listen=on", "peer_listen"),
            ("just a line", "line 1"),
            // Out of range: refused like any bad value, never a panic (as they once were).
            ("agent_ttl=99999999999999999999h", "agent_ttl"),
            (&long_ttl, "agent_ttl"),
            ("agent_ttl=18446744073709551615s1s", "agent_ttl"),
            ("agent_ttl=25h", "agent_ttl"),
            ("etcd_request_timeout=1e300", "etcd_request_timeout"),
            ("etcd_request_timeout=NaN", "etcd_request_timeout"),
            ("etcd_request_timeout=inf", "etcd_request_timeout"),
            ("etcd_request_timeout=1e-300", "etcd_request_timeout"),
            (
                "engine_reconcile_interval=86401",
                "engine_reconcile_interval",
            ),
            ("engine_reconcile_interval=0", "engine_reconcile_interval"),
            ("token_limit=0", "token_limit"),
            ("token_limit=10001", "token_limit"),
            ("token_limit=99999999999", "token_limit"),
            ("verbosity=99999999999", "verbosity"),
        ];
        for (file, key) in cases {
            let err = load(file, &[]).expect_err(file);
            assert!(format!("{err:#}").contains(key), "{file}: {err:#}");
        }
    }

    #[test]
    fn tls_to_etcd() {
        let c = load(
            "etcd_servers=https://10.0.0.1:2379\netcd_cafile=/pki/ca.pem\n\
             etcd_certfile=/pki/fleet.pem\netcd_keyfile=/pki/fleet-key.pem",
            &[],
        )
        .unwrap();
        assert_eq!(c.etcd_cafile.as_deref(), Some(Path::new("/pki/ca.pem")));
        assert_eq!(
            c.etcd_certfile.as_deref(),
            Some(Path::new("/pki/fleet.pem"))
        );
        assert_eq!(
            c.etcd_keyfile.as_deref(),
            Some(Path::new("/pki/fleet-key.pem"))
        );
        // https:// alone: TLS with the system's certificate authorities.
        let c = load("etcd_servers=https://etcd.example:2379", &[]).unwrap();
        assert_eq!(c.etcd_cafile, None);
    }

    #[test]
    fn api_tls_files_go_together_and_exclude_plain_http() {
        let c = load(
            "api_cafile=/pki/ca.pem\napi_certfile=/pki/m.pem\napi_keyfile=/pki/m-key.pem",
            &[],
        )
        .unwrap();
        assert_eq!(c.api_certfile.as_deref(), Some(Path::new("/pki/m.pem")));
        assert!(!c.api_insecure_http);
        assert!(
            load("api_insecure_http=true", &[])
                .unwrap()
                .api_insecure_http
        );
        for (file, says) in [
            ("api_certfile=/pki/m.pem", "all three"),
            (
                "api_cafile=/ca.pem\napi_certfile=/m.pem\napi_keyfile=/k.pem\napi_insecure_http=true",
                "choose one",
            ),
            ("api_keyfile=k.pem", "absolute"),
        ] {
            let err = load(file, &[]).expect_err(file);
            assert!(format!("{err:#}").contains(says), "{file}: {err:#}");
        }
    }

    #[test]
    fn peer_listen() {
        assert_eq!(load("", &[]).unwrap().peer_listen, PeerListen::Default);
        assert_eq!(
            load("peer_listen=off", &[]).unwrap().peer_listen,
            PeerListen::Off
        );
        assert_eq!(
            load("peer_listen=0.0.0.0:5000", &[]).unwrap().peer_listen,
            PeerListen::Address("0.0.0.0:5000".parse().unwrap())
        );
        assert_eq!(
            load(
                "peer_listen=off",
                &[("FLEET_PEER_LISTEN", "10.0.0.2:49154")]
            )
            .unwrap()
            .peer_listen,
            PeerListen::Address("10.0.0.2:49154".parse().unwrap())
        );
    }

    /// Values shaped like the keys' values (numbers, durations, lists, metadata), and noise.
    fn value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            "(?s).{0,40}",
            "-?[0-9]{0,25}(\\.[0-9]{0,5})?([eE]-?[0-9]{1,4})?",
            "([0-9.]{0,22}(h|m|s|ms|us|ns|x)?){0,4}",
            "(NaN|inf|-inf|\"|\\[|\\]|,|=| |off|true|0|1|http://|https://|/)*",
            "\\[?(\"?[a-z:/0-9.=%\"]{0,12}\"?,?){0,4}\\]?",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn any_file_is_read_or_refused(text in "(?s).{0,300}") {
            if let Ok(values) = parse_file(&text) {
                let mut config = Config::default();
                for (key, value) in values {
                    let _ = config.set(&key, &value);
                }
            }
        }

        #[test]
        fn any_value_of_any_key_is_taken_or_refused(
            key in proptest::sample::select(KEYS),
            value in value(),
        ) {
            let mut config = Config::default();
            if config.set(key, &value).is_ok() {
                // Whatever was taken is within the bounds the rest of fleetd relies on.
                for d in [config.etcd_request_timeout, config.engine_reconcile_interval] {
                    proptest::prop_assert!((MIN_SECONDS..=MAX_DURATION).contains(&d), "{key}={value:?}");
                }
                proptest::prop_assert!(config.agent_ttl <= MAX_DURATION);
                proptest::prop_assert!(config.token_limit >= 1);
            }
        }

        #[test]
        fn any_duration_is_taken_or_refused(
            value in "([0-9]{0,25}(\\.[0-9]{0,4})?(h|m|s|ms|x)?){0,4}",
        ) {
            let _ = parse_duration(&value);
            let mut config = Config::default();
            if config.set("agent_ttl", &value).is_ok() {
                proptest::prop_assert!(config.agent_ttl <= MAX_DURATION, "{value:?}");
            }
        }

        #[test]
        fn go_durations_round_trip(h in 0u64..24, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
            let text = format!("{h}h{m}m{s}s{ms}ms");
            let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
            let got = parse_duration(&text).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            // Through f64, so within a nanosecond or so of the exact value.
            proptest::prop_assert!(got.abs_diff(want) < Duration::from_micros(1), "{text}: {got:?}");
        }
    }

    #[test]
    fn durations() {
        for (input, secs) in [
            ("30s", 30.0),
            ("1m", 60.0),
            ("1h", 3600.0),
            ("1m30s", 90.0),
            ("1500ms", 1.5),
        ] {
            assert_eq!(
                parse_duration(input).unwrap(),
                Duration::from_secs_f64(secs),
                "{input}"
            );
        }
        for bad in ["", "10", "s", "10x", "1..5s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_reload_applies_the_verbosity_and_names_what_needs_a_restart() {
        let running = load("metadata=role=web\nagent_ttl=10s\n", &[]).unwrap();
        // Nothing changed: nothing to do.
        let same = reload(&running, &running.clone());
        assert_eq!(same.verbosity, None);
        assert!(same.need_restart.is_empty());
        assert_eq!(same.config, running);

        let fresh = load(
            "metadata=role=db\nagent_ttl=10s\nverbosity=2\netcd_servers=http://10.0.0.1:2379\n",
            &[],
        )
        .unwrap();
        let r = reload(&running, &fresh);
        assert_eq!(r.verbosity, Some(2));
        assert_eq!(r.need_restart, ["etcd_servers", "metadata"]);
        // In effect: the new verbosity, the rest as running until a restart.
        assert_eq!(r.config.verbosity, 2);
        assert_eq!(r.config.metadata, running.metadata);
        assert_eq!(r.config.etcd_servers, running.etcd_servers);
        // Reloading the same file again changes nothing more, but still names the keys that
        // wait for a restart.
        let again = reload(&r.config, &fresh);
        assert_eq!(again.verbosity, None);
        assert_eq!(again.need_restart, ["etcd_servers", "metadata"]);

        // Every key but verbosity needs a restart.
        let all = load(
            "etcd_servers=https://10.0.0.1:2379\netcd_key_prefix=/x/\netcd_cafile=/e/ca.pem\netcd_certfile=/e/c.pem\netcd_keyfile=/e/k.pem\netcd_username=u\netcd_password=p\netcd_request_timeout=2.0\npublic_ip=10.0.0.1\nmetadata=a=b\nagent_ttl=20s\nengine_reconcile_interval=3.0\nunits_directory=/tmp/u\ndisable_engine=true\ntoken_limit=5\napi_listen=127.0.0.1:1\npeer_listen=off\napi_cafile=/a/ca.pem\napi_certfile=/a/c.pem\napi_keyfile=/a/k.pem\n",
            &[],
        )
        .unwrap();
        let r = reload(&Config::default(), &all);
        let mut want: Vec<&str> = KEYS
            .iter()
            .copied()
            .filter(|k| {
                !matches!(
                    *k,
                    // Applied in place; never stored; contradicts api_certfile.
                    "verbosity" | "systemd_user" | "api_insecure_http"
                )
            })
            .collect();
        want.sort();
        let mut got = r.need_restart.clone();
        got.sort();
        assert_eq!(got, want);
    }
}
