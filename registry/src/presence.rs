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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use fleet_quorum::{Guard, Timing, Verdict};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};

use crate::watch::{Change, Changes};
use crate::{
    encode, key_machine_id, lock, member_entry_of, Error, Machine, MachineId, Member, Recorded,
    Registry, Result,
};

/// Asks the cluster's other members about their leases, over the peer endpoint.
pub trait Witness: Send + Sync + 'static {
    /// For each of `members` that answers within `timeout`: how long it has had no renewal of
    /// its lease acknowledged ([`Liveness::answer_peer`]).
    fn since_renewal(
        &self,
        members: Vec<Machine>,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<Duration>>;

    /// Which of `members` renewed their lease on request and said so within `timeout`
    /// ([`Liveness::renew_now`]), each with how long it had answered no peer's question
    /// ([`Liveness::quiet_for`]).
    fn renew_now(
        &self,
        members: Vec<Machine>,
        timeout: Duration,
    ) -> BoxFuture<'static, Vec<Renewal>>;
}

/// A member's renewal of its lease on request, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    pub machine: MachineId,
    /// How long the member had answered no peer's question with anything but zero when it
    /// answered ([`Liveness::quiet_for`]); `None` if it did not say (an older fleetd), which
    /// counts as not quiet ([`fleet_quorum::Round::Quiet`]).
    pub quiet_for: Option<Duration>,
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
    /// When this machine last answered a peer's question with anything but zero.
    last_answered: Mutex<Option<Instant>>,
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
                last_answered: Mutex::new(None),
                renew,
                requests: Mutex::new(Some(requests)),
            }),
        }
    }

    /// What this machine answers a peer asking whether it is cut off from etcd: how long no
    /// renewal of its lease has been acknowledged (counted from this process's start if none
    /// was: it knows nothing of earlier ones, and so says less), or zero while it is not
    /// registered or has fenced ([`fleet_quorum::Guard::answer`]). Remembers when it answered
    /// anything but zero, for [`Liveness::quiet_for`].
    pub fn answer_peer(&self) -> Duration {
        // Decided and recorded under the lock `quiet_for` takes: an answer is either counted by
        // a `quiet_for` or decided after it, and so after every renewal acknowledged before it.
        let mut last_answered = lock(&self.inner.last_answered);
        if self.inner.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let since = self.own_since_renewal();
        if since > Duration::ZERO {
            *last_answered = Some(Instant::now());
        }
        since
    }

    /// How long this machine has answered no peer's question with anything but zero (counted
    /// from this process's start if it never did: it knows nothing of what an earlier process
    /// answered). The engine shortens its wait before it declares a lost machine dead only if
    /// a majority that renewed on request say they have been quiet long enough: none of them
    /// can then have helped confirm that the lost machine may keep its units (`fleet-quorum`).
    pub fn quiet_for(&self) -> Duration {
        lock(&self.inner.last_answered)
            .unwrap_or(self.inner.started)
            .elapsed()
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
        *lock(&self.inner.last_ack)
    }

    fn acked(&self) {
        *lock(&self.inner.last_ack) = Some(Instant::now());
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
        lock(&self.inner.requests).take()
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
        // Only a machine that asks the members (through a witness) counts over its reading of
        // them; one that does not keeps none (fleet-sim runs thousands in one process, and each
        // reading holds every member), and registers with a count of them.
        let keeps_view = options.witness.is_some();
        let (lease, reading, sent) = register_until_done(
            &registry,
            &machine,
            ttl_secs,
            lease_file.as_ref(),
            &registration,
            keeps_view,
        )
        .await?;
        liveness.acked();
        liveness.set_fenced(false);
        let timing = Timing::for_ttl(Duration::from_secs(ttl_secs as u64), registry.timeout);
        let origin = liveness.inner.started;
        let guard = Arc::new(Mutex::new(Guard::new(timing, sent.duration_since(origin))));
        let (tx, rx) = watch::channel(PresenceStatus::Alive { lease });
        let reading = if keeps_view {
            reading
        } else {
            Reading::default()
        };
        let members = Arc::new(Mutex::new(Readings::adopt(reading.clone())));
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
                reading,
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
    keeps_view: bool,
) -> Result<(i64, Reading, Instant)> {
    let mut warned = false;
    loop {
        let sent = Instant::now();
        // Nothing counts over a reading before this returns: one a failed attempt may have
        // recorded is replaced by the successful one's.
        match register(registry, machine, ttl, lease_file, keeps_view)
            .await
            .map_err(|f| f.error)
        {
            Ok((lease, reading)) => {
                registration.set_blocked_by_duplicate(false);
                return Ok((lease, reading, sent));
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
/// lease unless a live record exists. Either way the member record and the machine's reading
/// (`readings/<id>`) are written in the same transaction, with the members read just before:
/// the reading this machine then counts its majorities over, returned with the lease. A
/// machine that keeps no view of the members (`keeps_view` false: it asks nobody) only counts
/// them: its record needs no more, and a read of every member record by every machine
/// registering is N² records.
async fn register(
    registry: &Registry,
    machine: &Machine,
    ttl: i64,
    lease_file: Option<&PathBuf>,
    keeps_view: bool,
) -> std::result::Result<(i64, Reading), Failed> {
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
    let (reading, seen_members) = if keeps_view {
        let (revision, entries) = registry.cluster_members().await?;
        let reading = Reading {
            revision,
            registrations: registrations(
                &machine.id,
                entries
                    .iter()
                    .map(|e| (&e.member.machine.id, e.create_revision)),
            ),
            machines: view_with(
                &machine,
                entries.into_iter().map(|e| Arc::new(e.member.machine)),
            ),
            recorded: 0,
        };
        let seen = reading.machines.len();
        (reading, seen)
    } else {
        let (revision, all, me) = registry.count_members(&machine.id).await?;
        let reading = Reading {
            revision,
            ..Reading::default()
        };
        (reading, all + usize::from(!me))
    };
    let member = Member {
        machine: machine.clone(),
        seen_revision: reading.revision,
        seen_members,
    };
    let [record_put, reading_put] = registry.registration_puts(&member);
    // Whether a write of the member record and reading failed without an answer (etcd may have
    // applied it).
    let mut unanswered = false;
    let failed = |error: Error, unanswered: bool| Failed {
        error,
        maybe: unanswered.then(|| reading.clone()),
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
                record_put.clone(),
                reading_put.clone(),
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
                    let recorded = resp.header().map(|h| h.revision()).unwrap_or_default();
                    return Ok((
                        previous,
                        Reading {
                            recorded,
                            ..reading
                        },
                    ));
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
            record_put,
            reading_put,
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
    let recorded = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok((
        lease,
        Reading {
            recorded,
            ..reading
        },
    ))
}

/// A registration that failed, and the reading of the members it may have recorded all the
/// same (a write of the member record and reading that failed without an answer, or that was
/// applied before the registration failed).
struct Failed {
    error: Error,
    maybe: Option<Reading>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed { error, maybe: None }
    }
}

/// One keepalive of `lease`: whether etcd renewed it (false when it is gone).
async fn renew_once(registry: &Registry, lease: i64) -> Result<bool> {
    let mut renewer = Renewer { stream: None };
    renewer.renew(registry, lease).await
}

/// A reading of the members: those this machine counts its majorities over, as its member
/// record says (`seen_revision`, `seen_members`).
#[derive(Debug, Clone, Default)]
struct Reading {
    /// The revision of the members' prefix they were read at.
    revision: i64,
    /// The members, this machine among them, in order of id (shared with the view they were
    /// read from: a machine that follows the members holds each record once).
    machines: Vec<Arc<Machine>>,
    /// The other members' registrations, (id, creation revision of the member record), in
    /// order of id: what two readings are compared by, so that a machine declared dead and
    /// registered again makes a new reading.
    registrations: Vec<(MachineId, i64)>,
    /// The revision this machine's reading (`readings/<id>`) was written at with this reading,
    /// once it was (0 before).
    recorded: i64,
}

/// The registrations of the members other than `me`, in order of id.
fn registrations<'a>(
    me: &MachineId,
    members: impl Iterator<Item = (&'a MachineId, i64)>,
) -> Vec<(MachineId, i64)> {
    let mut all: Vec<(MachineId, i64)> = members
        .filter(|(id, _)| *id != me)
        .map(|(id, created)| (id.clone(), created))
        .collect();
    all.sort();
    all
}

/// The readings of the members this machine counts its majorities over: the one etcd holds as
/// its reading (`readings/<id>`), and those whose recording failed without an answer. etcd may
/// have applied such a write all the same, and then the engine, judging this machine, counts
/// over that reading instead: until a recording succeeds (etcd then holds the reading it
/// wrote), a majority must be a majority of every reading etcd may hold.
///
/// Every write of a reading is conditioned on the reading's revision as this machine last knew
/// it (`record`), and on its member record being the one it registered (`registered`): a write
/// that failed without an answer cannot be applied after a later one succeeded, which would
/// leave etcd holding a reading no longer counted over, nor after the machine registered
/// again (an older fleetd, after a downgrade, writes only its member record).
#[derive(Debug, Clone, Default)]
struct Readings {
    /// The last reading recorded for sure.
    adopted: Reading,
    /// Readings written since, whose writes failed without saying whether etcd applied them.
    in_doubt: Vec<Reading>,
    /// The revision of this machine's reading (`readings/<id>`) as it last knew it.
    record: i64,
    /// The reading was found written at another revision than `record`: written over next.
    rewrite: bool,
    /// The revision its registration wrote its member record (and first reading) at.
    registered: i64,
}

impl Readings {
    /// The readings of a registration, which recorded `reading` with the member record.
    fn adopt(reading: Reading) -> Readings {
        Readings {
            record: reading.recorded,
            registered: reading.recorded,
            adopted: reading,
            in_doubt: Vec::new(),
            rewrite: false,
        }
    }

    /// `reading` recorded for sure since the registration.
    fn recorded(&mut self, reading: Reading) {
        *self = Readings {
            registered: self.registered,
            ..Readings::adopt(reading)
        };
    }

    fn doubt(&mut self, reading: Reading) {
        let same = |r: &Reading| r.registrations == reading.registrations;
        if !same(&self.adopted) && !self.in_doubt.iter().any(same) {
            self.in_doubt.push(reading);
        }
    }

    /// The members to ask, and how many members a majority is counted over: with readings in
    /// doubt, only the members in all of them, over the largest. A majority of that count
    /// among them is then a majority of each reading, whichever etcd holds.
    fn to_ask(&self) -> (Vec<Arc<Machine>>, usize) {
        let mut asked = self.adopted.machines.clone();
        let mut counted = self.adopted.machines.len();
        for reading in &self.in_doubt {
            let ids: HashSet<&MachineId> = reading.machines.iter().map(|r| &r.id).collect();
            asked.retain(|m| ids.contains(&m.id));
            counted = counted.max(reading.machines.len());
        }
        (asked, counted)
    }
}

/// The members read, with this machine among them (as itself).
fn view_with(me: &Machine, read: impl Iterator<Item = Arc<Machine>>) -> Vec<Arc<Machine>> {
    let mut view: Vec<Arc<Machine>> = read.filter(|m| m.id != me.id).collect();
    view.push(Arc::new(me.clone()));
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
    /// Held while a reading of the members is recorded and adopted, so that the recorded
    /// reading and `members` never disagree.
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
    let mut backoff = Backoff::new(&k.machine.id);
    loop {
        let sent = Instant::now();
        // While the lease is at risk, an attempt stuck on a connection etcd no longer answers
        // must not hold up the next one (confirmations lapse meanwhile).
        let (at_risk, ask_every, until_at_risk) = {
            let guard = lock(&k.guard);
            let now = sent.duration_since(origin);
            (
                guard.at_risk(now),
                guard.timing().ask_every(),
                guard.at_risk_from().saturating_sub(now),
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
            Ok(true) => {
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
            Ok(false) => {
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
                let registering = register(
                    &k.registry,
                    &k.machine,
                    k.ttl,
                    k.lease_file.as_ref(),
                    k.keeps_view,
                );
                match registering.await {
                    Ok((new_lease, reading)) => {
                        k.lease = new_lease;
                        if k.keeps_view {
                            *lock(&k.members) = Readings::adopt(reading);
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
                        if let (true, Some(reading)) = (k.keeps_view, maybe) {
                            lock(&k.members).doubt(reading);
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
        // As this attempt left it: finding the lease gone fences.
        let fenced = lock(&k.guard).fenced();
        let pause = match (renewed, at_risk) {
            (true, _) => {
                backoff.reset();
                period
            }
            (false, true) => ask_every,
            // A machine fenced before its lease came to risk (the lease found gone early,
            // registering again) tries without backing off: its units wait for it. Past the
            // lease's risk it goes every `ask_every` (above).
            (false, false) if fenced => RETRY_PAUSE,
            // The attempt's own time counts: the next one comes no later than the lease's
            // coming to risk, from when on it is tried every `ask_every`, nor than the server
            // monitor's deadline, so that its log line comes on time.
            (false, false) => backoff
                .after_failure(until_at_risk, sent.elapsed())
                .min(monitor.until_due(k.liveness.own_since_renewal()))
                .max(Duration::from_millis(10)),
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

    /// How long after `since_ack` past the last acknowledged renewal it would trigger; far
    /// off once triggered.
    fn until_due(&self, since_ack: Duration) -> Duration {
        if self.triggered {
            return Duration::MAX;
        }
        self.deadline.saturating_sub(since_ack)
    }
}

/// Follows the cluster's members (for whom to ask and how many make a majority). A new reading
/// is recorded as this machine's reading (`readings/<id>`) before it is counted over, so that
/// the engine, judging this machine, counts over no more members than it does.
///
/// The members are a view ([`MembersView`]): read once (at registration), then kept from one
/// watch of the member records, which are written when a machine registers and deleted when
/// it is declared dead: the other members' readings are keys of their own, which only the
/// engine follows, so a join costs each member one event, not one per member. A member's
/// record written again that adds or removes no member (registering again, or an older
/// fleetd recording its reading there) costs receiving it; only a join or a departure makes a
/// new reading, recorded and adopted once the members have settled
/// ([`MembersView::settle`]): once for a burst of them, and at most once per
/// [`reading_gap`]. Any error of the watch drops the view, to be read again.
async fn follow_members(
    registry: Registry,
    me: Machine,
    registered: Reading,
    members: Arc<Mutex<Readings>>,
    recording: Arc<tokio::sync::Mutex<()>>,
) {
    // The revision of the adopted reading when this loop last compared its view with it: a
    // reading adopted since (by registering again) is compared afresh.
    let mut compared = registered.revision;
    let mut registered = Some(registered);
    // When this machine last recorded a reading: registering records one.
    let mut recorded = Instant::now();
    // How many members the last view held, to spread reading them again.
    let mut known = 1;
    loop {
        let opened = match registered.take() {
            Some(reading) => MembersView::follow(&registry, reading).await,
            None => {
                // Every member's watch ends at once when etcd elects a leader: reading all N
                // records again at once would be N² records read in a burst.
                tokio::time::sleep(read_again_after(&me.id, known)).await;
                MembersView::read(&registry).await
            }
        };
        let mut view = match opened {
            Ok(view) => view,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the members");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        known = view.members.len();
        loop {
            if let Err(e) = view.settle(&me.id, recorded).await {
                tracing::debug!(error = %e, "the members' watch ended");
                break;
            }
            match adopt(
                &registry,
                &me,
                &mut view,
                &members,
                &recording,
                &mut compared,
            )
            .await
            {
                Ok(true) => recorded = Instant::now(),
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot record the members read");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if view.stale {
                        break;
                    }
                    // Recorded afresh with what arrived meanwhile.
                    match view.catch_up(&me.id) {
                        Ok(()) => continue,
                        Err(e) => {
                            tracing::debug!(error = %e, "the members' watch ended");
                            break;
                        }
                    }
                }
            }
            if let Err(e) = view.changed(&me.id).await {
                tracing::debug!(error = %e, "the members' watch ended");
                break;
            }
        }
    }
}

/// Records and adopts the view's reading if it names other members than the reading adopted,
/// after a member joined or left, or after this machine registered again (which adopts the
/// reading it registered with). Whether it recorded one; an error leaves it to be tried again.
async fn adopt(
    registry: &Registry,
    me: &Machine,
    view: &mut MembersView,
    members: &Mutex<Readings>,
    recording: &tokio::sync::Mutex<()>,
    compared: &mut i64,
) -> Result<bool> {
    let settled = {
        let readings = lock(members);
        !view.joined_or_left
            && readings.adopted.revision == *compared
            && readings.in_doubt.is_empty()
            && !readings.rewrite
    };
    if settled {
        return Ok(false);
    }
    let _held = recording.lock().await;
    let adopted = lock(members).adopted.revision;
    // Registering again adopted a newer reading than the view's: the view reaches it soon
    // (registering writes this machine's member record), and is compared then.
    if view.revision < adopted {
        return Ok(false);
    }
    let reading = view.reading(me);
    let unsure = {
        let readings = lock(members);
        reading.registrations != readings.adopted.registrations
            || !readings.in_doubt.is_empty()
            || readings.rewrite
    };
    let mut recorded = false;
    if unsure {
        view.check(registry).await?;
        let member = Member {
            machine: me.clone(),
            seen_revision: reading.revision,
            seen_members: reading.machines.len(),
        };
        let (over, registered) = {
            let readings = lock(members);
            (readings.record, readings.registered)
        };
        match registry
            .record_reading_over(&member, over, registered)
            .await
        {
            Ok(Recorded::Written(revision)) => {
                lock(members).recorded(Reading {
                    recorded: revision,
                    ..reading
                });
                recorded = true;
            }
            // Registering again records and adopts a reading of its own.
            Ok(Recorded::Gone) => tracing::debug!(
                "not a member as registered (declared dead): keeping the members as they were"
            ),
            Ok(Recorded::Moved(revision)) => {
                // A write of a reading in doubt was applied after all (or the reading was
                // deleted): written over next, on what etcd holds now.
                let mut readings = lock(members);
                readings.record = revision;
                readings.rewrite = true;
                return Err(Error::Protocol(format!(
                    "this machine's reading was written at revision {revision}, \
                     not {over}: recording again"
                )));
            }
            Err(e) => {
                // Without an answer, etcd may have recorded it all the same.
                lock(members).doubt(reading);
                return Err(e);
            }
        }
    }
    *compared = lock(members).adopted.revision;
    view.joined_or_left = false;
    Ok(recorded)
}

/// The members as [`follow_members`] keeps them: read at a revision, then each change of the
/// members' prefix applied to the one member its key names. A watch delivers one prefix's
/// changes in order, all of a revision's together, so the view is the prefix as it was at
/// `revision`.
struct MembersView {
    /// Every member record, by the id in its key, with the revision it was created at.
    members: BTreeMap<MachineId, (i64, Arc<Machine>)>,
    /// Keys under the prefix that name no machine (written by hand, or by another version):
    /// no members, but etcd counts them. Learnt when a count first differs, then kept from the
    /// watch.
    strays: BTreeSet<Vec<u8>>,
    /// Found not to hold what etcd holds: to be read again.
    stale: bool,
    /// The revision of the read, then of the last change applied.
    revision: i64,
    /// Whether a member other than this machine joined or left since the view was last
    /// compared with the reading adopted.
    joined_or_left: bool,
    /// How many members other than this machine have joined or left since the view was read.
    joins_and_departures: u64,
    prefix: String,
    changes: Changes,
}

impl MembersView {
    /// Reads the members and follows them from there.
    async fn read(registry: &Registry) -> Result<MembersView> {
        let (revision, entries) = registry.cluster_members().await?;
        let registrations = entries
            .iter()
            .map(|e| (e.member.machine.id.clone(), e.create_revision))
            .collect();
        let machines = entries
            .into_iter()
            .map(|e| Arc::new(e.member.machine))
            .collect();
        let reading = Reading {
            revision,
            machines,
            registrations,
            recorded: 0,
        };
        let mut view = MembersView::follow(registry, reading).await?;
        // Compared with the reading adopted whatever the watch brings.
        view.joined_or_left = true;
        Ok(view)
    }

    /// Follows the members from `reading`, read at its revision.
    async fn follow(registry: &Registry, reading: Reading) -> Result<MembersView> {
        let changes = registry
            .watch(&registry.members_watch_prefixes(), reading.revision + 1)
            .await?;
        let created: BTreeMap<MachineId, i64> = reading.registrations.into_iter().collect();
        Ok(MembersView {
            members: reading
                .machines
                .into_iter()
                .map(|m| (m.id.clone(), (created.get(&m.id).copied().unwrap_or(0), m)))
                .collect(),
            strays: BTreeSet::new(),
            stale: false,
            revision: reading.revision,
            joined_or_left: false,
            joins_and_departures: 0,
            prefix: registry.members_prefix(),
            changes,
        })
    }

    /// Waits for the next changes and applies them, with every change that has arrived
    /// meanwhile (a burst of joins makes one reading).
    async fn changed(&mut self, me: &MachineId) -> Result<()> {
        let (_, changes) = self.changes.next_changes().await?;
        self.apply_all(me, changes);
        self.catch_up(me)
    }

    /// After a member joined or left, follows the members until none has for [`SETTLE`] (or
    /// for a [`reading_gap`]), and until a reading gap has passed since this machine last
    /// recorded a reading (at `recorded`), so that a burst of joins or departures (machines
    /// starting together, the engine declaring several dead) makes one reading, not one each,
    /// and that joins that go on make one per gap: every reading is a write, which the
    /// engine's watch receives.
    async fn settle(&mut self, me: &MachineId, recorded: Instant) -> Result<()> {
        if !self.joined_or_left {
            return Ok(());
        }
        let started = Instant::now();
        let gap = reading_gap(self.members.len());
        let (mut last, mut seen) = (started, self.joins_and_departures);
        loop {
            let until = (last + SETTLE).min(started + gap).max(recorded + gap);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                changed = self.changed(me) => {
                    changed?;
                    if self.joins_and_departures != seen {
                        (last, seen) = (Instant::now(), self.joins_and_departures);
                    }
                }
            }
        }
    }

    /// Applies the changes that have already arrived, without waiting.
    fn catch_up(&mut self, me: &MachineId) -> Result<()> {
        use futures_util::FutureExt;
        while let Some(next) = self.changes.next_changes().now_or_never() {
            let (_, changes) = next?;
            self.apply_all(me, changes);
        }
        Ok(())
    }

    fn apply_all(&mut self, me: &MachineId, changes: Vec<Change>) {
        for Change { kv, deleted } in changes {
            self.revision = self.revision.max(kv.mod_revision());
            let Some(id) = key_machine_id(&self.prefix, kv.key()) else {
                if deleted {
                    self.strays.remove(kv.key());
                } else {
                    self.strays.insert(kv.key().to_vec());
                }
                continue;
            };
            // This machine is in every reading it makes, recorded or not.
            let counted = id != *me;
            // A record created again is a member that left (declared dead) and joined again.
            let changed = if deleted {
                self.members.remove(&id).is_some()
            } else {
                let entry = member_entry_of(id.clone(), &kv);
                let created = kv.create_revision();
                self.members
                    .insert(id, (created, Arc::new(entry.member.machine)))
                    .is_none_or(|(was, _)| was != created)
            };
            if changed && counted {
                self.joined_or_left = true;
                self.joins_and_departures += 1;
            }
        }
    }

    /// The reading this view makes, with this machine among the members.
    fn reading(&self, me: &Machine) -> Reading {
        Reading {
            revision: self.revision,
            machines: view_with(me, self.members.values().map(|(_, m)| m.clone())),
            registrations: registrations(
                &me.id,
                self.members.iter().map(|(id, (created, _))| (id, *created)),
            ),
            recorded: 0,
        }
    }

    /// A read for the check failed: unless etcd is only unreachable (the view may still be
    /// exact), the view cannot be checked at its revision (compacted, say): read it again.
    fn stale_unless_unavailable(&mut self, e: Error) -> Error {
        if !e.is_unavailable() {
            self.stale = true;
        }
        e
    }

    /// Checks the view against etcd before a reading is counted over: it is exact only if the
    /// watch missed nothing, so etcd counts the keys under the prefix at the view's revision
    /// (a count-only read). A count that differs is looked into with the keys themselves
    /// (keys that name no machine are no members); members that differ, or a read etcd cannot
    /// give at that revision (compacted), mark the view stale, to be read again.
    async fn check(&mut self, registry: &Registry) -> Result<()> {
        let counted = registry
            .count_members_at(self.revision)
            .await
            .map_err(|e| self.stale_unless_unavailable(e))?;
        if counted == self.members.len() + self.strays.len() {
            return Ok(());
        }
        // Either the watch missed a change, or keys that name no machine were there before
        // it began: the keys themselves tell (once: the strays are then kept from the watch).
        let keys = registry
            .member_keys_at(self.revision)
            .await
            .map_err(|e| self.stale_unless_unavailable(e))?;
        let mut ids = BTreeSet::new();
        let mut strays = BTreeSet::new();
        for key in keys {
            match key_machine_id(&self.prefix, &key) {
                Some(id) => ids.insert(id),
                None => strays.insert(key),
            };
        }
        if ids.len() == self.members.len() && ids.iter().all(|id| self.members.contains_key(id)) {
            if !strays.is_empty() {
                let keys: Vec<_> = strays.iter().map(|k| String::from_utf8_lossy(k)).collect();
                tracing::warn!(
                    ?keys,
                    "keys among the members name no machine: not counted as members"
                );
            }
            self.strays = strays;
            return Ok(());
        }
        self.stale = true;
        tracing::warn!(
            view = self.members.len(),
            etcd = ids.len(),
            revision = self.revision,
            "the members followed differ from etcd's: reading them again"
        );
        Err(Error::Protocol(format!(
            "{} members followed, {} in etcd at revision {}",
            self.members.len(),
            ids.len(),
            self.revision
        )))
    }
}

/// How long a machine waits before it reads the members again after its watch ended: half a
/// second, then a share of 5 ms per member (up to 10 s) that its id picks, so that the
/// members' reads spread out.
fn read_again_after(me: &MachineId, members: usize) -> Duration {
    let spread = (members as u64).saturating_mul(5).clamp(1, 10_000);
    Duration::from_millis(500 + id_hash(me) % spread)
}

/// A hash of a machine's id (FNV-1a), to spread the machines' timings.
fn id_hash(me: &MachineId) -> u64 {
    me.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How long the members must have gone without a join or departure before a reading is
/// recorded ([`MembersView::settle`]).
const SETTLE: Duration = Duration::from_millis(250);

/// The least time between two readings a machine records among `members`, and the longest a
/// reading waits for them to settle: joins that go on (a cluster starting) are recorded this
/// often. A round of readings is a write per member (and an event for the engine, which alone
/// follows them), so past 200 members the rounds are spaced by 10 ms per member: the members
/// then write about 100 readings a second however large the cluster. The gap is counted on
/// the machine's own clock; nothing depends on the machines keeping it together.
fn reading_gap(members: usize) -> Duration {
    let per_member =
        Duration::from_millis(10).saturating_mul(members.try_into().unwrap_or(u32::MAX));
    per_member.max(Duration::from_secs(2))
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
            let others: Vec<Machine> = known
                .iter()
                .filter(|m| m.id != me)
                .map(|m| Machine::clone(m))
                .collect();
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

/// The longest lease TTL etcd grants (its `MaxLeaseTTL`).
const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;

/// The first pause after a failed renewal while the lease is not at risk.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause between two failed renewals while the lease is not at risk.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(4);

/// The pauses between failed renewals while the lease is not at risk: from [`RETRY_PAUSE`],
/// doubling up to [`MAX_RETRY_PAUSE`], each lengthened by a share of up to a quarter that the
/// machine's id picks. When etcd falls behind, every machine's renewals fail at once: retried
/// every half second, 10,000 machines sent three to four times their usual keepalives, which
/// kept etcd behind (README, `fleet-bench hollow`). Nothing of the fencing depends on these
/// pauses: the lease's expiry counts from when the last renewal acknowledged was sent, and
/// once the lease is at risk renewals go every `ask_every` whatever came before.
struct Backoff {
    next: Duration,
    /// The machine's share, in thousandths.
    share: u64,
}

impl Backoff {
    fn new(me: &MachineId) -> Backoff {
        Backoff {
            next: RETRY_PAUSE,
            share: id_hash(me) % 1000,
        }
    }

    /// The pause after a failure whose attempt took `spent`, when the lease comes to risk
    /// `until_at_risk` after the attempt was sent: never past that moment.
    fn after_failure(&mut self, until_at_risk: Duration, spent: Duration) -> Duration {
        let pause = self.next + self.next / 4 * self.share as u32 / 1000;
        self.next = (self.next * 2).min(MAX_RETRY_PAUSE);
        pause.min(until_at_risk.saturating_sub(spent))
    }

    /// A renewal went through: the next failure pauses [`RETRY_PAUSE`] again.
    fn reset(&mut self) {
        self.next = RETRY_PAUSE;
    }
}

/// Whether opening a keepalive stream failed because the lease is gone: etcd-client reports
/// it as an error when the stream is opened (on an open stream, as a TTL of 0).
pub fn lease_not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::LeaseKeepAliveError(message) if message.contains("lease not found"))
}

/// The one keepalive stream of this machine, opened again after an error.
struct Renewer {
    /// The lease, the endpoint the stream was opened on, and the stream.
    stream: Option<(i64, usize, LeaseKeeper, LeaseKeepAliveStream)>,
}

impl Renewer {
    /// One renewal: whether etcd renewed the lease (false when it is gone).
    async fn renew(&mut self, registry: &Registry, lease: i64) -> Result<bool> {
        let result = self.try_renew(registry, lease).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn try_renew(&mut self, registry: &Registry, lease: i64) -> Result<bool> {
        if !matches!(&self.stream, Some((l, _, _, _)) if *l == lease) {
            let (endpoint, mut lease_client) = registry.lease_client_at();
            // Opening the stream sends a keepalive and waits for etcd's answer: that is this
            // renewal (a second keepalive on the new stream would cost etcd one more for each
            // stream opened, and streams are opened again after every failure).
            let opened = registry
                .timed_on(endpoint, lease_client.keep_alive(lease))
                .await;
            // A lease already gone, reported on opening (on an open stream, as a TTL of 0):
            // both mean "register again".
            if matches!(&opened, Err(Error::Etcd(e)) if lease_not_found(e)) {
                return Ok(false);
            }
            let (keeper, stream) = opened?;
            self.stream = Some((lease, endpoint, keeper, stream));
            return Ok(true);
        }
        let Some((_, endpoint, keeper, stream)) = self.stream.as_mut() else {
            return Err(Error::Protocol("no keepalive stream".into()));
        };
        let endpoint = *endpoint;
        registry.timed_on(endpoint, keeper.keep_alive()).await?;
        match registry.timed_on(endpoint, stream.message()).await? {
            Some(resp) => Ok(resp.ttl() > 0),
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

    fn id(n: u8) -> MachineId {
        MachineId::parse(&format!("{n:032x}")).unwrap()
    }

    /// A reading by machine 1 of members `ids`, each registered at revision `created` (10
    /// unless said).
    fn reading(ids: &[u8], created: &[(u8, i64)]) -> Reading {
        let machines = ids
            .iter()
            .map(|&n| {
                Arc::new(Machine {
                    id: id(n),
                    public_ip: format!("10.0.0.{n}"),
                    metadata: Default::default(),
                    version: String::new(),
                    peer_address: None,
                })
            })
            .collect();
        let at = |n: u8| {
            created
                .iter()
                .find(|(m, _)| *m == n)
                .map_or(10, |(_, c)| *c)
        };
        Reading {
            revision: 20,
            recorded: 0,
            machines,
            registrations: ids
                .iter()
                .filter(|&&n| n != 1)
                .map(|&n| (id(n), at(n)))
                .collect(),
        }
    }

    fn asked(readings: &Readings) -> (Vec<MachineId>, usize) {
        let (machines, counted) = readings.to_ask();
        (machines.iter().map(|m| m.id.clone()).collect(), counted)
    }

    fn ids(ns: &[u8]) -> Vec<MachineId> {
        ns.iter().map(|&n| id(n)).collect()
    }

    #[test]
    fn reading_the_members_again_is_spread_by_id_within_bounds() {
        let a = read_again_after(&id(1), 1000);
        let b = read_again_after(&id(2), 1000);
        for pause in [a, b] {
            assert!(pause >= Duration::from_millis(500) && pause < Duration::from_millis(5500));
        }
        assert_ne!(a, b);
        assert!(read_again_after(&id(1), 1_000_000) < Duration::from_millis(10_500));
        assert_eq!(read_again_after(&id(1), 0), Duration::from_millis(500));
    }

    #[test]
    fn failed_renewals_back_off_until_the_lease_comes_to_risk() {
        let far = Duration::from_secs(60);
        let mut b = Backoff::new(&id(1));
        let pauses: Vec<Duration> = (0..6)
            .map(|_| b.after_failure(far, Duration::ZERO))
            .collect();
        // Doubling from half a second up to four, each lengthened by less than a quarter.
        for (pause, base) in pauses.iter().zip([500, 1000, 2000, 4000, 4000, 4000]) {
            let base = Duration::from_millis(base);
            assert!(
                *pause >= base && *pause < base + base / 4,
                "{pause:?} from {base:?}"
            );
        }
        // Never past the moment the lease comes to risk, the attempt's own time counted.
        assert_eq!(
            b.after_failure(Duration::from_secs(3), Duration::from_millis(2500)),
            Duration::from_millis(500)
        );
        assert_eq!(
            b.after_failure(Duration::from_secs(1), Duration::from_secs(2)),
            Duration::ZERO
        );
        // A renewal that goes through starts again from half a second.
        b.reset();
        assert!(b.after_failure(far, Duration::ZERO) < Duration::from_millis(625));
        // Machines failing together retry at different moments.
        let other = Backoff::new(&id(2)).after_failure(far, Duration::ZERO);
        assert_ne!(
            other,
            Backoff::new(&id(1)).after_failure(far, Duration::ZERO)
        );
    }

    /// The case a recording that failed without an answer opens: adopted {1,2,3}, while the
    /// reading in etcd may say {1,2,3,4,5}. Cut off from etcd with 2 only, machine 1 must not
    /// count {1,2} a majority: the engine may count 3, 4 and 5 renewing, a majority of that
    /// reading.
    #[test]
    fn a_reading_in_doubt_counts_until_a_recording_succeeds() {
        let mut readings = Readings::adopt(reading(&[1, 2, 3], &[]));
        assert_eq!(asked(&readings), (ids(&[1, 2, 3]), 3));
        readings.doubt(reading(&[1, 2, 3, 4, 5], &[]));
        // Only members of both are asked, counted over the larger: 1 and 2 answering cut off
        // make 2 of 5, not a majority; 1, 2 and 3 make one of either reading.
        assert_eq!(asked(&readings), (ids(&[1, 2, 3]), 5));
        readings.doubt(reading(&[1, 2, 4], &[]));
        assert_eq!(asked(&readings), (ids(&[1, 2]), 5));
        // The adopted reading itself is no doubt; a recording that succeeds ends them all.
        readings.doubt(reading(&[1, 2, 3], &[]));
        assert_eq!(readings.in_doubt.len(), 2);
        // A member registered again is another reading, though its id is the same.
        readings.doubt(reading(&[1, 2, 3], &[(3, 15)]));
        assert_eq!(readings.in_doubt.len(), 3);
        readings = Readings::adopt(reading(&[1, 2, 3, 4], &[]));
        assert_eq!(asked(&readings), (ids(&[1, 2, 3, 4]), 4));
    }
}
