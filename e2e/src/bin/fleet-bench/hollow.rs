//! `fleet-bench hollow`: issue 10's figures on a cluster of simulated (hollow) machines, the
//! real engine and a private real etcd, at each cluster size asked for.
//!
//! Three kinds of process, so that each one's memory is its own: this one (the driver: writes
//! units as the API does, waits, checks), a `fleet-sim --control` child (the N hollow machines:
//! real presence and agent each, simulated systemd), and a `fleet-bench hollow-engine` child
//! (the real engine, `fleet_engine::run` without a witness, as `sim/tests/hollow.rs` runs it).
//! The engine campaigns on a lease of its own, which stands for its machine's lease: stopping
//! it and revoking that lease frees the leadership as the lease's expiry would, without
//! taking a hollow machine (and its units) down with it.
//!
//! Correctness (issue 10, item 4): every simulated systemd tells the simulation each time a
//! unit starts or stops running on it, and the simulation records any unit running on two
//! machines at once, all along; after the units are first active and again at
//! the end, every unit must be placed exactly once, on a machine that is on, run there and
//! nowhere else, and be reported active by it. Anything else fails the benchmark.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_registry::{JobState, MachineId, PresenceStatus, Progress, Registry, Unit};
use fleet_testkit::metric_sum;
use fleet_units::{UnitName, UnitOption};
use futures_util::{stream, StreamExt, TryStreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Requests in flight while units are written, as fleetctl sends them (`IN_FLIGHT`).
const IN_FLIGHT: usize = 32;
/// The run number in the hollow machines' ids.
const RUN: u32 = 0x10;
/// The engine's bound on each etcd request.
const ENGINE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// fleet's engine resync period (`engine_reconcile_interval`).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);
/// How long etcd's request count is watched once nothing changes.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Units put one at a time to time one event.
const EVENTS: usize = 5;
/// Units submitted while no engine leads, for the new leader to place.
const LEADER_UNITS: usize = 10;
/// How long a unit's write is made again while etcd does not answer.
const WRITE_RETRIES_FOR: Duration = Duration::from_secs(120);
/// The bound on a new leader placing again (at 100,000 units).
const NEW_LEADER_TARGET: f64 = 5.0;

/// What `fleet-bench hollow` was asked for.
pub struct Options {
    pub sizes: Vec<u32>,
    pub units_per_machine: u32,
    /// The hollow machines' (and the engine's) lease TTL, fleetd's `agent_ttl`.
    pub ttl: Duration,
    pub svg: PathBuf,
    /// The `fleet-sim` binary.
    pub sim: PathBuf,
    /// How long registering the machines may take before a size is given up as not measured.
    pub register_within: Duration,
    /// More flags for the private etcd, such as `--backend-batch-limit=200`.
    pub etcd_flags: Vec<String>,
}

/// The figures of one cluster size.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub machines: u32,
    pub units: usize,
    /// The simulation's own figure: every machine registered and its agent started.
    pub register: f64,
    /// From the first unit written: all written, all placed, all reported active.
    pub submitted: f64,
    pub placed: f64,
    pub active: f64,
    /// etcd's gRPC messages received per second once settled, and the keepalives expected.
    pub idle_rate: f64,
    pub keepalive_rate: f64,
    /// A machine powered off: seconds until its units are active elsewhere, and how many.
    pub kill: f64,
    pub moved: usize,
    /// On the way: until its lease was gone (a unit's state with it), and until the engine
    /// had declared it dead (a unit placed elsewhere).
    pub lease_gone: f64,
    pub declared_dead: f64,
    /// A new engine's start to the units submitted while none led all placed.
    pub new_leader: f64,
    /// Median time from one unit written to its placement written.
    pub one_event_ms: f64,
    pub db_mb: f64,
    /// The engine's process (the first leader, settled, and its peak), the new leader's peak,
    /// and the simulation's process (settled, and its peak).
    pub engine_rss: f64,
    pub engine_peak: f64,
    pub new_engine_peak: f64,
    pub sim_rss: f64,
    pub sim_peak: f64,
    /// How many times a unit started or stopped running on a machine, each checked for a
    /// double run.
    pub transitions: u64,
    /// Unit writes made again after etcd did not answer them.
    pub retried: u64,
    /// Reads of the units' progress made again after etcd did not answer them.
    pub followed_again: u64,
    /// etcd's gRPC messages received from the first unit written until all were active, by
    /// method, most first.
    pub busy: Vec<(String, f64)>,
}

/// One row of the table.
enum Row {
    Measured(Figures),
    NotMeasured { machines: u32, why: String },
}

