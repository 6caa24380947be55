//! The agent: makes this machine's systemd run what the cluster placed here, and reports what
//! systemd really does.
//!
//! It watches only this machine's placements and the global units, reacts to systemd's signals,
//! and keeps a slow full resync as a safety net. Decisions are made by [`plan::plan`] (pure);
//! this module executes them and publishes unit states on the machine's lease.
//!
//! systemd is reached through [`UnitManager`]: the real [`Systemd`] in fleetd, a simulated one
//! only in `fleet-sim`'s hollow machines.
//!
//! What happens to the machine and its units is recorded as events ([`Recorder`]): a start
//! that failed, the machine fencing itself (recorded while etcd does not answer, written when
//! it does) and coming back.

pub mod job;
pub mod plan;
pub mod systemd;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_registry::{
    AgentSnapshot, AgentView, Event, EventKind, JobState, MachineId, PresenceStatus, Recorder,
    Refreshed, Registry, UnitState,
};
use fleet_units::{UnitFile, UnitHash, UnitName, UnitOption};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;

use job::{Job, JobKind};
use plan::{Action, Desired, Local};
pub use systemd::{Signal, Systemd, SystemdError, SystemdState, UnitManager};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where unit files are written before they are linked into systemd.
    pub units_directory: PathBuf,
    /// Period of the full resync that backs up watches and signals.
    pub resync_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error("cannot use the units directory {path}: {source}")]
    UnitsDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A unit this agent has loaded.
#[derive(Debug, Clone)]
struct LocalUnit {
    hash: UnitHash,
    /// What the agent has asked of systemd: `Launched` once it queued a start.
    state: JobState,
    /// What systemd has done, as published: `Launched` once a start job finished.
    reported: JobState,
    /// The start or stop job the agent waits for.
    job: Option<Job>,
    /// Why the last start failed, if it did.
    start_failure: Option<String>,
    global: bool,
    /// Its `[X-Fleet] HealthCheck` command, and what it said last and when it ran.
    health_check: Option<String>,
    health: Option<String>,
    health_at: Option<Instant>,
}

impl LocalUnit {
    fn new(hash: UnitHash, state: JobState, global: bool) -> LocalUnit {
        LocalUnit {
            hash,
            state,
            reported: state,
            job: None,
            start_failure: None,
            global,
            health_check: None,
            health: None,
            health_at: None,
        }
    }

    /// With the health check `file` declares, if any.
    fn checked(mut self, name: &UnitName, file: &UnitFile) -> LocalUnit {
        self.health_check = fleet_units::Requirements::from_unit(name, file)
            .ok()
            .and_then(|(req, _)| req.health_check);
        self
    }
}

/// How often a unit's health check runs while the unit is active.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How long a health check may run before it counts as failing.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How many start or stop calls the agent has in flight at once: enough that systemd never
/// waits for the agent. (Their signals are read while they are waited for: `reading_signals`.)
const JOBS_AT_ONCE: usize = 64;

/// How soon the agent looks again at a unit the engine took off this machine that systemd is
/// still stopping.
const STOPPING_LOOK_AGAIN: Duration = Duration::from_millis(200);

/// A unit file operation, which systemd takes for many units in one call.
#[derive(Clone, Copy)]
enum FileOp {
    Link,
    Enable,
    Unlink,
}

impl FileOp {
    fn describe(self) -> &'static str {
        match self {
            FileOp::Link => "linking",
            FileOp::Enable => "enabling",
            FileOp::Unlink => "unlinking",
        }
    }
}

/// The pause before a failed publication of unit states is tried again, doubling with each
/// failure in a row up to [`PUBLISH_RETRY_MAX`].
const PUBLISH_RETRY: Duration = Duration::from_millis(500);
const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(8);

/// A share in [0, 1) that `machine`'s id picks (FNV-1a), the same on every run.
fn machine_share(machine: &MachineId) -> f64 {
    let hash = machine
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % 1000) as f64 / 1000.0
}

/// What woke the agent up.
#[derive(Clone, Copy)]
enum Wake {
    /// The cluster's desired state may have changed (the view has the changes): reconcile.
    Registry,
    /// The full resync period passed: read the desired state again, then reconcile.
    Resync,
    /// systemd reported a change, or a started unit has settled: publish states again.
    Systemd,
}

type Signals = BoxStream<'static, Signal>;

/// How many held signals' room is kept once they are taken in.
const HELD_KEPT: usize = 1024;

/// systemd's signals, and those read while a call was waited for, not yet taken in.
struct SignalReader {
    stream: Signals,
    held: VecDeque<Signal>,
}

/// Waits for `call` while reading systemd's signals into `held`, in the order they came.
/// zbus stops reading the connection while the signal stream's queue (4,096) is full, so a
/// call that makes more signals than that before its reply (a daemon-reload after thousands of
/// units were unloaded, thousands of start or stop calls) would never get its reply: the
/// agent hung, its units left as they were. Draining only between calls cannot help a single
/// call.
async fn reading_signals<F: std::future::Future>(
    signals: &mut Option<std::sync::Mutex<SignalReader>>,
    call: F,
) -> F::Output {
    let Some(reader) = signals.as_mut().and_then(|m| m.get_mut().ok()) else {
        return call.await;
    };
    let SignalReader { stream, held } = reader;
    tokio::pin!(call);
    loop {
        tokio::select! {
            biased;
            out = &mut call => return out,
            Some(signal) = stream.next() => held.push_back(signal),
        }
    }
}

