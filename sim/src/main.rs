//! fleet-sim: N simulated (hollow) machines in one process against a real etcd, each with a
//! real presence and agent and a simulated systemd. The engine and the API are not here: run
//! real fleetds (or the engine) beside it. For tests and benchmarks only.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fleet_registry::{EtcdConfig, Registry};
use fleet_sim::{SimConfig, Simulation};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

mod control;

/// Machines per etcd client when `--etcd-clients` is not given.
const MACHINES_PER_CLIENT: usize = 100;

#[derive(Parser, Debug)]
#[command(
    name = "fleet-sim",
    version,
    about = "Simulated (hollow) fleet machines: a real lease, member record and agent each, on a real etcd, with a simulated systemd (nothing runs). For tests and benchmarks only; run the engine and the API beside it."
)]
struct Args {
    /// How many simulated machines.
    #[arg(long, default_value_t = 100)]
    machines: u32,
    /// etcd's client endpoints, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    etcd: Vec<String>,
    /// fleet's key prefix in etcd.
    #[arg(long, default_value = fleet_registry::DEFAULT_PREFIX)]
    prefix: String,
    /// The machines' lease TTL (fleetd's agent_ttl), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ttl: Duration,
    /// How long a simulated start or stop takes, e.g. 50ms.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    state_delay: Duration,
    /// Every machine's metadata, e.g. role=web,region=eu.
    #[arg(long, default_value = "", value_parser = parse_metadata)]
    metadata: BTreeMap<String, String>,
    /// The index of the first machine: simulations sharing an etcd use disjoint ranges.
    #[arg(long, default_value_t = 0)]
    id_offset: u32,
    /// A number of this run, the last 8 hex digits of every machine id.
    #[arg(long, default_value_t = 0)]
    run: u32,
    /// How many of the machines (the first ones) follow the members and record their readings
    /// as a fleetd does; each keeps every member in memory (followers × machines records).
    #[arg(long, default_value_t = 0)]
    followers: u32,
    /// How many etcd clients (connections) the machines share; by default one per
    /// `MACHINES_PER_CLIENT` machines, at least 4. Few connections for many machines fail
    /// together: HTTP/2 (h2) forgets a request it gave up on once 50 others wait to be
    /// forgotten, counts each answer to a forgotten one, and closes the connection at the
    /// 1,024th, taking every machine's keepalive and watch on it down at once.
    #[arg(long)]
    etcd_clients: Option<usize>,
    /// The bound on each etcd request.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Where the agents write unit files (default: a directory under the system's temporary
    /// directory, removed at exit).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Take commands on standard input, one a line, and answer on standard output (for
    /// `fleet-bench hollow`): `kill INDEX` powers machine INDEX off, `running` lists what runs
    /// where, `double-runs` every unit that ever ran on two machines at once (every simulated
    /// systemd tells, as each unit starts and stops running). The end of the input stops the
    /// simulation.
    #[arg(long)]
    control: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("fleet_sim=info,warn")),
        )
        .with_ansi(ansi)
        .event_format(Simulated(Format::default().with_ansi(ansi)))
        .with_writer(std::io::stderr)
        .init();
    if args.machines == 0 {
        bail!("--machines must be at least 1");
    }
    let (state_dir, remove_at_exit) = match &args.state_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("fleet-sim-{}-{}", args.run, std::process::id())),
            true,
        ),
    };
    let result = run(&args, state_dir.clone()).await;
    if remove_at_exit {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    result
}

async fn run(args: &Args, state_dir: PathBuf) -> Result<()> {
    let etcd = EtcdConfig {
        endpoints: args.etcd.clone(),
        prefix: args.prefix.clone(),
        request_timeout: args.request_timeout,
        ..EtcdConfig::default()
    };
    let mut registries = Vec::new();
    let clients = args.etcd_clients.unwrap_or(
        (args.machines as usize)
            .div_ceil(MACHINES_PER_CLIENT)
            .max(4),
    );
    for _ in 0..clients.max(1) {
        registries.push(
            Registry::connect(&etcd)
                .await
                .context("cannot set up an etcd client")?,
        );
    }
    let mut config = SimConfig::new(args.machines, state_dir);
    config.id_offset = args.id_offset;
    config.run = args.run;
    config.ttl = args.ttl;
    config.state_delay = args.state_delay;
    config.metadata = args.metadata.clone();
    config.followers = args.followers;
    tracing::info!(
        machines = args.machines,
        followers = args.followers,
        etcd = %args.etcd.join(","),
        state_dir = %config.state_dir.display(),
        "starting simulated machines (hollow: real presence and agent, simulated systemd)"
    );
    let started = Instant::now();
    let mut simulation = Simulation::start(&registries, &config)
        .await
        .context("cannot start the simulated machines")?;
    let rss = rss_megabytes()
        .map(|mb| format!("{mb:.1} MB"))
        .unwrap_or_else(|| "unknown".into());
    tracing::info!("simulated machines running");
    println!(
        "{} simulated machines registered in {:.1} s, RSS {rss}",
        simulation.len(),
        started.elapsed().as_secs_f64()
    );
    if args.control {
        tokio::select! {
            result = control::serve(&mut simulation, args.run) => result?,
            _ = shutdown_signal() => {}
        }
    } else {
        shutdown_signal().await;
    }
    tracing::info!(
        machines = simulation.len(),
        "stopping the simulated machines; their leases expire within the TTL"
    );
    drop(simulation);
    Ok(())
}

/// Every log line of the simulation says so.
struct Simulated(Format);

impl<S, N> FormatEvent<S, N> for Simulated
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "[simulated] ")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// This process's resident set size, from `/proc/self/status`.
fn rss_megabytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
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

/// A duration: a number with `ms`, `s` or `m`, or a bare number of seconds.
fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let (number, unit) = match v.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => v.split_at(at),
        None => (v, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{v:?} is not a duration (e.g. 50ms, 10s)"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{v:?}: unknown unit {unit:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{v:?}: {e}"))
}

/// Metadata as fleetd's `metadata`: `key=value` items, comma-separated.
fn parse_metadata(v: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, val)) = item.split_once('=') else {
            return Err(format!("metadata item {item:?} is not key=value"));
        };
        let (k, val) = (k.trim(), val.trim());
        fleet_units::check_metadata(k, val).map_err(|e| format!("metadata item {item:?}: {e}"))?;
        out.insert(k.to_string(), val.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_metadata_parse() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
        let m = parse_metadata("role=web, region=eu").expect("metadata");
        assert_eq!(m.get("region").map(String::as_str), Some("eu"));
        assert!(parse_metadata("role").is_err());
        assert!(parse_metadata("role=a=b").is_err());
    }
}