/// Why a size was not measured.
enum Failure {
    /// Beyond what this machine does in reasonable time: reported, not a failure.
    TooSlow(String),
    /// Something did not work.
    Error(String),
    /// A unit ran twice, or was not placed exactly once: the benchmark fails.
    Incorrect(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Error(e)
    }
}

fn err(e: impl std::fmt::Display) -> Failure {
    Failure::Error(e.to_string())
}

pub fn hollow(options: &Options) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let engine_bin = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fleet-bench: cannot find its own binary to run the engine with: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !options.sim.exists() {
        eprintln!(
            "fleet-bench: no fleet-sim at {} (build it: cargo build --release -p fleet-sim, or give --sim PATH)",
            options.sim.display()
        );
        return ExitCode::FAILURE;
    }
    let logs = options
        .svg
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if let Err(e) = std::fs::create_dir_all(&logs) {
        eprintln!("fleet-bench: cannot create {}: {e}", logs.display());
        return ExitCode::FAILURE;
    }
    println!(
        "hollow: N simulated machines (fleet-sim: real lease, member record and agent each, simulated systemd with 50 ms jobs; a simulation, not systemd), the real engine (no witness) and a private real etcd{}, {} units per machine, agent_ttl {} s; one row per size",
        if options.etcd_flags.is_empty() {
            String::new()
        } else {
            format!(" ({})", options.etcd_flags.join(" "))
        },
        options.units_per_machine,
        options.ttl.as_secs_f64()
    );
    let mut rows = Vec::new();
    let mut failed = false;
    for &machines in &options.sizes {
        println!(
            "  {machines} machines, {} units: running…",
            machines as usize * options.units_per_machine as usize
        );
        // Profiles of etcd at work can be taken during a run: `curl -o cpu.pb.gz
        // http://127.0.0.1:PORT/debug/pprof/profile?seconds=10` (its port is in the log).
        let mut flags = vec!["--enable-pprof"];
        flags.extend(options.etcd_flags.iter().map(String::as_str));
        let etcd = fleet_testkit::Etcd::start_with(&flags);
        let result = runtime.block_on(run_size(&etcd, options, &engine_bin, &logs, machines));
        match result {
            Ok(figures) => {
                println!("{}", detail(&figures));
                rows.push(Row::Measured(figures));
            }
            Err(Failure::TooSlow(why)) => {
                println!("    not measured: {why}");
                rows.push(Row::NotMeasured { machines, why });
            }
            Err(Failure::Error(why)) => {
                eprintln!("fleet-bench: hollow, {machines} machines: {why}");
                failed = true;
                break;
            }
            Err(Failure::Incorrect(why)) => {
                eprintln!("fleet-bench: hollow, {machines} machines: INCORRECT: {why}");
                failed = true;
                break;
            }
        }
    }
    print_table(&rows, options);
    let measured: Vec<Figures> = rows
        .iter()
        .filter_map(|r| match r {
            Row::Measured(f) => Some(f.clone()),
            Row::NotMeasured { .. } => None,
        })
        .collect();
    if !measured.is_empty() {
        match crate::plot::hollow_svg(&options.svg, &measured, options.ttl) {
            Ok(()) => println!("  scaling curves: {}", options.svg.display()),
            Err(e) => {
                eprintln!("fleet-bench: cannot draw {}: {e}", options.svg.display());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The bound on all units placed and active, where it gives one.
pub fn active_target(machines: u32) -> Option<f64> {
    match machines {
        1_000 => Some(10.0),
        10_000 => Some(60.0),
        _ => None,
    }
}

fn detail(f: &Figures) -> String {
    let busy: Vec<String> = f
        .busy
        .iter()
        .map(|(method, n)| format!("{method} {n:.0}"))
        .collect();
    format!(
        "    registered in {:.1} s (fleet-sim); units written in {:.2} s, all placed at {:.2} s, all reported active at {:.2} s; {} writes made again after etcd did not answer or refused them as too many, {} reads of their progress\n    etcd's messages received meanwhile, by method: {}\n    idle: {:.0} etcd messages/s over {} s (keepalives expected: {:.0}/s, plus each agent's resync every 60 s and the engine's every {} s)\n    machine powered off: its lease gone after {:.2} s, declared dead by the engine after {:.2} s, its {} units active elsewhere after {:.2} s\n    new leader: {LEADER_UNITS} units placed {:.2} s after its start; one unit written to placed: {:.1} ms (median of {EVENTS})\n    etcd database {:.1} MB; RSS: engine process {:.1} MB (peak {:.1}, new leader's peak {:.1}), simulation process {:.1} MB (peak {:.1})\n    correctness: every unit placed once and running only there; {} starts and stops checked, no unit on two machines at once",
        f.register,
        f.submitted,
        f.placed,
        f.active,
        f.retried,
        f.followed_again,
        busy.join(", "),
        f.idle_rate,
        IDLE_WINDOW.as_secs(),
        f.keepalive_rate,
        RECONCILE_INTERVAL.as_secs(),
        f.lease_gone,
        f.declared_dead,
        f.moved,
        f.kill,
        f.new_leader,
        f.one_event_ms,
        f.db_mb,
        f.engine_rss,
        f.engine_peak,
        f.new_engine_peak,
        f.sim_rss,
        f.sim_peak,
        f.transitions,
    )
}

fn print_table(rows: &[Row], o: &Options) {
    let ttl = o.ttl.as_secs_f64();
    println!("  | machines | units | all active s (target) | idle etcd msg/s (keepalives) | lost machine's units moved s (≤ ttl+2) | new leader places s (≤ 5) | one event ms | etcd DB MB | engine RSS MB | sim RSS MB |");
    println!("  |---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        match row {
            Row::Measured(f) => {
                let target = active_target(f.machines)
                    .map(|t| format!("≤ {t:.0}"))
                    .unwrap_or_else(|| "none".into());
                println!(
                    "  | {} | {} | {:.2} ({target}) | {:.0} ({:.0}) | {:.2} (≤ {:.0}) | {:.2} (≤ {NEW_LEADER_TARGET:.0}) | {:.1} | {:.1} | {:.1} | {:.1} |",
                    f.machines,
                    f.units,
                    f.active,
                    f.idle_rate,
                    f.keepalive_rate,
                    f.kill,
                    ttl + 2.0,
                    f.new_leader,
                    f.one_event_ms,
                    f.db_mb,
                    f.engine_rss,
                    f.sim_rss,
                );
            }
            Row::NotMeasured { machines, why } => {
                println!(
                    "  | {machines} | {} | not measured: {why} |||||||| ",
                    *machines as usize * o.units_per_machine as usize
                );
            }
        }
    }
    println!("  RSS: engine = the process running only fleet_engine::run (and its etcd client), settled; sim = the fleet-sim process holding all N hollow machines. Targets from issue 10; \"one event\" must not grow with the cluster.");
}

/// A child process whose lines on standard output answer commands.
struct ChildLines {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines<BufReader<ChildStdout>>,
    what: &'static str,
    log: PathBuf,
}

impl ChildLines {
    fn spawn(
        mut command: Command,
        what: &'static str,
        log: PathBuf,
    ) -> Result<ChildLines, Failure> {
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the {what}: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(err(format!("the {what} has no standard input or output")));
        };
        Ok(ChildLines {
            child,
            stdin: Some(stdin),
            out: BufReader::new(stdout).lines(),
            what,
            log,
        })
    }

    /// The next line.
    async fn next_line(&mut self) -> Result<String, Failure> {
        match self.out.next_line().await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => Err(err(format!(
                "the {} exited; its log: {}",
                self.what,
                self.log.display()
            ))),
            Err(e) => Err(err(format!("cannot read from the {}: {e}", self.what))),
        }
    }

    /// The next line, within `within`.
    async fn line(&mut self, within: Duration) -> Result<String, Failure> {
        tokio::time::timeout(within, self.next_line())
            .await
            .unwrap_or_else(|_| {
                Err(err(format!(
                    "the {} did not answer within {within:?}; its log: {}",
                    self.what,
                    self.log.display()
                )))
            })
    }

    /// Sends `command` and returns the lines of its answer, without the final `end` line's
    /// word (its rest is the last element).
    async fn ask(&mut self, command: &str) -> Result<Vec<String>, Failure> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| err(format!("the {}'s input is closed", self.what)))?;
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| format!("cannot send {command:?} to the {}: {e}", self.what))?;
        let mut lines = Vec::new();
        loop {
            let line = self.line(Duration::from_secs(120)).await?;
            if let Some(rest) = line.strip_prefix("end") {
                lines.push(rest.trim().to_string());
                return Ok(lines);
            }
            if let Some(why) = line.strip_prefix("error") {
                return Err(err(format!(
                    "the {} refused {command:?}: {}",
                    self.what,
                    why.trim()
                )));
            }
            lines.push(line);
        }
    }

    fn rss(&self) -> (f64, f64) {
        self.child.id().map_or((f64::NAN, f64::NAN), |pid| {
            crate::rss_mb_of(&pid.to_string())
        })
    }

    /// Closes its input (the end of its commands) and waits for it to exit, then kills it.
    async fn stop(mut self) {
        self.stdin = None;
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Kills it at once, as a machine that loses power would.
    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The engine in a process of its own, leading (or campaigning) on its own lease.
struct Engine {
    process: ChildLines,
    lease: i64,
}

impl Engine {
    async fn start(
        bin: &Path,
        etcd: &fleet_testkit::Etcd,
        machine: &MachineId,
        ttl: Duration,
        log: PathBuf,
    ) -> Result<Engine, Failure> {
        let mut command = Command::new(bin);
        command.args([
            "hollow-engine",
            "--etcd",
            &etcd.endpoint,
            "--prefix",
            &etcd.prefix,
            "--machine",
            machine.as_str(),
            "--ttl-ms",
            &ttl.as_millis().to_string(),
        ]);
        let mut process = ChildLines::spawn(command, "engine", log)?;
        let line = process.line(Duration::from_secs(30)).await?;
        let lease = line
            .strip_prefix("lease ")
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| err(format!("the engine said {line:?}, not its lease")))?;
        Ok(Engine { process, lease })
    }
}