pub struct Agent<M = Systemd> {
    registry: Registry,
    machine: MachineId,
    systemd: M,
    config: AgentConfig,
    local: BTreeMap<UnitName, LocalUnit>,
    /// States as last published, and the lease they were published on.
    published: BTreeMap<UnitName, UnitState>,
    published_lease: Option<i64>,
    /// The revision each of this machine's states in etcd was last written at, what each
    /// write of a state is conditioned on (`Registry::publish_states_over`); `None` when not
    /// known (before the first read on a lease, and after a write that failed, which etcd may
    /// still apply). Read again then, with the states a previous run left, which go.
    revisions: Option<BTreeMap<UnitName, i64>>,
    /// After a failed publication: when to try again, and the pause after the next failure.
    publish_again: Option<Instant>,
    publish_pause: Duration,
    /// Publish again without waiting: systemd changed something during the last read.
    look_again: bool,
    /// A unit the engine took off this machine is still stopping: look again shortly.
    still_stopping: bool,
    /// When to read the desired state from etcd again rather than trust the view, however
    /// busy the agent is.
    next_resync: Instant,
    /// systemd's signals, if they can be followed (else the resync does the work). Only used
    /// through `&mut self` (`Mutex::get_mut`, no locking): the mutex only makes the agent `Sync`.
    signals: Option<std::sync::Mutex<SignalReader>>,
    /// Records what happens here as events.
    events: Recorder,
    /// Whether this machine has fenced itself and not yet come back.
    fenced: bool,
}

impl Agent<Systemd> {
    /// Connects to systemd and takes stock of the units a previous run left loaded, so that a
    /// restart of fleetd does not restart them.
    pub async fn new(
        registry: Registry,
        machine: MachineId,
        config: AgentConfig,
    ) -> Result<Agent, AgentError> {
        let systemd = Systemd::connect().await?;
        Agent::with_manager(registry, machine, config, systemd).await
    }
}

impl<M: UnitManager> Agent<M> {
    /// [`Agent::new`] with `systemd` as this machine's systemd.
    pub async fn with_manager(
        registry: Registry,
        machine: MachineId,
        config: AgentConfig,
        systemd: M,
    ) -> Result<Agent<M>, AgentError> {
        std::fs::create_dir_all(&config.units_directory).map_err(|source| {
            AgentError::UnitsDirectory {
                path: config.units_directory.clone(),
                source,
            }
        })?;
        let next_resync = Instant::now() + config.resync_interval;
        let events = Recorder::start(registry.clone(), machine.clone());
        let mut agent = Agent {
            registry,
            machine,
            systemd,
            config,
            local: BTreeMap::new(),
            published: BTreeMap::new(),
            published_lease: None,
            revisions: None,
            publish_again: None,
            publish_pause: PUBLISH_RETRY,
            look_again: false,
            still_stopping: false,
            next_resync,
            signals: None,
            events,
            fenced: false,
        };
        agent.recover().await?;
        Ok(agent)
    }

