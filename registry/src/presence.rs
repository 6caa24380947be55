//! A machine's presence: its record on one lease, kept alive by one keepalive stream, and the
//! decision to fence when renewals fail.
//!
//! Idle cost per machine is one keepalive every third of the TTL, however many units the machine
//! runs: its unit states hang on the same lease.
//!
//! When renewals fail, the machine keeps its units past its lease's possible expiry only while a
//! majority of the cluster's members confirm that they cannot renew theirs either (etcd is down
//! for everyone, or for most): [`fleet_quorum::Guard`], with the members asked through a
//! [`Witness`] (the peer endpoint). Without a witness it fences when its lease may expire.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use fleet_quorum::{Guard, Timing, Verdict};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};

use crate::{encode, Error, Machine, MachineId, Member, Registry, Result};

/// Asks the cluster's other members about their leases, over the peer endpoint.
pub trait Witness: Send + Sync + 'static {
    /// For each of `members` that answers within `timeout`: how long it has had no renewal of
    /// its lease acknowledged ([`Liveness::since_renewal`]).
    fn since_renewal(
        &self,
        members: Vec<Machine>,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<Duration>>;

    /// Which of `members` renewed their lease on request and said so within `timeout`
    /// ([`Liveness::renew_now`]).
    fn renew_now(
        &self,
        members: Vec<Machine>,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<MachineId>>;
}

/// What this machine tells its peers about its lease. Exists from fleetd's start, before the
/// machine is registered, since the peer endpoint answers from then on. Cheap to clone.
#[derive(Clone)]
pub struct Liveness {
    inner: Arc<LivenessInner>,
}

struct LivenessInner {
    started: Instant,
    /// Until registered, and from a fence until the next renewal: the machine may have been
    /// declared dead and dropped from the members, so it must count for nobody's majority.
    fenced: std::sync::atomic::AtomicBool,
    last_ack: Mutex<Option<Instant>>,
    renew: mpsc::Sender<oneshot::Sender<bool>>,
    requests: Mutex<Option<mpsc::Receiver<oneshot::Sender<bool>>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new()
    }
}

impl Liveness {
    pub fn new() -> Liveness {
        let (renew, requests) = mpsc::channel(16);
        Liveness {
            inner: Arc::new(LivenessInner {
                started: Instant::now(),
                fenced: std::sync::atomic::AtomicBool::new(true),
                last_ack: Mutex::new(None),
                renew,
                requests: Mutex::new(Some(requests)),
            }),
        }
    }