/// The figures of one size, against `etcd`.
async fn run_size(
    etcd: &fleet_testkit::Etcd,
    o: &Options,
    engine_bin: &Path,
    logs: &Path,
    machines: u32,
) -> Result<Figures, Failure> {
    if machines < 3 {
        return Err(err("a hollow cluster needs at least 3 machines"));
    }
    let registry = crate::private_registry(etcd).await?;
    let units = machines as usize * o.units_per_machine as usize;
    let mut f = Figures {
        machines,
        units,
        keepalive_rate: machines as f64 / (o.ttl.as_secs_f64() / 3.0),
        ..Figures::default()
    };

    // The machines.
    let mut sim_command = Command::new(&o.sim);
    sim_command.args([
        "--machines",
        &machines.to_string(),
        "--etcd",
        &etcd.endpoint,
        "--prefix",
        &etcd.prefix,
        "--ttl",
        &format!("{}ms", o.ttl.as_millis()),
        "--run",
        &RUN.to_string(),
        "--control",
    ]);
    let sim_log = logs.join(format!("hollow-{machines}-sim.log"));
    let mut sim = ChildLines::spawn(sim_command, "simulation", sim_log.clone())?;
    let register_deadline = tokio::time::Instant::now() + o.register_within;
    let registered = loop {
        let line = match tokio::time::timeout_at(register_deadline, sim.next_line()).await {
            Ok(line) => line?,
            Err(_) => {
                sim.kill().await;
                return Err(Failure::TooSlow(format!(
                    "registering {machines} hollow machines took longer than {} s (each registration reads every member: N²/2 reads, ARCHITECTURE.md's known limits)",
                    o.register_within.as_secs()
                )));
            }
        };
        // "N simulated machines registered in X s, RSS Y MB"
        if let Some(seconds) = line
            .split_once(" registered in ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|s| s.parse::<f64>().ok())
        {
            break seconds;
        }
    };
    f.register = registered;

    // The engine, on hollow machine 0's behalf.
    let mut engine = Engine::start(
        engine_bin,
        etcd,
        &fleet_sim::machine_id(RUN, 0),
        o.ttl,
        logs.join(format!("hollow-{machines}-engine-1.log")),
    )
    .await?;

    // All units, written as the API writes them, timed until all are placed and active.
    let names: Vec<UnitName> = (0..units)
        .map(|i| unit_name(&format!("hollow-{i:07}")))
        .collect::<Result<_, _>>()?;
    let deadline = Duration::from_secs(60) + Duration::from_millis(10) * units as u32;
    let before = etcd_metrics(etcd).await?;
    let retried = AtomicU64::new(0);
    let started = Instant::now();
    stream::iter(&names)
        .map(|name| write_unit(&registry, name, &retried))
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    f.submitted = started.elapsed().as_secs_f64();
    f.retried = retried.load(Ordering::Relaxed);
    // Opened now, not before the writes: a watch left unread meanwhile would fall behind, and
    // etcd would catch it up from its history under the lock its writes take. What was placed
    // or reported meanwhile, its first read holds.
    let mut progress = follow_units(&registry, &mut f.followed_again).await?;
    let mut all: BTreeSet<UnitName> = names.iter().cloned().collect();
    wait_units(
        &mut progress,
        &all,
        started + deadline,
        "placed",
        Progress::is_placed,
    )
    .await?;
    f.placed = started.elapsed().as_secs_f64();
    wait_units(
        &mut progress,
        &all,
        started + deadline,
        "reported active",
        Progress::is_active,
    )
    .await?;
    f.active = started.elapsed().as_secs_f64();
    drop(progress);
    f.busy = messages_by_method(&before, &etcd_metrics(etcd).await?);
    let killed = BTreeSet::new();
    let placed = check_once(&registry, &mut sim, &all, &killed).await?;

    // Idle: etcd's own count of the messages it received, once settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = etcd_metrics(etcd).await?;
    let window = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = etcd_metrics(etcd).await?;
    let received = |text: &str| metric_sum(text, "grpc_server_msg_received_total", "");
    f.idle_rate = (received(&after) - received(&before)) / window.elapsed().as_secs_f64();
    f.db_mb = metric_sum(&after, "etcd_mvcc_db_total_size_in_bytes", "") / 1e6;
    (f.engine_rss, f.engine_peak) = engine.process.rss();
    (f.sim_rss, f.sim_peak) = sim.rss();

    // One event: one unit written, until its placement is.
    let mut events = Vec::new();
    for k in 0..EVENTS {
        let name = unit_name(&format!("hollow-event-{k}"))?;
        let started = Instant::now();
        registry
            .put_unit(&unit(&name))
            .await
            .map_err(|e| format!("cannot write {name}: {e}"))?;
        wait_view(&registry, &name, started + Duration::from_secs(60), |v| {
            v.machine.is_some()
        })
        .await?;
        events.push(started.elapsed().as_secs_f64() * 1000.0);
        all.insert(name);
    }
    events.sort_by(f64::total_cmp);
    f.one_event_ms = events[events.len() / 2];

    // One machine powered off (its lease expires; nothing revokes it).
    let victim_index = machines / 2;
    let victim = fleet_sim::machine_id(RUN, victim_index);
    let moving: Vec<UnitName> = placed
        .iter()
        .filter(|(_, m)| **m == victim)
        .map(|(n, _)| n.clone())
        .collect();
    if moving.is_empty() {
        return Err(err(format!(
            "no unit placed on {victim}, the machine to power off"
        )));
    }
    sim.ask(&format!("kill {victim_index}")).await?;
    let powered_off = Instant::now();
    // On one of its units: its state goes with the lease, then the engine moves it.
    let within = powered_off + o.ttl + Duration::from_secs(60);
    wait_view(&registry, &moving[0], within, |v| v.state.is_none()).await?;
    f.lease_gone = powered_off.elapsed().as_secs_f64();
    wait_view(&registry, &moving[0], within, |v| {
        v.machine.as_ref() != Some(&victim)
    })
    .await?;
    f.declared_dead = powered_off.elapsed().as_secs_f64();
    for name in &moving {
        wait_view(&registry, name, within, |v| {
            v.machine.as_ref().is_some_and(|m| *m != victim)
                && v.state
                    .as_ref()
                    .is_some_and(|s| s.machine_id != victim && fleet_registry::reports_active(s))
        })
        .await?;
    }
    f.kill = powered_off.elapsed().as_secs_f64();
    f.moved = moving.len();
    let killed = BTreeSet::from([victim]);

    // A new leader: the leading engine stops and its lease goes as its expiry would take it;
    // units are written meanwhile; a new engine on another machine places them.
    let old_lease = engine.lease;
    engine.process.kill().await;
    revoke(etcd, old_lease).await?;
    let leader_units: Vec<UnitName> = (0..LEADER_UNITS)
        .map(|k| unit_name(&format!("hollow-leader-{k}")))
        .collect::<Result<_, _>>()?;
    for name in &leader_units {
        registry
            .put_unit(&unit(name))
            .await
            .map_err(|e| format!("cannot write {name}: {e}"))?;
    }
    let started = Instant::now();
    engine = Engine::start(
        engine_bin,
        etcd,
        &fleet_sim::machine_id(RUN, 1),
        o.ttl,
        logs.join(format!("hollow-{machines}-engine-2.log")),
    )
    .await?;
    for name in &leader_units {
        wait_view(&registry, name, started + Duration::from_secs(120), |v| {
            v.machine.is_some()
        })
        .await?;
    }
    f.new_leader = started.elapsed().as_secs_f64();
    (_, f.new_engine_peak) = engine.process.rss();
    all.extend(leader_units);

    // Everything placed once and running once at the end, and no double run seen meanwhile.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut progress = follow_units(&registry, &mut f.followed_again).await?;
    wait_units(
        &mut progress,
        &all,
        deadline,
        "reported active",
        Progress::is_active,
    )
    .await?;
    drop(progress);
    check_once(&registry, &mut sim, &all, &killed).await?;
    let mut answer = sim.ask("double-runs").await?;
    let transitions = answer.pop().unwrap_or_default();
    f.transitions = transitions
        .parse()
        .map_err(|_| format!("the simulation counted {transitions:?} starts and stops"))?;
    if !answer.is_empty() {
        return Err(Failure::Incorrect(format!(
            "{} units ran on two machines at once: {}",
            answer.len(),
            answer
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    if f.transitions < all.len() as u64 {
        return Err(err(format!(
            "the simulation saw {} starts and stops for {} units started",
            f.transitions,
            all.len()
        )));
    }
    engine.process.stop().await;
    sim.stop().await;
    Ok(f)
}

fn unit_name(base: &str) -> Result<UnitName, Failure> {
    UnitName::parse(&format!("{base}.service")).map_err(|e| err(format!("{base}.service: {e}")))
}

fn unit(name: &UnitName) -> Unit {
    Unit {
        name: name.clone(),
        options: vec![
            UnitOption::new("Unit", "Description", "hollow benchmark unit"),
            UnitOption::new("Service", "ExecStart", "/bin/sleep infinity"),
        ],
        desired_state: JobState::Launched,
    }
}

/// Writes a unit as the API does. A write etcd did not answer (it may or may not have been
/// made), or refused as one too many, is made again as a client would, until
/// `WRITE_RETRIES_FOR` has passed; each retry is counted in `retried`. Made again, it is a
/// creation: finding the very unit there counts as done, anything else there is an error.
async fn write_unit(
    registry: &Registry,
    name: &UnitName,
    retried: &AtomicU64,
) -> Result<(), String> {
    let give_up = Instant::now() + WRITE_RETRIES_FOR;
    let unit = unit(name);
    let mut first = true;
    loop {
        let written = if first {
            registry.put_unit(&unit).await
        } else {
            match registry.create_unit(&unit).await {
                Ok(Some(there)) if there != unit => {
                    return Err(format!(
                        "{name} was written again, but another unit is there: {there:?}"
                    ))
                }
                other => other.map(drop),
            }
        };
        match written {
            Ok(()) => return Ok(()),
            Err(e) if worth_again(&e) && Instant::now() < give_up => {
                retried.fetch_add(1, Ordering::Relaxed);
                first = false;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("cannot write {name}: {e}")),
        }
    }
}

/// Whether a request etcd failed is made again, as a client would: one it did not answer, or
/// refused as one too many; a refusal (certificates, permissions) is not waited out.
fn worth_again(e: &fleet_registry::Error) -> bool {
    (e.is_unavailable() && !matches!(e, fleet_registry::Error::Refused { .. })) || e.is_overloaded()
}

/// Follows the units' progress: its first read (every placement and state, at one revision)
/// made again while etcd does not answer it, until `WRITE_RETRIES_FOR` has passed, each time
/// counted in `again`. Right after 100,000 units are written, etcd under their load once broke
/// that read's connection.
async fn follow_units(registry: &Registry, again: &mut u64) -> Result<Progress, String> {
    let give_up = Instant::now() + WRITE_RETRIES_FOR;
    loop {
        match registry.follow_progress().await {
            Ok(progress) => return Ok(progress),
            Err(e) if worth_again(&e) && Instant::now() < give_up => {
                *again += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("cannot follow the units: {e}")),
        }
    }
}

/// Waits until `done` holds of every unit of `names` at once, following `progress`.
async fn wait_units(
    progress: &mut Progress,
    names: &BTreeSet<UnitName>,
    deadline: Instant,
    what: &str,
    done: fn(&Progress, &UnitName) -> bool,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        let mut pending: BTreeSet<&UnitName> =
            names.iter().filter(|n| !done(progress, n)).collect();
        if pending.is_empty() {
            return Ok(());
        }
        // Until each pending unit was seen done once; then all are looked at again.
        while !pending.is_empty() {
            // Checked first: a watch with changes ready every time would never let the
            // timeout fire.
            let changed = if tokio::time::Instant::now() >= deadline {
                None
            } else {
                tokio::time::timeout_at(deadline, progress.changed())
                    .await
                    .ok()
            };
            let units = match changed {
                Some(units) => units.map_err(|e| format!("cannot follow the units: {e}"))?,
                None => {
                    return Err(err(format!(
                        "{} of {} units {what} by the deadline",
                        names.iter().filter(|n| done(progress, n)).count(),
                        names.len()
                    )))
                }
            };
            for name in &units {
                if done(progress, name) {
                    pending.remove(name);
                }
            }
        }
    }
}

/// Waits until `ready` holds of the unit's view (point reads only).
async fn wait_view(
    registry: &Registry,
    name: &UnitName,
    deadline: Instant,
    ready: impl Fn(&fleet_registry::UnitView) -> bool,
) -> Result<(), Failure> {
    loop {
        let view = registry
            .unit_view(name)
            .await
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        if view.as_ref().is_some_and(&ready) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(err(format!("{name} not so by the deadline: {view:?}")));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every unit of `names` placed on exactly one machine that is on, running there and nowhere
/// else in the simulation, and reported active and launched by it; where each is. Looked at
/// again for up to 10 s, and incorrect if it is still not so.
async fn check_once(
    registry: &Registry,
    sim: &mut ChildLines,
    names: &BTreeSet<UnitName>,
    killed: &BTreeSet<MachineId>,
) -> Result<BTreeMap<UnitName, MachineId>, Failure> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let placements = registry
            .placements()
            .await
            .map_err(|e| format!("cannot read the placements: {e}"))?;
        let states = registry
            .unit_states()
            .await
            .map_err(|e| format!("cannot read the unit states: {e}"))?;
        let mut running: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut answer = sim.ask("running").await?;
        answer.pop();
        for line in answer {
            let mut words = line.split_whitespace().map(str::to_string);
            if let Some(unit) = words.next() {
                running.insert(unit, words.collect());
            }
        }
        match runs_once(names, killed, &placements, &states, &running) {
            Ok(placed) => return Ok(placed),
            Err(why) if Instant::now() >= deadline => return Err(Failure::Incorrect(why)),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The check of [`check_once`] on one reading.
fn runs_once(
    names: &BTreeSet<UnitName>,
    killed: &BTreeSet<MachineId>,
    placements: &[(MachineId, fleet_registry::Placement)],
    states: &[fleet_registry::UnitState],
    running: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<UnitName, MachineId>, String> {
    let mut placed: BTreeMap<&UnitName, Vec<&MachineId>> = BTreeMap::new();
    for (machine, p) in placements {
        placed.entry(&p.name).or_default().push(machine);
    }
    let active: BTreeSet<(&UnitName, &MachineId)> = states
        .iter()
        .filter(|s| fleet_registry::reports_active(s))
        .map(|s| (&s.name, &s.machine_id))
        .collect();
    let mut at = BTreeMap::new();
    for name in names {
        let machine = match placed.get(name).map(Vec::as_slice) {
            Some([m]) => *m,
            other => return Err(format!("{name} placed on {other:?}, not on one machine")),
        };
        if killed.contains(machine) {
            return Err(format!("{name} placed on the powered-off {machine}"));
        }
        let on: Vec<&str> = running
            .get(name.as_str())
            .map(|m| m.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if on != [machine.as_str()] {
            return Err(format!("{name} runs on {on:?}, placed on {machine}"));
        }
        if !active.contains(&(name, machine)) {
            return Err(format!("{name} not reported active by {machine}"));
        }
        at.insert(name.clone(), machine.clone());
    }
    Ok(at)
}

/// etcd's Prometheus metrics, from its client URL.
async fn etcd_metrics(etcd: &fleet_testkit::Etcd) -> Result<String, Failure> {
    let url = format!("{}/metrics", etcd.endpoint);
    let response = reqwest::get(&url)
        .await
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    response
        .text()
        .await
        .map_err(|e| err(format!("cannot read {url}: {e}")))
}

/// etcd's gRPC messages received between two readings of its metrics, by method, most first.
fn messages_by_method(before: &str, after: &str) -> Vec<(String, f64)> {
    let by_method = |text: &str| {
        let mut sums = BTreeMap::<String, f64>::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
                continue;
            };
            let method = rest
                .split_once("grpc_method=\"")
                .and_then(|(_, m)| m.split_once('"'))
                .map(|(m, _)| m.to_string());
            let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if let (Some(method), Some(value)) = (method, value) {
                *sums.entry(method).or_default() += value;
            }
        }
        sums
    };
    let before = by_method(before);
    let mut grown: Vec<(String, f64)> = by_method(after)
        .into_iter()
        .map(|(m, v)| {
            let was = before.get(&m).copied().unwrap_or_default();
            (m, v - was)
        })
        .filter(|(_, d)| *d > 0.0)
        .collect();
    grown.sort_by(|a, b| b.1.total_cmp(&a.1));
    grown
}

/// Revokes a lease: what its expiry does (every key on it goes), at once.
async fn revoke(etcd: &fleet_testkit::Etcd, lease: i64) -> Result<(), Failure> {
    let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .map_err(|e| format!("cannot connect to etcd at {}: {e}", etcd.endpoint))?;
    client
        .lease_revoke(lease)
        .await
        .map_err(|e| format!("cannot revoke the old leader's lease {lease}: {e}"))?;
    Ok(())
}

/// `fleet-bench hollow-engine --etcd URL --prefix P --machine ID --ttl-ms N`: the engine of
/// `fleet-bench hollow`, run in a process of its own. Prints `lease ID` (the lease it
/// campaigns on, kept alive here), then runs until its standard input ends or its lease is
/// lost.
pub fn engine_child(args: &[String]) -> ExitCode {
    let mut etcd = None;
    let mut prefix = None;
    let mut machine = None;
    let mut ttl = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = it.next();
        match (arg.as_str(), value) {
            ("--etcd", Some(v)) => etcd = Some(v.clone()),
            ("--prefix", Some(v)) => prefix = Some(v.clone()),
            ("--machine", Some(v)) => machine = MachineId::parse(v).ok(),
            ("--ttl-ms", Some(v)) => ttl = v.parse().ok().map(Duration::from_millis),
            _ => {
                eprintln!("fleet-bench hollow-engine: unexpected {arg:?} (--etcd URL --prefix P --machine ID --ttl-ms N)");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(etcd), Some(prefix), Some(machine), Some(ttl)) = (etcd, prefix, machine, ttl) else {
        eprintln!("fleet-bench hollow-engine: needs --etcd URL --prefix P --machine ID (32 hex digits) --ttl-ms N");
        return ExitCode::from(2);
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-bench hollow-engine: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(engine_main(etcd, prefix, machine, ttl)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-bench hollow-engine: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn engine_main(
    endpoint: String,
    prefix: String,
    machine: MachineId,
    ttl: Duration,
) -> Result<(), String> {
    let registry = Registry::connect(&fleet_registry::EtcdConfig {
        endpoints: vec![endpoint.clone()],
        prefix,
        request_timeout: ENGINE_REQUEST_TIMEOUT,
        ..fleet_registry::EtcdConfig::default()
    })
    .await
    .map_err(|e| format!("cannot set up an etcd client: {e}"))?;
    let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .map_err(|e| format!("cannot connect to etcd at {endpoint}: {e}"))?;
    let seconds = ttl.as_secs().max(1) as i64;
    let granted = client
        .lease_grant(seconds, None)
        .await
        .map_err(|e| format!("cannot be granted a lease: {e}"))?;
    let lease = granted.id();
    // What etcd counts the lease's expiry by.
    let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
    let (status, presence) = tokio::sync::watch::channel(PresenceStatus::Alive { lease });
    let engine = tokio::spawn(fleet_engine::run(
        registry,
        machine,
        presence,
        fleet_engine::EngineConfig {
            reconcile_interval: RECONCILE_INTERVAL,
            timing: fleet_quorum::Timing::for_ttl(ttl, ENGINE_REQUEST_TIMEOUT),
            witness: None,
        },
    ));
    println!("lease {lease}");
    // Renewed every third of the TTL; a renewal that fails is tried again every half second,
    // as fleetd's would be, and the engine stops only once the lease is gone or went a whole
    // TTL without a renewal (etcd may expire it then). Its writes are fenced by the leader
    // key on this lease either way.
    let keep_alive = async {
        let mut stream = None;
        let mut renewed = tokio::time::Instant::now();
        let mut pause = ttl / 3;
        loop {
            tokio::time::sleep(pause).await;
            // etcd counts the TTL from when it takes the keepalive, after it was sent.
            let sent = tokio::time::Instant::now();
            match tokio::time::timeout(
                ENGINE_REQUEST_TIMEOUT,
                renew(&mut client, lease, &mut stream),
            )
            .await
            {
                Ok(Ok(true)) => {
                    renewed = sent;
                    pause = ttl / 3;
                }
                Ok(Ok(false)) => return Err(format!("lease {lease} is gone")),
                Ok(Err(e)) => {
                    eprintln!("fleet-bench hollow-engine: cannot renew lease {lease}: {e}");
                    stream = None;
                    pause = Duration::from_millis(500);
                }
                Err(_) => {
                    eprintln!("fleet-bench hollow-engine: renewing lease {lease} timed out");
                    stream = None;
                    pause = Duration::from_millis(500);
                }
            }
            if renewed.elapsed() >= ttl {
                return Err(format!("lease {lease} went {ttl:?} without a renewal"));
            }
        }
    };
    let end_of_input = async {
        let mut input = tokio::io::stdin();
        let mut buffer = [0u8; 64];
        while matches!(tokio::io::AsyncReadExt::read(&mut input, &mut buffer).await, Ok(n) if n > 0)
        {
        }
    };
    let result = tokio::select! {
        result = keep_alive => result,
        _ = end_of_input => Ok(()),
    };
    let _ = status.send(PresenceStatus::Fenced);
    engine.abort();
    result
}

/// One keepalive of `lease` on `stream`, opened first if it is not: whether the lease is
/// still there.
async fn renew(
    client: &mut etcd_client::Client,
    lease: i64,
    stream: &mut Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
) -> Result<bool, etcd_client::Error> {
    let Some((keeper, renewals)) = stream.as_mut() else {
        // Opening the stream sends a keepalive and takes its answer: that is the renewal.
        return match client.lease_keep_alive(lease).await {
            Ok(opened) => {
                *stream = Some(opened);
                Ok(true)
            }
            Err(e) if fleet_registry::lease_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    keeper.keep_alive().await?;
    match renewals.message().await? {
        Some(r) => Ok(r.ttl() > 0),
        None => Err(etcd_client::Error::LeaseKeepAliveError(
            "keepalive stream closed".into(),
        )),
    }
}