    async fn recover(&mut self) -> Result<(), AgentError> {
        let dir = &self.config.units_directory;
        let entries = std::fs::read_dir(dir).map_err(|source| AgentError::UnitsDirectory {
            path: dir.clone(),
            source,
        })?;
        let mut found = BTreeMap::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| UnitName::parse(n).ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(file) = UnitFile::parse(&text) else {
                tracing::warn!(unit = %name, "ignoring unreadable unit file left by a previous run");
                continue;
            };
            found.insert(name, file);
        }
        let names: Vec<&str> = found.keys().map(|n| n.as_str()).collect();
        let states = self.systemd.states(&names).await?;
        for (name, file) in found {
            let running = states.get(name.as_str()).is_some_and(|s| s.is_running());
            let state = if running {
                JobState::Launched
            } else {
                JobState::Loaded
            };
            let local = LocalUnit::new(file.hash(), state, fleet_units::is_global(&file))
                .checked(&name, &file);
            self.local.insert(name, local);
        }
        if !self.local.is_empty() {
            tracing::info!(
                units = self.local.len(),
                "recovered units of a previous run"
            );
        }
        Ok(())
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self, mut presence: watch::Receiver<PresenceStatus>) {
        self.signals = match self.systemd.changes().await {
            Ok(stream) => Some(std::sync::Mutex::new(SignalReader {
                stream,
                held: VecDeque::new(),
            })),
            Err(e) => {
                tracing::error!(error = %e, "cannot follow systemd's signals; relying on resync");
                None
            }
        };
        // What this machine must run: read once, then kept from the watch's events. Read
        // again at each full resync, keeping the watch; dropped after an error.
        let mut view: Option<AgentView> = None;
        let mut wake = Wake::Registry;
        loop {
            let status = *presence.borrow_and_update();
            self.record_fencing(status);
            match (status, wake) {
                (PresenceStatus::Fenced, _) => {
                    view = None;
                    // Nothing is published while fenced: a retry due would wake the loop
                    // again at once, for nothing, until the machine is back.
                    self.publish_again = None;
                    self.publish_pause = PUBLISH_RETRY;
                    self.fence().await;
                }
                (PresenceStatus::Alive { lease }, Wake::Registry | Wake::Resync) => {
                    if let (Wake::Resync, Some(v)) = (wake, view.as_mut()) {
                        match v.refresh().await {
                            Ok(Refreshed::Same) => {}
                            // A change on its way, or one the watch missed: a new watch, so
                            // that one that misses changes is not kept.
                            Ok(Refreshed::Differed) => {
                                tracing::info!(
                                    "placements read again differ from the watch's: watching afresh"
                                );
                                view = None;
                            }
                            // The view is still kept from its watch: try again at the next.
                            Err(e) => {
                                tracing::warn!(error = %e, "agent cannot read its placements again");
                            }
                        }
                    }
                    let current = match view.as_mut() {
                        Some(v) => Ok(v),
                        None => self
                            .registry
                            .agent_view(&self.machine)
                            .await
                            .map(|v| view.insert(v)),
                    };
                    match current {
                        Ok(v) => {
                            self.reconcile(v.snapshot()).await;
                            self.publish(lease).await;
                        }
                        Err(e) => {
                            // Not reachable: leave the units as they are.
                            tracing::warn!(error = %e, "agent cannot read its placements");
                        }
                    }
                }
                (PresenceStatus::Alive { lease }, Wake::Systemd) => self.publish(lease).await,
            }
            if let (PresenceStatus::Alive { .. }, Some(v)) = (status, view.as_ref()) {
                if !v.snapshot().stopping.is_empty() {
                    let stopping = v.snapshot().stopping.clone();
                    self.release_stopped(&stopping).await;
                }
            }
            wake = self.wait(&mut view, &mut presence).await;
        }
    }

    async fn wait(
        &mut self,
        view: &mut Option<AgentView>,
        presence: &mut watch::Receiver<PresenceStatus>,
    ) -> Wake {
        if std::mem::take(&mut self.look_again) {
            return Wake::Systemd;
        }
        // Signals read while a call was waited for, before any new one: a change of systemd's
        // like one that comes now, weighed fairly against the other wake-ups below (returning
        // at once would keep a busy systemd ahead of placements for as long as it is busy).
        let held = self.take_signals();
        let ours = object_paths(&self.local);
        // A started unit that is settling is looked at again when its time is up (not sooner
        // than in a few milliseconds, so that a deadline left behind by a failed read of
        // systemd's states cannot spin this loop).
        let now = Instant::now();
        let settled = self
            .local
            .values()
            .filter_map(|l| l.job.as_ref()?.settle_until)
            // A unit whose states are held back while its job runs, when the hold ends.
            .chain(
                self.local
                    .values()
                    .filter_map(|l| Some(l.job.as_ref()?.hold_until()))
                    .filter(|t| *t > now),
            )
            // A health check due is looked at the same way.
            .chain(
                self.local
                    .values()
                    .filter(|l| l.health_check.is_some())
                    .filter_map(|l| l.health_at.map(|at| at + HEALTH_EVERY)),
            )
            .min()
            .map(|t| t.max(Instant::now() + Duration::from_millis(5)));
        let local = &mut self.local;
        let signals = self.signals.as_mut().and_then(|m| m.get_mut().ok());
        let registry_change = async {
            match view.as_mut() {
                Some(v) => v.changed().await,
                None => {
                    // No view: retry soon.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(())
                }
            }
        };
        let systemd_change = async {
            if held {
                return;
            }
            match signals {
                Some(s) => loop {
                    match s.stream.next().await {
                        Some(signal) if concerns(local, &ours, &signal) => return,
                        Some(_) => {}
                        None => std::future::pending::<()>().await,
                    }
                },
                None => std::future::pending().await,
            }
        };
        let settle = async {
            match settled {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let publish_again = async {
            match self.publish_again {
                Some(t) => {
                    tokio::time::sleep_until(t.max(now + Duration::from_millis(5)).into()).await
                }
                None => std::future::pending().await,
            }
        };
        let stopping = async {
            if std::mem::take(&mut self.still_stopping) {
                tokio::time::sleep(STOPPING_LOOK_AGAIN).await
            } else {
                std::future::pending().await
            }
        };
        let wake = tokio::select! {
            result = registry_change => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "agent watch ended; resynchronising");
                    *view = None;
                }
                Wake::Registry
            }
            _ = systemd_change => {
                // Let a burst of signals settle into one state read.
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.take_signals();
                Wake::Systemd
            }
            _ = settle => Wake::Systemd,
            _ = publish_again => Wake::Systemd,
            _ = stopping => Wake::Systemd,
            _ = presence.changed() => Wake::Registry,
            _ = tokio::time::sleep_until(self.next_resync.into()) => {
                self.next_resync = Instant::now() + self.config.resync_interval;
                Wake::Resync
            }
        };
        // The held signals' change is looked at next, whatever woke the agent now.
        if held && !matches!(wake, Wake::Systemd) {
            self.look_again = true;
        }
        wake
    }

    /// Brings systemd in line with the placements and global units in `snapshot`.
    async fn reconcile(&mut self, snapshot: &AgentSnapshot) {
        let metadata = snapshot
            .machine
            .as_ref()
            .map(|m| m.metadata.clone())
            .unwrap_or_default();
        let mut candidates = Vec::new();
        for p in &snapshot.placements {
            candidates.push((
                plan::Candidate {
                    name: &p.name,
                    options: &p.options,
                    global: false,
                },
                p.desired_state,
            ));
        }
        for u in &snapshot.global_units {
            if u.desired_state != JobState::Inactive {
                candidates.push((
                    plan::Candidate {
                        name: &u.name,
                        // A rolling update's version on this machine, if one applies.
                        options: snapshot.global_options(u),
                        global: true,
                    },
                    u.desired_state,
                ));
            }
        }
        let states: BTreeMap<&UnitName, JobState> =
            candidates.iter().map(|(c, s)| (c.name, *s)).collect();
        let only: Vec<plan::Candidate<'_>> = candidates.iter().map(|(c, _)| c.clone()).collect();
        let sources: BTreeMap<UnitName, (Vec<UnitOption>, JobState, bool)> =
            plan::select(&metadata, &only)
                .into_iter()
                .map(|c| {
                    let state = states.get(c.name).copied().unwrap_or(JobState::Loaded);
                    (c.name.clone(), (c.options.to_vec(), state, c.global))
                })
                .collect();
        self.converge(&sources).await;
    }

    /// Records this machine fencing itself, and coming back: in the journal at once, in etcd
    /// as soon as it answers.
    fn record_fencing(&mut self, status: PresenceStatus) {
        let fenced = matches!(status, PresenceStatus::Fenced);
        if fenced == self.fenced {
            return;
        }
        self.fenced = fenced;
        let event = if fenced {
            let stopping = self.local.values().filter(|l| !l.global).count();
            Event::new(
                EventKind::Fenced,
                format!(
                    "cannot renew its lease, which may expire: stopping its non-global units \
                     ({stopping})"
                ),
            )
        } else {
            Event::new(
                EventKind::Unfenced,
                "renews its lease again: runs what is placed on it",
            )
        };
        self.events.record(event.machine(&self.machine));
    }

    /// Self-fencing: this machine's lease may be gone, so its units may already run elsewhere.
    /// Stop and unload every non-global unit; global units keep running.
    async fn fence(&mut self) {
        let keep: BTreeMap<UnitName, (Vec<UnitOption>, JobState, bool)> = BTreeMap::new();
        let globals: Vec<UnitName> = self
            .local
            .iter()
            .filter(|(_, l)| l.global)
            .map(|(n, _)| n.clone())
            .collect();
        if self.local.len() == globals.len() {
            return;
        }
        tracing::warn!("fenced: stopping this machine's non-global units");
        let desired: BTreeMap<UnitName, Desired> = self
            .local
            .iter()
            .filter(|(_, l)| l.global)
            .map(|(n, l)| {
                (
                    n.clone(),
                    Desired {
                        hash: l.hash,
                        state: l.state,
                    },
                )
            })
            .collect();
        self.execute(&desired, &keep).await;
        self.published.clear();
        self.published_lease = None;
        self.revisions = None;
    }

    async fn converge(&mut self, sources: &BTreeMap<UnitName, (Vec<UnitOption>, JobState, bool)>) {
        let desired: BTreeMap<UnitName, Desired> = sources
            .iter()
            .map(|(name, (options, state, _))| {
                (
                    name.clone(),
                    Desired {
                        hash: UnitFile::from_options(options.clone()).hash(),
                        state: *state,
                    },
                )
            })
            .collect();
        self.execute(&desired, sources).await;
    }

    async fn execute(
        &mut self,
        desired: &BTreeMap<UnitName, Desired>,
        sources: &BTreeMap<UnitName, (Vec<UnitOption>, JobState, bool)>,
    ) {
        let local: BTreeMap<UnitName, Local> = self
            .local
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    Local {
                        hash: l.hash,
                        state: l.state,
                    },
                )
            })
            .collect();
        let new: Vec<&str> = desired
            .keys()
            .filter(|n| !self.local.contains_key(*n))
            .map(|n| n.as_str())
            .collect();
        let preloaded = match reading_signals(&mut self.signals, self.systemd.states(&new)).await {
            Ok(states) => states
                .into_iter()
                .filter(|(_, s)| s.load == "loaded")
                .filter_map(|(n, _)| UnitName::parse(&n).ok())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read unit states from systemd");
                BTreeSet::new()
            }
        };
        let mut actions = plan::plan(desired, &local, &preloaded)
            .into_iter()
            .peekable();
        while let Some(action) = actions.next() {
            let what = action.describe();
            let Some(first) = action.unit().cloned() else {
                // A daemon-reload.
                tracing::info!("{what}");
                if let Err(e) =
                    reading_signals(&mut self.signals, self.systemd.daemon_reload()).await
                {
                    tracing::error!(error = %e, "{what} failed");
                }
                self.drain_signals();
                continue;
            };
            // A run of actions of one kind goes to systemd together: unit file operations in
            // one call (each call costs systemd milliseconds whatever it carries; disabling,
            // tens), jobs as calls sent without waiting for each answer.
            let kind = std::mem::discriminant(&action);
            let mut names = vec![first];
            while let Some(next) = actions.next_if(|a| std::mem::discriminant(a) == kind) {
                names.extend(next.unit().cloned());
            }
            for name in &names {
                tracing::info!(unit = %name, "{what}");
            }
            match action {
                Action::Load(_) => self.load(&names, desired, sources).await,
                Action::Unload(_) => self.unload(&names).await,
                Action::Start(_) => self.queue_jobs(JobKind::Start, &names, what).await,
                Action::Stop(_) => self.queue_jobs(JobKind::Stop, &names, what).await,
                Action::ReloadDaemon => {}
            }
            self.drain_signals();
        }
    }

    /// Takes in the signals that have arrived, remembering to look again if one concerns this
    /// agent's units: after every call or group of calls, in order, keeping what they said
    /// (those that came while a call was waited for were read then: `reading_signals`).
    fn drain_signals(&mut self) {
        if self.take_signals() {
            self.look_again = true;
        }
    }

    /// Queues start or stop jobs for `names`, [`JOBS_AT_ONCE`] calls in flight at a time:
    /// each call waiting for the answer of the one before made systemd wait on the agent. A
    /// group's answers are all recorded before the signals that came meanwhile are read, so a
    /// job's `JobRemoved` is still taken in after its path is known.
    async fn queue_jobs(&mut self, kind: JobKind, names: &[UnitName], what: &str) {
        for group in names.chunks(JOBS_AT_ONCE) {
            let systemd = &self.systemd;
            let calls = futures_util::future::join_all(group.iter().map(|name| async move {
                match kind {
                    JobKind::Start => systemd.start(name.as_str()).await,
                    JobKind::Stop => systemd.stop(name.as_str()).await,
                }
            }));
            let answers = reading_signals(&mut self.signals, calls).await;
            for (name, answer) in group.iter().zip(answers) {
                self.record_job(kind, name, &answer);
                if let Err(e) = answer {
                    tracing::error!(unit = %name, error = %e, "{what} failed");
                }
            }
            self.drain_signals();
        }
    }

    /// What a start or stop call answered: the job to follow, or (for a start) the refusal
    /// as the start's failure. Like fleet, the agent does not retry a start: the unit's state
    /// shows what happened.
    fn record_job(
        &mut self,
        kind: JobKind,
        name: &UnitName,
        answer: &Result<String, SystemdError>,
    ) {
        let Some(l) = self.local.get_mut(name) else {
            return;
        };
        match (kind, answer) {
            (JobKind::Stop, Ok(path)) => {
                l.state = JobState::Loaded;
                l.job = Some(Job::new(JobKind::Stop, path.clone(), Instant::now()));
            }
            (JobKind::Stop, Err(_)) => {
                l.state = JobState::Loaded;
                l.job = None;
                l.reported = JobState::Loaded;
            }
            (JobKind::Start, Ok(path)) => {
                l.state = JobState::Launched;
                l.job = Some(Job::new(JobKind::Start, path.clone(), Instant::now()));
                l.start_failure = None;
            }
            (JobKind::Start, Err(e)) => {
                l.state = JobState::Launched;
                l.job = None;
                l.reported = JobState::Launched;
                l.start_failure = Some(e.to_string());
                start_failed(&self.events, &self.machine, name, &e.to_string());
            }
        }
    }

    /// Writes and links the unit files of `names`, linking them all in one call (one at a
    /// time if that call fails, to tell which). A unit whose file could not be written or
    /// linked stays unknown here, so the next pass tries it again.
    async fn load(
        &mut self,
        names: &[UnitName],
        desired: &BTreeMap<UnitName, Desired>,
        sources: &BTreeMap<UnitName, (Vec<UnitOption>, JobState, bool)>,
    ) {
        // Each unit written, with its file's path: what systemd links.
        let mut written: Vec<(UnitName, String)> = Vec::new();
        let mut installable = BTreeSet::new();
        let mut files: BTreeMap<UnitName, UnitFile> = BTreeMap::new();
        for name in names {
            let Some((options, _, _)) = sources.get(name) else {
                continue;
            };
            let file = UnitFile::from_options(options.clone());
            files.insert(name.clone(), file.clone());
            let path = self.unit_path(name);
            if let Err(source) = write_atomically(&path, file.to_canonical_string().as_bytes()) {
                let e = AgentError::UnitsDirectory { path, source };
                tracing::error!(unit = %name, error = %e, "loading failed");
                continue;
            }
            if file.has_section("Install") {
                installable.insert(name.clone());
            }
            written.push((name.clone(), path.to_string_lossy().into_owned()));
        }
        let linked = self.each_or_all(&written, FileOp::Link).await;
        let to_enable: Vec<(UnitName, String)> = written
            .iter()
            .filter(|(n, _)| installable.contains(n) && linked.contains(n))
            .cloned()
            .collect();
        let enabled = self.each_or_all(&to_enable, FileOp::Enable).await;
        for (name, _) in &written {
            let (Some((_, _, global)), Some(want)) = (sources.get(name), desired.get(name)) else {
                continue;
            };
            if linked.contains(name) && (!installable.contains(name) || enabled.contains(name)) {
                // New content is loaded, not started: `launched` waits for its start job.
                let mut local = LocalUnit::new(want.hash, JobState::Loaded, *global);
                if let Some(file) = files.get(name) {
                    local = local.checked(name, file);
                }
                self.local.insert(name.clone(), local);
            }
        }
    }

    /// Unlinks the units of `names` in one call (one at a time if that fails) and removes
    /// their files.
    async fn unload(&mut self, names: &[UnitName]) {
        let all: Vec<(UnitName, String)> = names
            .iter()
            .map(|n| (n.clone(), n.as_str().to_string()))
            .collect();
        // A unit that cannot be unlinked is forgotten all the same, as before: its file goes.
        self.each_or_all(&all, FileOp::Unlink).await;
        for name in names {
            let path = self.unit_path(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    let e = AgentError::UnitsDirectory { path, source };
                    tracing::error!(unit = %name, error = %e, "unloading failed");
                    continue;
                }
            }
            self.local.remove(name);
        }
    }

    /// Runs `op` on all of `items`' arguments (a unit and the argument for it) in one call;
    /// if that fails, on each alone, logging each failure. The units for which it succeeded.
    async fn each_or_all(
        &mut self,
        items: &[(UnitName, String)],
        op: FileOp,
    ) -> BTreeSet<UnitName> {
        if items.is_empty() {
            return BTreeSet::new();
        }
        let args: Vec<&str> = items.iter().map(|(_, a)| a.as_str()).collect();
        if self.file_op(op, &args).await.is_ok() {
            return items.iter().map(|(n, _)| n.clone()).collect();
        }
        let mut done = BTreeSet::new();
        for (name, arg) in items {
            match self.file_op(op, &[arg.as_str()]).await {
                Ok(()) => {
                    done.insert(name.clone());
                }
                Err(e) => tracing::error!(unit = %name, error = %e, "{} failed", op.describe()),
            }
        }
        done
    }

    async fn file_op(&mut self, op: FileOp, args: &[&str]) -> Result<(), SystemdError> {
        let systemd = &self.systemd;
        let call = async move {
            match op {
                FileOp::Link => systemd.link(args).await,
                FileOp::Enable => systemd.enable(args).await,
                FileOp::Unlink => systemd.unlink(args).await,
            }
        };
        reading_signals(&mut self.signals, call).await
    }

    fn unit_path(&self, name: &UnitName) -> PathBuf {
        // A UnitName cannot contain '/' nor be "." or "..": this stays inside the directory.
        self.config.units_directory.join(name.as_str())
    }

    /// Publishes the systemd state of every local unit that changed since last time, on `lease`,
    /// and removes the states of units no longer here. Each write is conditioned on the
    /// revision the agent knows its key at: a write that timed out may still be applied, and
    /// must not replace a later one when it is (a unit shown `loaded` while it runs). A
    /// failed publication is tried again soon, not at the next change or resync.
    async fn publish(&mut self, lease: i64) {
        if self.published_lease != Some(lease) {
            self.published.clear();
            self.revisions = None;
            self.published_lease = Some(lease);
        }
        let Some(states) = self.read_states().await else {
            self.publish_later();
            return;
        };
        self.follow_jobs(&states).await;
        self.check_health(&states).await;
        let mut revisions = match self.revisions.take() {
            Some(r) => r,
            None => match self.registry.state_revisions(&self.machine).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read this machine's unit states");
                    self.publish_failed();
                    return;
                }
            },
        };
        // Written in batches: a machine starting hundreds of units at once publishes them
        // together. The steps of a job that ends soon are not published (`job::PUBLISH_HOLD`).
        let now = Instant::now();
        let mut changed = Vec::new();
        for (name, local) in &self.local {
            let Some(s) = states.get(name.as_str()) else {
                continue;
            };
            if local.job.as_ref().is_some_and(|j| now < j.hold_until()) {
                continue;
            }
            let state = UnitState {
                name: name.clone(),
                hash: local.hash,
                machine_id: self.machine.clone(),
                job_state: local.reported,
                systemd_load_state: s.load.clone(),
                systemd_active_state: s.active.clone(),
                systemd_sub_state: s.sub.clone(),
                start_failure: local.start_failure.clone(),
                health: local.health.clone(),
            };
            if self.published.get(name) != Some(&state) {
                let over = revisions.get(name).copied().unwrap_or(0);
                changed.push((state, over));
            }
        }
        let mut failed = false;
        if !changed.is_empty() {
            match self.registry.publish_states_over(lease, &changed).await {
                Ok(written) => {
                    for ((state, _), revision) in changed.into_iter().zip(written) {
                        revisions.insert(state.name.clone(), revision);
                        self.published.insert(state.name.clone(), state);
                    }
                }
                Err(e) => {
                    tracing::warn!(units = changed.len(), error = %e, "cannot publish unit states");
                    for (state, _) in &changed {
                        self.published.remove(&state.name);
                    }
                    failed = true;
                }
            }
        }
        // Units no longer here, and states a previous run left (read with the revisions).
        let gone: Vec<(UnitName, i64)> = revisions
            .iter()
            .filter(|(name, _)| !self.local.contains_key(*name))
            .map(|(name, revision)| (name.clone(), *revision))
            .collect();
        if !failed && !gone.is_empty() {
            match self.registry.remove_states_at(&self.machine, &gone).await {
                Ok(()) => {
                    for (name, _) in &gone {
                        revisions.remove(name);
                        self.published.remove(name);
                    }
                }
                Err(e) => {
                    tracing::warn!(units = gone.len(), error = %e, "cannot remove unit states");
                    failed = true;
                }
            }
        }
        if failed {
            self.publish_failed();
        } else {
            self.revisions = Some(revisions);
            self.publish_again = None;
            self.publish_pause = PUBLISH_RETRY;
        }
    }

    /// A write of states failed: what etcd holds is no longer known (etcd may still apply
    /// it), so the revisions are read again before the next.
    fn publish_failed(&mut self) {
        self.revisions = None;
        self.publish_later();
    }

    /// Publishes again after a pause that doubles with each failure in a row, up to
    /// [`PUBLISH_RETRY_MAX`], each lengthened by up to half that the machine's id picks: when
    /// etcd falls behind, every machine's writes fail at once, and must not all come back
    /// together.
    fn publish_later(&mut self) {
        let share = machine_share(&self.machine);
        let pause = self.publish_pause + self.publish_pause.mul_f64(share / 2.0);
        self.publish_again = Some(Instant::now() + pause);
        self.publish_pause = (self.publish_pause * 2).min(PUBLISH_RETRY_MAX);
    }

    /// Tells the engine which units it took off this machine are stopped, so that it places
    /// them elsewhere: those this agent no longer has loaded and systemd no longer runs
    /// (inactive, failed, or unknown to it). One still stopping (`deactivating`) is looked at
    /// again in [`STOPPING_LOOK_AGAIN`].
    async fn release_stopped(&mut self, stopping: &BTreeMap<UnitName, i64>) {
        let gone: Vec<&str> = stopping
            .keys()
            .filter(|n| !self.local.contains_key(*n))
            .map(|n| n.as_str())
            .collect();
        // A name loaded here as a global unit runs as one: the placement it left is not its.
        let mut stopped: Vec<UnitName> = stopping
            .keys()
            .filter(|n| self.local.get(*n).is_some_and(|l| l.global))
            .cloned()
            .collect();
        if !gone.is_empty() {
            let states = match reading_signals(&mut self.signals, self.systemd.states(&gone)).await
            {
                Ok(states) => states,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the states of units moving away");
                    self.still_stopping = true;
                    return;
                }
            };
            let (down, running): (Vec<&str>, Vec<&str>) = gone.into_iter().partition(|name| {
                states
                    .get(*name)
                    .is_none_or(|s| matches!(s.active.as_str(), "inactive" | "failed"))
            });
            self.still_stopping = !running.is_empty();
            // Still running though this agent no longer has it (a stop call that failed, a
            // start by a dependency): stop it, or it would never be free to run elsewhere.
            for name in running {
                if states.get(name).is_some_and(|s| s.active != "deactivating") {
                    tracing::warn!(unit = %name, "still running after it was unloaded: stopping it");
                    if let Err(e) =
                        reading_signals(&mut self.signals, self.systemd.stop(name)).await
                    {
                        tracing::error!(unit = %name, error = %e, "stopping failed");
                    }
                }
            }
            stopped.extend(down.into_iter().filter_map(|n| UnitName::parse(n).ok()));
        }
        if stopped.is_empty() {
            return;
        }
        // Each record as the view has it: a release applied late must not remove a later one.
        let records: Vec<(UnitName, i64)> = stopped
            .iter()
            .filter_map(|name| Some((name.clone(), *stopping.get(name)?)))
            .collect();
        match self
            .registry
            .release_stopping(&self.machine, &records)
            .await
        {
            Ok(()) => {
                for name in &stopped {
                    tracing::info!(unit = %name, "stopped here: free to run elsewhere");
                }
            }
            Err(e) => {
                tracing::warn!(units = stopped.len(), error = %e, "cannot say units stopped");
                self.still_stopping = true;
            }
        }
    }

    /// Runs the health checks that are due, all at once, of the units systemd reports active
    /// (`states`); forgets the verdict of a unit that is not active.
    async fn check_health(&mut self, states: &BTreeMap<String, SystemdState>) {
        let now = Instant::now();
        let mut due: Vec<(UnitName, String)> = Vec::new();
        for (name, local) in &mut self.local {
            let Some(command) = &local.health_check else {
                continue;
            };
            let active = states
                .get(name.as_str())
                .is_some_and(|s| s.active == "active");
            if !active {
                local.health = None;
                local.health_at = None;
                continue;
            }
            if local.health_at.is_none_or(|at| now >= at + HEALTH_EVERY) {
                due.push((name.clone(), command.clone()));
            }
        }
        if due.is_empty() {
            return;
        }
        let verdicts =
            futures_util::future::join_all(due.iter().map(|(_, command)| health_check(command)))
                .await;
        for ((name, _), verdict) in due.into_iter().zip(verdicts) {
            if let Some(local) = self.local.get_mut(&name) {
                if local.health.as_deref() != Some(verdict.as_str()) {
                    tracing::info!(unit = %name, health = %verdict, "health check");
                }
                local.health = Some(verdict);
                local.health_at = Some(now);
            }
        }
    }

    /// Takes in the signals read while calls were waited for, then those that have arrived
    /// since, in order: whether one concerns this agent's units.
    fn take_signals(&mut self) -> bool {
        let Some(reader) = self.signals.as_mut().and_then(|m| m.get_mut().ok()) else {
            return false;
        };
        let ours = object_paths(&self.local);
        let mut concerned = false;
        while let Some(signal) = reader.held.pop_front() {
            concerned |= concerns(&mut self.local, &ours, &signal);
        }
        // A burst of thousands leaves no lasting allocation behind.
        reader.held.shrink_to(HELD_KEPT);
        while let Some(Some(signal)) = reader.stream.next().now_or_never() {
            concerned |= concerns(&mut self.local, &ours, &signal);
        }
        concerned
    }

    /// systemd's states of this agent's units, read when no signal about them arrived during
    /// the read: systemd sends a job's `JobRemoved` before it answers a later call, so the
    /// result of every job the read shows finished has been taken in (see `Job::finished`), and
    /// no change after the read goes unnoticed. If systemd keeps changing, the last read is
    /// used and the agent looks again at once.
    async fn read_states(&mut self) -> Option<BTreeMap<String, SystemdState>> {
        let names: Vec<String> = self.local.keys().map(|n| n.to_string()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut attempts = 0;
        loop {
            let states = match reading_signals(&mut self.signals, self.systemd.states(&names)).await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read unit states from systemd");
                    return None;
                }
            };
            attempts += 1;
            if !self.take_signals() {
                return Some(states);
            }
            if attempts == 3 {
                self.look_again = true;
                return Some(states);
            }
        }
    }

    /// Moves on the jobs the agent waits for, given systemd's `states`: a finished stop makes
    /// the unit `loaded`; a finished start makes it `launched`, once it has stayed active for
    /// [`job::START_SETTLE`] if it is a service started as soon as forked, and records why it
    /// failed if it did.
    async fn follow_jobs(&mut self, states: &BTreeMap<String, SystemdState>) {
        let now = Instant::now();
        let names: Vec<UnitName> = self
            .local
            .iter()
            .filter(|(_, l)| l.job.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(state) = states.get(name.as_str()) else {
                continue;
            };
            let Some(job) = self.local.get(&name).and_then(|l| l.job.clone()) else {
                continue;
            };
            let service = name.as_str().ends_with(".service");
            let active = job::is_active(&state.active);
            let done = match (job.kind, job.settle_until) {
                (JobKind::Stop, _) => job.finished(state.job.as_deref()).then_some(None),
                (JobKind::Start, Some(until)) if active && now < until => None,
                (JobKind::Start, Some(_)) => Some(self.start_failure(&name, &job, state).await),
                (JobKind::Start, None) if !job.finished(state.job.as_deref()) => None,
                (JobKind::Start, None) if service && active && !job.failed() => {
                    match reading_signals(
                        &mut self.signals,
                        self.systemd.service_type(name.as_str()),
                    )
                    .await
                    {
                        Ok(t) if job::settles(&t) => {
                            if let Some(j) = self.local.get_mut(&name).and_then(|l| l.job.as_mut())
                            {
                                j.settle_until = Some(now + job::START_SETTLE);
                            }
                            None
                        }
                        Ok(_) => Some(None),
                        Err(e) => {
                            tracing::warn!(unit = %name, error = %e, "cannot read the service's type");
                            Some(None)
                        }
                    }
                }
                (JobKind::Start, None) => Some(self.start_failure(&name, &job, state).await),
            };
            let (Some(failure), Some(local)) = (done, self.local.get_mut(&name)) else {
                continue;
            };
            local.job = None;
            match job.kind {
                JobKind::Stop => {
                    tracing::info!(unit = %name, active = %state.active, "stopped");
                    local.reported = JobState::Loaded;
                }
                JobKind::Start => {
                    match &failure {
                        Some(why) => start_failed(&self.events, &self.machine, &name, why),
                        None => {
                            tracing::info!(unit = %name, active = %state.active, sub = %state.sub, "started")
                        }
                    }
                    local.reported = JobState::Launched;
                    local.start_failure = failure;
                }
            }
        }
    }

    /// Why a finished start of `name` failed, if it did.
    async fn start_failure(
        &mut self,
        name: &UnitName,
        job: &Job,
        state: &SystemdState,
    ) -> Option<String> {
        let run = if name.as_str().ends_with(".service") && !job::is_active(&state.active) {
            match reading_signals(&mut self.signals, self.systemd.service_run(name.as_str())).await
            {
                Ok(run) => Some(run),
                Err(e) => {
                    tracing::warn!(unit = %name, error = %e, "cannot read how the service ran");
                    None
                }
            }
        } else {
            None
        };
        job::start_failure(job, &state.active, &state.sub, run.as_ref())
    }
}