    /// What this machine answers a peer asking whether it is cut off from etcd: how long no
    /// renewal of its lease has been acknowledged (counted from this process's start if none
    /// was: it knows nothing of earlier ones, and so says less), or zero while it is not
    /// registered or has fenced ([`fleet_quorum::Guard::answer`]).
    pub fn since_renewal(&self) -> Duration {
        if self.inner.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Duration::ZERO;
        }
        self.own_since_renewal()
    }

    /// How long no renewal of this machine's lease has been acknowledged, fenced or not.
    fn own_since_renewal(&self) -> Duration {
        let last = self.last_ack().unwrap_or(self.inner.started);
        last.elapsed()
    }

    fn set_fenced(&self, fenced: bool) {
        self.inner
            .fenced
            .store(fenced, std::sync::atomic::Ordering::Relaxed);
    }

    fn last_ack(&self) -> Option<Instant> {
        *self
            .inner
            .last_ack
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn acked(&self) {
        *self
            .inner
            .last_ack
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Renews the lease now; whether etcd acknowledged it. Before this machine is registered a
    /// request waits for the registration (16 at most; more are answered false at once): the
    /// caller bounds the wait with its own timeout.
    pub async fn renew_now(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.inner.renew.try_send(tx).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    fn take_requests(&self) -> Option<mpsc::Receiver<oneshot::Sender<bool>>> {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Whether this machine is kept from registering by another live fleetd registered with the
/// same machine id. fleet's API answered 503 ("fleet server unable to communicate with etcd")
/// until its fleetd registered; the API reads this to do the same in that case. Cheap to
/// clone; shared between the presence that sets it and the API that reads it.
#[derive(Clone, Default)]
pub struct Registration {
    duplicate: Arc<std::sync::atomic::AtomicBool>,
}

impl Registration {
    pub fn new() -> Registration {
        Registration::default()
    }

    /// True from the moment registering found the machine id live elsewhere until this
    /// machine registers.
    pub fn blocked_by_duplicate(&self) -> bool {
        self.duplicate.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_blocked_by_duplicate(&self, blocked: bool) {
        self.duplicate
            .store(blocked, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How a [`Presence`] runs besides its machine and TTL.
#[derive(Default)]
pub struct PresenceOptions {
    /// Where the lease is remembered across fleetd restarts.
    pub lease_file: Option<PathBuf>,
    /// This machine's answers to its peers (a fresh one when absent).
    pub liveness: Option<Liveness>,
    /// How to ask the other members; without one, the machine fences when its lease may
    /// expire, whatever the others see.
    pub witness: Option<Arc<dyn Witness>>,
    /// Where to say that another live fleetd holds this machine id.
    pub registration: Option<Registration>,
}

/// What the rest of fleetd needs to know about this machine's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceStatus {
    /// The lease is held; keys may be attached to it.
    Alive { lease: i64 },
    /// The lease could not be renewed before it would expire: other machines may already be
    /// running this machine's units, so it must stop them (self-fencing).
    Fenced,
}

/// A registered machine. Dropping it stops the keepalive (the lease then expires by itself;
/// fleetd does not revoke it on shutdown, so that a restarted fleetd can take it back).
pub struct Presence {
    status: watch::Receiver<PresenceStatus>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Presence {
    /// Registers `machine` and keeps it alive. Waits (logging why) while another live fleetd
    /// holds the same machine id. `lease_file` remembers the lease across fleetd restarts, so
    /// a restart within the TTL does not look like a dead machine.
    pub async fn start(
        registry: Registry,
        machine: Machine,
        ttl: Duration,
        lease_file: Option<PathBuf>,
    ) -> Result<Presence> {
        let options = PresenceOptions {
            lease_file,
            ..PresenceOptions::default()
        };
        Presence::start_with(registry, machine, ttl, options).await
    }

    /// [`Presence::start`], answering peers through `options.liveness` and asking them through
    /// `options.witness` before fencing.
    pub async fn start_with(
        registry: Registry,
        machine: Machine,
        ttl: Duration,
        options: PresenceOptions,
    ) -> Result<Presence> {
        // Within what etcd grants, which also keeps the timer arithmetic below from overflowing.
        let ttl_secs = ttl.as_secs().clamp(2, MAX_LEASE_TTL_SECS) as i64;
        let lease_file = options.lease_file;
        let liveness = options.liveness.unwrap_or_default();
        let registration = options.registration.unwrap_or_default();
        let (lease, view, sent) = register_until_done(
            &registry,
            &machine,
            ttl_secs,
            lease_file.as_ref(),
            &registration,
        )
        .await?;
        liveness.acked();
        liveness.set_fenced(false);
        let timing = Timing::for_ttl(Duration::from_secs(ttl_secs as u64), registry.timeout);
        let origin = liveness.inner.started;
        let guard = Arc::new(Mutex::new(Guard::new(timing, sent.duration_since(origin))));
        let (tx, rx) = watch::channel(PresenceStatus::Alive { lease });
        // Only a machine that asks the members (through a witness) counts over its reading of
        // them; one that does not keeps none (fleet-sim runs thousands in one process, and each
        // reading holds every member).
        let keeps_view = options.witness.is_some();
        let members = Arc::new(Mutex::new(Readings::adopt(if keeps_view {
            view
        } else {
            Vec::new()
        })));
        let recording = Arc::new(tokio::sync::Mutex::new(()));
        let mut tasks = vec![tokio::spawn(keep_alive(KeepAlive {
            registry: registry.clone(),
            machine: machine.clone(),
            ttl: ttl_secs,
            lease_file,
            lease,
            status: tx.clone(),
            guard: guard.clone(),
            liveness: liveness.clone(),
            requests: liveness.take_requests(),
            members: members.clone(),
            keeps_view,
            recording: recording.clone(),
        }))];
        if let Some(witness) = options.witness {
            tasks.push(tokio::spawn(follow_members(
                registry,
                machine.clone(),
                members.clone(),
                recording,
            )));
            tasks.push(tokio::spawn(guard_loop(
                machine.id, guard, members, witness, liveness, tx,
            )));
        } else {
            tasks.push(tokio::spawn(guard_loop_alone(guard, origin, tx)));
        }
        Ok(Presence { status: rx, tasks })
    }

    pub fn status(&self) -> PresenceStatus {
        *self.status.borrow()
    }

    /// A receiver that sees every change of status.
    pub fn subscribe(&self) -> watch::Receiver<PresenceStatus> {
        self.status.clone()
    }
}

async fn register_until_done(
    registry: &Registry,
    machine: &Machine,
    ttl: i64,
    lease_file: Option<&PathBuf>,
    registration: &Registration,
) -> Result<(i64, Vec<Machine>, Instant)> {
    let mut warned = false;
    loop {
        let sent = Instant::now();
        // Nothing counts over a reading before this returns: one a failed attempt may have
        // recorded is replaced by the successful one's.
        match register(registry, machine, ttl, lease_file)
            .await
            .map_err(|f| f.error)
        {
            Ok((lease, view)) => {
                registration.set_blocked_by_duplicate(false);
                return Ok((lease, view, sent));
            }
            Err(Error::DuplicateMachine(id)) => {
                registration.set_blocked_by_duplicate(true);
                if !warned {
                    tracing::error!(
                        machine = %id,
                        "another live fleetd is registered with this machine id; waiting for its lease to expire"
                    );
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) if e.is_unavailable() || matches!(e, Error::OutOfSpace { .. }) => {
                tracing::warn!(error = %e, "cannot register this machine yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One registration attempt (the lease's time runs from when it was sent): take back the
/// lease of a previous run if the record still hangs on it, else create the record on a new
/// lease unless a live record exists. Either way the member record is written in the same
/// transaction, with the members read just before: the view this machine then counts its
/// majorities over, returned with the lease.
async fn register(
    registry: &Registry,
    machine: &Machine,
    ttl: i64,
    lease_file: Option<&PathBuf>,
) -> std::result::Result<(i64, Vec<Machine>), Failed> {
    let key = registry.machine_key(&machine.id);
    // Metadata set through the API outlives registrations.
    let mut machine = machine.clone();
    for (k, v) in registry.metadata_overrides(&machine.id).await? {
        match v {
            Some(v) => machine.metadata.insert(k, v),
            None => machine.metadata.remove(&k),
        };
    }
    let value = encode(&machine);
    let (seen_revision, entries) = registry.cluster_members().await?;
    let view = view_with(&machine, entries.into_iter().map(|e| e.member.machine));
    let member = Member {
        machine: machine.clone(),
        seen_revision,
        seen_members: view.len(),
    };
    let member_put = || TxnOp::put(registry.member_key(&machine.id), encode(&member), None);
    // Whether a write of the member record failed without an answer (etcd may have applied it).
    let mut unanswered = false;
    let failed = |error: Error, unanswered: bool| Failed {
        error,
        maybe: unanswered.then(|| view.clone()),
    };
    if let Some(previous) = lease_file.and_then(read_lease) {
        let txn = Txn::new()
            .when(vec![Compare::lease(
                key.clone(),
                CompareOp::Equal,
                previous,
            )])
            .and_then(vec![
                TxnOp::put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(previous)),
                ),
                member_put(),
            ]);
        // The put fails if the lease expired meanwhile; then register afresh.
        match registry.txn(txn).await {
            Ok(resp) if resp.succeeded() => {
                // Renewed at once: the lease may be about to expire, and the guard counts its
                // TTL from this registration.
                let renewed = renew_once(registry, previous)
                    .await
                    .map_err(|e| failed(e, true))?;
                if renewed {
                    tracing::info!(lease = previous, "took back the lease of the previous run");
                    return Ok((previous, view));
                }
                unanswered = true;
            }
            Ok(_) => {}
            Err(_) => unanswered = true,
        }
    }
    let mut lease_client = registry.lease_client();
    let grant = registry
        .timed(lease_client.grant(ttl, None))
        .await
        .map_err(|e| failed(e, unanswered))?;
    let lease = grant.id();
    let txn = Txn::new()
        .when(vec![Compare::version(key.clone(), CompareOp::Equal, 0)])
        .and_then(vec![
            TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
            member_put(),
        ])
        .or_else(vec![TxnOp::get(key.clone(), None)]);
    let resp = registry.txn(txn).await.map_err(|e| failed(e, true))?;
    if !resp.succeeded() {
        let _ = registry.timed(lease_client.revoke(lease)).await;
        tracing::debug!("machine key is held");
        return Err(failed(
            Error::DuplicateMachine(machine.id.clone()),
            unanswered,
        ));
    }
    if let Some(path) = lease_file {
        if let Err(e) = write_lease(path, lease) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remember the lease");
        }
    }
    tracing::info!(machine = %machine.id, lease, ttl, "registered machine");
    Ok((lease, view))
}

/// A registration that failed, and the reading of the members it may have recorded all the
/// same (a write of the member record that failed without an answer, or that was applied
/// before the registration failed).
struct Failed {
    error: Error,
    maybe: Option<Vec<Machine>>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed { error, maybe: None }
    }
}

/// One keepalive of `lease`: whether etcd renewed it (false when it is gone).
async fn renew_once(registry: &Registry, lease: i64) -> Result<bool> {
    let mut renewer = Renewer { stream: None };
    Ok(renewer.renew(registry, lease).await? > 0)
}

/// The members read, with this machine among them (as itself).
fn view_with(me: &Machine, read: impl Iterator<Item = Machine>) -> Vec<Machine> {
    let mut view: Vec<Machine> = read.filter(|m| m.id != me.id).collect();
    view.push(me.clone());
    view.sort_by(|a, b| a.id.cmp(&b.id));
    view
}

fn read_lease(path: &PathBuf) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_lease(path: &PathBuf, lease: i64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{lease}\n"))
}

struct KeepAlive {
    registry: Registry,
    machine: Machine,
    ttl: i64,
    lease_file: Option<PathBuf>,
    lease: i64,
    status: watch::Sender<PresenceStatus>,
    guard: Arc<Mutex<Guard>>,
    liveness: Liveness,
    /// Renewals asked for by peers (the engine of another machine counting who is connected).
    requests: Option<mpsc::Receiver<oneshot::Sender<bool>>>,
    /// The members this machine counts its majorities over.
    members: Arc<Mutex<Readings>>,
    /// Whether `members` is kept (only with a witness).
    keeps_view: bool,
    /// Held while a reading of the members is recorded and adopted, so that the member record
    /// and `members` never disagree.
    recording: Arc<tokio::sync::Mutex<()>>,
}

/// Renews the lease every third of its TTL, and at once when a peer asks. When the lease is
/// found gone (etcd says TTL 0), registers again on a new one. Fencing is the guard loop's.
async fn keep_alive(mut k: KeepAlive) {
    let period = Duration::from_millis((k.ttl as u64 * 1000) / 3);
    let origin = k.liveness.inner.started;
    let mut monitor = Monitor::new(Duration::from_secs(k.ttl as u64));
    let mut renewer = Renewer { stream: None };
    let mut asked: Vec<oneshot::Sender<bool>> = Vec::new();
    loop {
        let sent = Instant::now();
        // While the lease is at risk, an attempt stuck on a connection etcd no longer answers
        // must not hold up the next one (confirmations lapse meanwhile).
        let (at_risk, ask_every) = {
            let guard = lock(&k.guard);
            (
                guard.at_risk(sent.duration_since(origin)),
                guard.timing().ask_every(),
            )
        };
        let attempt = renewer.renew(&k.registry, k.lease);
        let outcome = if at_risk {
            match tokio::time::timeout(2 * ask_every, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    renewer.stream = None;
                    Err(Error::Timeout(2 * ask_every))
                }
            }
        } else {
            attempt.await
        };
        let renewed = match outcome {
            Ok(remaining) if remaining > 0 => {
                k.liveness.acked();
                lock(&k.guard).renewed(sent.duration_since(origin));
                k.liveness.set_fenced(false);
                k.status.send_if_modified(|s| {
                    let next = PresenceStatus::Alive { lease: k.lease };
                    let changed = *s != next;
                    if changed {
                        tracing::info!(lease = k.lease, "lease renewed");
                    }
                    *s = next;
                    changed
                });
                true
            }
            Ok(_) => {
                // Gone while a majority confirmed being cut off too: the engine cannot have
                // declared this machine dead, and it must register again before it can.
                // Otherwise (revoked, or etcd lost it) its units may already run elsewhere.
                let confirmed =
                    lock(&k.guard).verdict(sent.duration_since(origin)) == Verdict::Confirmed;
                if confirmed {
                    tracing::warn!(lease = k.lease, "this machine's lease expired while etcd was out of reach of most machines; registering again");
                } else {
                    tracing::warn!(
                        lease = k.lease,
                        "this machine's lease expired; fencing and registering again"
                    );
                    lock(&k.guard).fence();
                    k.liveness.set_fenced(true);
                    k.status.send_replace(PresenceStatus::Fenced);
                }
                let recording = k.recording.clone();
                let _recording = recording.lock().await;
                match register(&k.registry, &k.machine, k.ttl, k.lease_file.as_ref()).await {
                    Ok((new_lease, view)) => {
                        k.lease = new_lease;
                        if k.keeps_view {
                            *lock(&k.members) = Readings::adopt(view);
                        }
                        k.liveness.acked();
                        lock(&k.guard).renewed(sent.duration_since(origin));
                        k.liveness.set_fenced(false);
                        k.status
                            .send_replace(PresenceStatus::Alive { lease: k.lease });
                        true
                    }
                    Err(Failed { error, maybe }) => {
                        tracing::warn!(error = %error, "cannot register again yet");
                        if let (true, Some(view)) = (k.keeps_view, maybe) {
                            lock(&k.members).doubt(view);
                        }
                        false
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew this machine's lease");
                false
            }
        };
        if renewed {
            monitor.renewed();
        } else if monitor.failed(k.liveness.own_since_renewal()) {
            tracing::error!(
                "Server monitor triggered: Monitor timed out before successful heartbeat (no renewal of this machine's lease acknowledged for {:.1}s; retrying)",
                k.liveness.own_since_renewal().as_secs_f64()
            );
        }
        for reply in asked.drain(..) {
            let _ = reply.send(renewed);
        }
        let pause = match (renewed, at_risk) {
            (true, _) => period,
            (false, true) => ask_every,
            (false, false) => RETRY_PAUSE,
        };
        let next = tokio::time::sleep(pause);
        tokio::select! {
            _ = next => {}
            Some(reply) = async {
                match k.requests.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => asked.push(reply),
        }
    }
}

/// When fleet's server monitor would have triggered, for the log line operators grep for
/// ("Server monitor triggered: Monitor timed out before successful heartbeat"). fleet's
/// monitor beat the heart and gave up when no beat succeeded within a third of the TTL; here
/// a renewal is due a third of the TTL after the last acknowledged one, so the monitor
/// triggers once renewals have failed for a third of the TTL past that: two thirds of the TTL
/// without an acknowledged renewal. Once per episode: again only after a renewal succeeded.
#[derive(Debug)]
struct Monitor {
    deadline: Duration,
    triggered: bool,
}

impl Monitor {
    fn new(ttl: Duration) -> Monitor {
        Monitor {
            deadline: ttl * 2 / 3,
            triggered: false,
        }
    }

    /// After a renewal failed, `since_ack` after the last acknowledged one: whether the
    /// monitor triggers now.
    fn failed(&mut self, since_ack: Duration) -> bool {
        if self.triggered || since_ack < self.deadline {
            return false;
        }
        self.triggered = true;
        true
    }

    fn renewed(&mut self) {
        self.triggered = false;
    }
}

/// The readings of the members this machine counts its majorities over: the one its member
/// record holds, and those whose recording failed without an answer. etcd may have applied
/// such a write all the same, and then the engine, judging this machine, counts over that
/// reading instead: until a recording succeeds (the record is then the reading it wrote), a
/// majority must be a majority of every reading it may hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Readings {
    /// The last reading recorded for sure.
    adopted: Vec<Machine>,
    /// Readings written since, whose writes failed without saying whether etcd applied them.
    in_doubt: Vec<Vec<Machine>>,
}

impl Readings {
    fn adopt(reading: Vec<Machine>) -> Readings {
        Readings {
            adopted: reading,
            in_doubt: Vec::new(),
        }
    }

    fn doubt(&mut self, reading: Vec<Machine>) {
        if reading != self.adopted && !self.in_doubt.contains(&reading) {
            self.in_doubt.push(reading);
        }
    }

    /// The members to ask, and how many members a majority is counted over: with readings in
    /// doubt, only the members in all of them, over the largest. A majority of that count
    /// among them is then a majority of each reading, whichever the record holds.
    fn to_ask(&self) -> (Vec<Machine>, usize) {
        let mut asked = self.adopted.clone();
        let mut counted = self.adopted.len();
        for reading in &self.in_doubt {
            asked.retain(|m| reading.iter().any(|r| r.id == m.id));
            counted = counted.max(reading.len());
        }
        (asked, counted)
    }
}

/// Follows the cluster's members (for whom to ask and how many make a majority). A new reading
/// is recorded in this machine's member record before it is counted over, so that the engine,
/// judging this machine, counts over no more members than it does.
async fn follow_members(
    registry: Registry,
    me: Machine,
    members: Arc<Mutex<Readings>>,
    recording: Arc<tokio::sync::Mutex<()>>,
) {
    loop {
        let held = recording.lock().await;
        let read = registry.cluster_members().await;
        let revision = match read {
            Ok((revision, entries)) => {
                let view = view_with(&me, entries.into_iter().map(|e| e.member.machine));
                let ids = |v: &[Machine]| v.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
                let unsure = {
                    let readings = lock(&members);
                    ids(&view) != ids(&readings.adopted) || !readings.in_doubt.is_empty()
                };
                if unsure {
                    let member = Member {
                        machine: me.clone(),
                        seen_revision: revision,
                        seen_members: view.len(),
                    };
                    match registry.record_reading(&member).await {
                        Ok(true) => *lock(&members) = Readings::adopt(view),
                        Ok(false) => tracing::debug!(
                            "not a member (declared dead): keeping the members as they were"
                        ),
                        Err(e) => {
                            // Without an answer, etcd may have recorded it all the same.
                            lock(&members).doubt(view);
                            tracing::debug!(error = %e, "cannot record the members read");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
                revision
            }
            Err(e) => {
                drop(held);
                tracing::debug!(error = %e, "cannot read the members");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        drop(held);
        match registry
            .watch(&registry.members_watch_prefixes(), revision + 1)
            .await
        {
            Ok(mut changes) => {
                let _ = changes.next().await;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Reports `Fenced` when the guard says so: the lease may have expired and no majority of the
/// members confirms being cut off from etcd too.
///
/// Rounds of questions go out every [`Timing::ask_every`] while the lease is at risk, each in
/// a task of its own: a round waits up to [`Timing::peer_timeout`] for a slow member, and the
/// next one must not wait for it (one slow answer would otherwise leave a confirmation to lapse
/// with no round behind it). The loop looks again as soon as a round is recorded and at each of
/// the guard's deadlines, so that it fences the moment a confirmation lapses.
async fn guard_loop(
    me: MachineId,
    guard: Arc<Mutex<Guard>>,
    members: Arc<Mutex<Readings>>,
    witness: Arc<dyn Witness>,
    liveness: Liveness,
    status: watch::Sender<PresenceStatus>,
) {
    let origin = liveness.inner.started;
    let timing = *lock(&guard).timing();
    let mut last_sent: Option<Duration> = None;
    let mut was = Verdict::Renewing;
    // Dropped with the loop, which aborts the rounds still out.
    let mut rounds: tokio::task::JoinSet<Option<Round>> = tokio::task::JoinSet::new();
    loop {
        let now = origin.elapsed();
        if lock(&guard).should_ask(now, last_sent) {
            last_sent = Some(now);
            let (known, counted) = lock(&members).to_ask();
            let count = counted + usize::from(!known.iter().any(|m| m.id == me));
            let others: Vec<Machine> = known.into_iter().filter(|m| m.id != me).collect();
            let own_since = liveness.own_since_renewal();
            let asking = witness.since_renewal(others, timing.peer_timeout);
            rounds.spawn(async move {
                let answers = asking.await;
                // A round that took longer than the bound (this machine stalled, say) counts
                // for nothing: answers later than `peer_timeout` are outside the argument.
                (origin.elapsed().saturating_sub(now) <= timing.peer_timeout).then_some(Round {
                    sent_at: now,
                    own_since,
                    answers,
                    members: count,
                })
            });
        }
        // Decided and reported under the guard's lock, so that a renewal recorded meanwhile
        // is not followed by a stale `Fenced`.
        let (verdict, next_change) = {
            let mut guard = lock(&guard);
            let now = origin.elapsed();
            let verdict = guard.verdict(now);
            liveness.set_fenced(guard.fenced());
            fence_if(verdict, &status);
            (verdict, guard.next_change(now))
        };
        if verdict != was {
            match verdict {
                Verdict::Confirmed => tracing::warn!(
                    "etcd is out of reach of a majority of the machines: keeping this machine's units"
                ),
                Verdict::Ask => tracing::warn!(
                    "lease renewals failing: asking the other machines whether they reach etcd"
                ),
                _ => {}
            }
            was = verdict;
        }
        let mut wake = origin.elapsed() + timing.ask_every();
        if let Some(at) = next_change {
            wake = wake.min(at);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(origin + wake) => {}
            Some(done) = rounds.join_next() => {
                match done {
                    Ok(Some(round)) => {
                        let confirmed = lock(&guard).round(
                            round.sent_at,
                            round.own_since,
                            &round.answers,
                            round.members,
                        );
                        if !confirmed && verdict == Verdict::Confirmed {
                            tracing::info!(
                                answers = ?round.answers,
                                members = round.members,
                                "a round of questions did not confirm"
                            );
                        }
                    }
                    Ok(None) if verdict == Verdict::Confirmed => tracing::info!(
                        "a round of questions took longer than {:?}: not counted",
                        timing.peer_timeout
                    ),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "a round of questions ended"),
                }
            }
        }
    }
}

/// The answers to one round of questions, sent at `sent_at` (since the liveness's origin).
struct Round {
    sent_at: Duration,
    /// How long this machine had had no renewal acknowledged when the round was sent.
    own_since: Duration,
    answers: Vec<Duration>,
    /// Every member counted, this machine included.
    members: usize,
}

/// The guard loop of a machine that asks nobody: it fences when its lease may expire.
async fn guard_loop_alone(
    guard: Arc<Mutex<Guard>>,
    origin: Instant,
    status: watch::Sender<PresenceStatus>,
) {
    loop {
        let verdict = lock(&guard).verdict(origin.elapsed());
        fence_if(verdict, &status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fence_if(verdict: Verdict, status: &watch::Sender<PresenceStatus>) {
    if verdict == Verdict::Fence && *status.borrow() != PresenceStatus::Fenced {
        tracing::error!(
            "Server monitor triggered: lease about to expire without renewal, and no majority of machines is cut off from etcd too: fencing this machine"
        );
        status.send_replace(PresenceStatus::Fenced);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The longest lease TTL etcd grants (its `MaxLeaseTTL`).
const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;

/// The pause between two failed renewals.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The one keepalive stream of this machine, opened again after an error.
struct Renewer {
    /// The lease, the endpoint the stream was opened on, and the stream.
    stream: Option<(i64, usize, LeaseKeeper, LeaseKeepAliveStream)>,
}

impl Renewer {
    /// One keepalive round trip; the remaining TTL in seconds, 0 when the lease is gone.
    async fn renew(&mut self, registry: &Registry, lease: i64) -> Result<i64> {
        let result = self.try_renew(registry, lease).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn try_renew(&mut self, registry: &Registry, lease: i64) -> Result<i64> {
        if !matches!(&self.stream, Some((l, _, _, _)) if *l == lease) {
            let (endpoint, mut lease_client) = registry.lease_client_at();
            let opened = registry
                .timed_on(endpoint, lease_client.keep_alive(lease))
                .await;
            // etcd-client reports a lease that is already gone as an error when the stream is
            // opened (on an open stream, as a TTL of 0): both mean "register again".
            if let Err(Error::Etcd(etcd_client::Error::LeaseKeepAliveError(message))) = &opened {
                if message.contains("lease not found") {
                    return Ok(0);
                }
            }
            let (keeper, stream) = opened?;
            self.stream = Some((lease, endpoint, keeper, stream));
        }
        let Some((_, endpoint, keeper, stream)) = self.stream.as_mut() else {
            return Err(Error::Protocol("no keepalive stream".into()));
        };
        let endpoint = *endpoint;
        registry.timed_on(endpoint, keeper.keep_alive()).await?;
        match registry.timed_on(endpoint, stream.message()).await? {
            Some(resp) => Ok(resp.ttl()),
            None => Err(Error::Protocol("keepalive stream closed".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitor_triggers_once_per_episode_of_failed_renewals() {
        let ttl = Duration::from_secs(30);
        let mut monitor = Monitor::new(ttl);
        let s = Duration::from_secs;
        // Renewals due every 10 s: failing attempts before 20 s without one acknowledged
        // are not yet fleet's timed-out heartbeat.
        for since in [s(10), s(12), s(19)] {
            assert!(!monitor.failed(since), "{since:?}");
        }
        // Then it triggers, once, however many attempts fail after.
        assert!(monitor.failed(s(20)));
        for since in [s(21), s(25), s(40), s(300)] {
            assert!(!monitor.failed(since), "{since:?}");
        }
        // A renewal ends the episode; the next one triggers again.
        monitor.renewed();
        assert!(!monitor.failed(s(5)));
        assert!(monitor.failed(s(21)));
        assert!(!monitor.failed(s(22)));
    }

    fn machines(ids: &[u8]) -> Vec<Machine> {
        ids.iter()
            .map(|n| Machine {
                id: MachineId::parse(&format!("{n:032x}")).unwrap(),
                public_ip: format!("10.0.0.{n}"),
                metadata: Default::default(),
                version: String::new(),
                peer_address: None,
            })
            .collect()
    }

    /// The case a recording that failed without an answer opens: adopted {1,2,3}, while the
    /// record may say {1,2,3,4,5}. Cut off from etcd with 2 only, machine 1 must not count
    /// {1,2} a majority: the engine may count 3, 4 and 5 renewing, a majority of the record.
    #[test]
    fn a_reading_in_doubt_counts_until_a_recording_succeeds() {
        let mut readings = Readings::adopt(machines(&[1, 2, 3]));
        assert_eq!(readings.to_ask(), (machines(&[1, 2, 3]), 3));
        readings.doubt(machines(&[1, 2, 3, 4, 5]));
        // Only members of both are asked, counted over the larger: 1 and 2 answering cut off
        // make 2 of 5, not a majority; 1, 2 and 3 make one of either reading.
        assert_eq!(readings.to_ask(), (machines(&[1, 2, 3]), 5));
        readings.doubt(machines(&[1, 2, 4]));
        assert_eq!(readings.to_ask(), (machines(&[1, 2]), 5));
        // The adopted reading itself is no doubt; a recording that succeeds ends them all.
        readings.doubt(machines(&[1, 2, 3]));
        assert_eq!(readings.in_doubt.len(), 2);
        readings = Readings::adopt(machines(&[1, 2, 3, 4]));
        assert_eq!(readings.to_ask(), (machines(&[1, 2, 3, 4]), 4));
    }
}