/// systemd's object paths of the agent's units, to tell their signals apart.
fn object_paths(local: &BTreeMap<UnitName, LocalUnit>) -> BTreeSet<String> {
    local
        .keys()
        .map(|n| systemd::unit_object_path(n.as_str()))
        .collect()
}

/// Whether a signal from systemd concerns this agent's units; a job result is recorded.
fn concerns(
    local: &mut BTreeMap<UnitName, LocalUnit>,
    ours: &BTreeSet<String>,
    signal: &Signal,
) -> bool {
    match signal {
        Signal::Changed(path) => ours.contains(path),
        Signal::JobRemoved { .. } => record_job_result(local, signal),
    }
}

/// Records the result of a job the agent waits for; `true` if it was one.
fn record_job_result(local: &mut BTreeMap<UnitName, LocalUnit>, signal: &Signal) -> bool {
    let Signal::JobRemoved { job, unit, result } = signal else {
        return false;
    };
    let waiting = UnitName::parse(unit)
        .ok()
        .and_then(|n| local.get_mut(&n))
        .and_then(|l| l.job.as_mut())
        .filter(|j| j.path == *job);
    match waiting {
        Some(j) => {
            j.result = Some(result.clone());
            true
        }
        None => false,
    }
}

fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// Runs a health check: `ok` when `command` (with `/bin/sh -c`) exits 0 within
/// [`HEALTH_TIMEOUT`], otherwise `failing: ` and why (its exit status and the last line it
/// wrote on stderr, or the time out).
async fn health_check(command: &str) -> String {
    let run = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(HEALTH_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => "ok".to_string(),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            match last {
                Some(line) => format!("failing: {}: {}", out.status, line.trim()),
                None => format!("failing: {}", out.status),
            }
        }
        Ok(Err(e)) => format!("failing: cannot run it: {e}"),
        Err(_) => format!("failing: no answer within {} s", HEALTH_TIMEOUT.as_secs()),
    }
}

/// Records that a start of `name` on `machine` failed, and why.
fn start_failed(events: &Recorder, machine: &MachineId, name: &UnitName, why: &str) {
    events.record(
        Event::new(EventKind::StartFailed, why)
            .unit(name)
            .machine(machine),
    );
}

#[cfg(test)]
mod signal_tests {
    use super::*;

    /// A connection like zbus's: the signals go through a queue that holds only a few, and
    /// the reply to a call comes after all the signals the call caused, so it arrives only if
    /// the signals are read meanwhile.
    fn connection(signals: usize) -> (SignalReader, tokio::sync::oneshot::Receiver<&'static str>) {
        let (queue, mut received) = tokio::sync::mpsc::channel::<Signal>(4);
        let (reply, answer) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            for n in 0..signals {
                if queue
                    .send(Signal::Changed(format!("/unit/{n}")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = reply.send("reloaded");
        });
        let stream = futures_util::stream::poll_fn(move |cx| received.poll_recv(cx)).boxed();
        let reader = SignalReader {
            stream,
            held: VecDeque::new(),
        };
        (reader, answer)
    }

    #[tokio::test]
    async fn a_call_that_makes_more_signals_than_the_queue_holds_gets_its_reply() {
        let (reader, answer) = connection(100);
        let mut signals = Some(std::sync::Mutex::new(reader));
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            reading_signals(&mut signals, answer),
        )
        .await
        .expect("the reply came")
        .expect("the connection answered");
        assert_eq!(reply, "reloaded");
        // Those read meanwhile, then those still queued (as `take_signals` takes them in).
        let reader = signals.as_mut().unwrap().get_mut().unwrap();
        let mut held: Vec<Signal> = reader.held.drain(..).collect();
        while let Some(Some(signal)) = reader.stream.next().now_or_never() {
            held.push(signal);
        }
        let expected: Vec<Signal> = (0..100)
            .map(|n| Signal::Changed(format!("/unit/{n}")))
            .collect();
        assert_eq!(held, expected, "every signal kept, in order");
    }

    #[tokio::test]
    async fn without_reading_the_signals_the_reply_never_comes() {
        // What the agent did before: the test above is not passing by accident.
        let (_reader, answer) = connection(100);
        assert!(tokio::time::timeout(Duration::from_millis(500), answer)
            .await
            .is_err());
    }
}
