//! A deterministic discrete-time simulation of the quorum protocol, checking that **a unit
//! never runs on two machines at once**.
//!
//! The world steps in 10 ms ticks of real time; messages arrive between ticks, at their own
//! time. Everything comes from the proptest input (a schedule of faults, the clocks, bounds on
//! the delays, and a seed for the delays, losses and stop times), so a failure replays exactly
//! and shrinks. The decisions are the crate's own ([`Guard`], [`Verdicts`]); the simulation
//! carries the messages between them and keeps the books:
//!
//! - 3 to 7 machines, each with a clock off by up to `drift_ppm` in rate and by any offset,
//!   one unit each at the start. Each renews its lease every third of the TTL as fleetd does
//!   (after a failed attempt: the request timeout, then a pause), registers again when etcd
//!   finds its lease gone, asks its peers when its guard says so, and fences when the guard
//!   says [`Verdict::Fence`]: its units stop within the stop allowance. It starts a unit only
//!   while not fenced, registered, and reading the unit placed on it.
//! - One etcd: leases that expire by etcd's clock, which may run fast or slow as the machines'
//!   do (not while it is down, and extended to a full TTL when it comes back), the members,
//!   the placements, and the engine's leader key.
//! - An engine on the machine holding the leader key: it observes the members whose lease is
//!   gone, asks every member to renew now (each says, with its renewal, how long it has
//!   answered no peer's question), and declares dead, after the whole wait or, if a quiet
//!   majority renewed, after the stop allowance, conditioned on the machine still not
//!   registered, re-placing its units on the least loaded live member.
//! - Faults: etcd down; machines cut off from etcd, from their peers, or both; lost messages;
//!   the engine's loop stalled.
//!
//! Checked at every tick: no unit runs on two machines. Also checked: the cluster settles once
//! every fault has healed; nobody fences while etcd is down for everyone; a majority cut off
//! from etcd keeps its units; a machine cut off from everything fences and its unit runs
//! elsewhere soon after. The counterexamples at the end show what each rule of the crate's
//! documentation prevents. For a longer search:
//! `PROPTEST_CASES=30000 cargo test --release -p fleet-quorum --test simulation`.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_quorum::{Guard, Timing, Verdict, Verdicts};
use proptest::prelude::*;

/// Real time, in milliseconds since the simulation started.
type Ms = u64;
/// A set of machines, one bit each.
type Mask = u8;

/// One step of the world.
const TICK: Ms = 10;
/// The bound of one etcd request, as fleetd's registry configures it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// The first pause after a failed renewal, and the longest (fleetd's `presence.rs`, `Backoff`:
/// doubling between the two, never past the lease's coming to risk).
const RETRY_PAUSE: Duration = Duration::from_millis(500);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(4);
const MAX_MACHINES: usize = 7;

fn has(mask: Mask, i: usize) -> bool {
    mask & (1 << i) != 0
}

fn ids(mask: Mask) -> impl Iterator<Item = usize> {
    (0..8).filter(move |i| has(mask, *i))
}

fn all(n: usize) -> Mask {
    ((1u16 << n) - 1) as Mask
}

fn ms(d: Duration) -> Ms {
    d.as_millis() as Ms
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// Everything a run depends on.
#[derive(Clone, Debug)]
struct Scenario {
    /// One clock per machine.
    clocks: Vec<Clock>,
    /// The rate error of etcd's clock, which times the leases, in parts per million (positive:
    /// fast, so a lease expires before its TTL has passed in real time).
    etcd_ppm: i64,
    /// When each machine first renews its lease (ms after it started, on its clock): machines
    /// that started at different times renew at different phases.
    phases: Vec<Ms>,
    ttl_secs: u64,
    /// Seeds the delays, drops and stop times.
    seed: u64,
    /// Bound on the delay of each leg of an etcd request (to etcd, back from etcd).
    etcd_delay: Ms,
    /// Bound on the delay of one peer message (at most half the peer timeout).
    peer_delay: Ms,
    /// Bound on how long a machine takes to start a unit it reads placed on it (0: at once).
    start_delay: Ms,
    faults: Vec<Fault>,
    rules: Rules,
}

/// How fleetd uses the protocol: the rules of the crate's documentation, each of which can be
/// left out to show what it prevents (the counterexamples at the end of this file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rules {
    /// The engine keys vanished members by registration (machine and lease), not by machine.
    key_by_registration: bool,
    /// A fenced machine answers peers as if it had just renewed.
    fenced_answer_zero: bool,
    /// The engine counts a member's renewal only if every vanished member has read a membership
    /// that includes it.
    joiners_wait: bool,
    /// A machine whose lease is at risk also tries to renew every `ask_every`, without
    /// waiting for an earlier attempt to time out.
    urgent_renewals: bool,
    /// The engine waits only the stop allowance after a round only if the members that make
    /// its majority were quiet (without the rule: after every round that found a majority).
    short_wait_needs_quiet: bool,
}

impl Rules {
    /// As the crate's documentation has them.
    fn documented() -> Rules {
        Rules {
            key_by_registration: true,
            fenced_answer_zero: true,
            joiners_wait: true,
            urgent_renewals: true,
            short_wait_needs_quiet: true,
        }
    }
}

/// A machine's clock: local time = real time × (1 + ppm / 10⁶) + offset.
#[derive(Clone, Copy, Debug)]
struct Clock {
    ppm: i64,
    offset_ms: u64,
}

impl Clock {
    fn local(&self, t: Ms) -> Duration {
        let nanos = t as i128 * 1_000_000 * (1_000_000 + self.ppm as i128) / 1_000_000;
        Duration::from_millis(self.offset_ms) + Duration::from_nanos(nanos as u64)
    }
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    start: Ms,
    duration: Ms,
    kind: Kind,
}

impl Fault {
    fn end(&self) -> Ms {
        self.start + self.duration
    }

    fn active(&self, t: Ms) -> bool {
        self.start <= t && t < self.end()
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// etcd answers nobody (no lease expires meanwhile).
    EtcdDown,
    /// These machines cannot reach etcd.
    CutEtcd(Mask),
    /// These machines and the others cannot reach each other over the peer network.
    CutPeers(Mask),
    /// Both.
    Isolate(Mask),
    /// This percentage of all messages is lost.
    Lossy(u8),
    /// The engine's loop, on these machines, is stalled (its keepalives still go on).
    EngineStall(Mask),
}

impl Scenario {
    fn n(&self) -> usize {
        self.clocks.len()
    }

    fn timing(&self) -> Timing {
        Timing::for_ttl(Duration::from_secs(self.ttl_secs), REQUEST_TIMEOUT)
    }

    /// How long a lease lasts in real time, timed on etcd's clock.
    fn lease_ms(&self) -> Ms {
        let ttl = self.ttl_secs as i128 * 1_000;
        (ttl * 1_000_000 / (1_000_000 + self.etcd_ppm as i128)) as Ms
    }

    /// When the last fault heals.
    fn healed(&self) -> Ms {
        self.faults.iter().map(Fault::end).max().unwrap_or(0)
    }
}

/// The network as the faults active at one time leave it.
#[derive(Clone, Copy, Debug)]
struct Net {
    etcd_up: bool,
    etcd_cut: Mask,
    /// For each machine, the machines it can exchange peer messages with.
    links: [Mask; MAX_MACHINES],
    loss_pct: u64,
    stalled: Mask,
}

impl Net {
    fn at(sc: &Scenario, t: Ms) -> Net {
        let n = sc.n();
        let mut net = Net {
            etcd_up: true,
            etcd_cut: 0,
            links: [all(n); MAX_MACHINES],
            loss_pct: 0,
            stalled: 0,
        };
        for f in sc.faults.iter().filter(|f| f.active(t)) {
            match f.kind {
                Kind::EtcdDown => net.etcd_up = false,
                Kind::CutEtcd(s) => net.etcd_cut |= s,
                Kind::CutPeers(s) => net.partition(n, s),
                Kind::Isolate(s) => {
                    net.etcd_cut |= s;
                    net.partition(n, s);
                }
                Kind::Lossy(p) => net.loss_pct = net.loss_pct.max(p as u64),
                Kind::EngineStall(s) => net.stalled |= s,
            }
        }
        net
    }

    fn partition(&mut self, n: usize, s: Mask) {
        for i in 0..n {
            self.links[i] &= if has(s, i) { s } else { !s };
        }
    }

    fn reaches_etcd(&self, m: usize) -> bool {
        !has(self.etcd_cut, m)
    }

    fn link(&self, a: usize, b: usize) -> bool {
        has(self.links[a], b)
    }
}

/// splitmix64: the delays, drops and stop times, all from the scenario's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    fn upto(&mut self, max: u64) -> u64 {
        self.next() % (max + 1)
    }

    fn percent(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

// ---------------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------------

/// The one logical etcd.
#[derive(Debug)]
struct Etcd {
    up: bool,
    /// Each machine's lease: its key is present while this is `Some`.
    leases: Vec<Option<Lease>>,
    /// How many leases each machine was granted.
    incarnations: Vec<u64>,
    /// The cluster's members: registered and not declared dead.
    members: Mask,
    /// Bumped by every change of `members`.
    members_version: u64,
    /// The version at which each machine last joined the members.
    joined: Vec<u64>,
    /// The latest version of the members each machine read (recorded durably as it reads).
    seen: Vec<u64>,
    /// Unit → machine.
    placements: Vec<Option<usize>>,
    /// The engine's leader key: on the lease of this machine's incarnation.
    leader: Option<(usize, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Real time.
    expiry: Ms,
    incarnation: u64,
}

impl Etcd {
    fn present(&self) -> Mask {
        let mut mask = 0;
        for (m, l) in self.leases.iter().enumerate() {
            if l.is_some() {
                mask |= 1 << m;
            }
        }
        mask
    }

    fn placed_on(&self, m: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.placements.len()).filter(move |u| self.placements[*u] == Some(m))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Placed here; starts at this real time.
    Starting(Ms),
    Running,
    /// Fenced or moved away; still running until this real time.
    Stopping(Ms),
}

struct Machine {
    clock: Clock,
    guard: Guard,
    /// Local time the process started.
    booted: Duration,
    /// Local time the latest renewal acknowledgement arrived.
    last_ack: Option<Duration>,
    /// Local time this machine last answered a peer's question with anything but zero.
    last_answered: Option<Duration>,
    /// Latched by [`Verdict::Fence`] until a renewal is acknowledged again.
    fenced: bool,
    /// The guard's verdict at the previous tick (for the trace).
    verdict: Verdict,
    units: BTreeMap<usize, Run>,
    /// The keepalive loop: the request awaiting its acknowledgement, and when to send the next.
    outstanding: Option<Duration>,
    next_renewal: Duration,
    /// The pause after the next failed renewal, and the machine's share of a quarter more, in
    /// thousandths.
    retry_pause: Duration,
    retry_share: u32,
    /// The latest renewal sent because the lease was at risk.
    last_urgent: Option<Duration>,
    /// Rounds of questions awaiting their answers.
    asks: Vec<Ask>,
    last_asked: Option<Duration>,
    /// The members as last read from etcd.
    known: Mask,
    engine: Option<Engine>,
}

struct Ask {
    id: u64,
    /// How many peers were asked.
    asked: usize,
    sent: Duration,
    own_since: Duration,
    answers: Vec<Duration>,
}

struct Engine {
    /// The incarnation of this machine's lease that holds the leader key.
    incarnation: u64,
    /// Vanished members, keyed by machine and (with `Rules::key_by_registration`) lease.
    verdicts: Verdicts<(usize, u64)>,
    round: Option<EngineRound>,
}

struct EngineRound {
    id: u64,
    sent: Duration,
    members: usize,
    /// The members whose renewal counts.
    eligible: Mask,
    renewed: Mask,
    /// Of those, the members that said they were quiet.
    quiet: Mask,
}

impl Machine {
    fn since_ack(&self, local: Duration) -> Duration {
        local.saturating_sub(self.last_ack.unwrap_or(self.booted))
    }

    /// How long this machine has answered no peer's question with anything but zero.
    fn quiet_for(&self, local: Duration) -> Duration {
        local.saturating_sub(self.last_answered.unwrap_or(self.booted))
    }

    /// Whether this machine runs `u` (a unit being stopped still runs).
    fn runs(&self, u: usize) -> bool {
        matches!(
            self.units.get(&u),
            Some(Run::Running) | Some(Run::Stopping(_))
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Event {
    /// etcd receives a keepalive sent at this machine-local time (on the engine's request if
    /// `for_round` is set).
    KeepAlive {
        m: usize,
        sent: Duration,
        for_round: Option<(usize, u64)>,
    },
    /// The machine receives etcd's acknowledgement of that keepalive.
    Ack {
        m: usize,
        sent: Duration,
        for_round: Option<(usize, u64)>,
    },
    /// A guard's question arrives at a peer.
    Question { asker: usize, to: usize, id: u64 },
    /// Its answer arrives back.
    Answer {
        asker: usize,
        id: u64,
        since: Duration,
    },
    /// The engine's request to renew now arrives at a member.
    RenewNow { engine: usize, to: usize, id: u64 },
    /// A member's "renewed" arrives at the engine, with how long the member had answered no
    /// peer's question when it sent it.
    Renewed {
        engine: usize,
        from: usize,
        id: u64,
        quiet: Duration,
    },
}

/// Checked when a message is delivered: the path must still be there.
#[derive(Debug, Clone, Copy)]
enum Path {
    Local,
    FromEtcd(usize),
    ToEtcd,
    Peer(usize, usize),
}

/// What one run saw.
#[derive(Debug, Default, Clone)]
struct Outcome {
    fences: usize,
    /// Machines that fenced at least once.
    fenced: Mask,
    deaths: usize,
    /// Units placed anew after their machine was declared dead.
    moves: usize,
    /// The last time some unit did not run on exactly one machine.
    last_unsettled: Option<Ms>,
}

struct World {
    sc: Scenario,
    timing: Timing,
    /// The current tick.
    now: Ms,
    /// The time of the event being handled: messages arrive between ticks, at their own time.
    at: Ms,
    net: Net,
    rng: Rng,
    etcd: Etcd,
    machines: Vec<Machine>,
    events: BTreeMap<(Ms, u64), (Path, Event)>,
    seq: u64,
    outcome: Outcome,
    trace: Option<Vec<String>>,
}

impl World {
    fn new(sc: &Scenario, trace: bool) -> World {
        let n = sc.n();
        let timing = sc.timing();
        let machines = sc
            .clocks
            .iter()
            .zip(&sc.phases)
            .enumerate()
            .map(|(i, (clock, phase))| {
                let booted = clock.local(0);
                Machine {
                    clock: *clock,
                    guard: Guard::new(timing, booted),
                    booted,
                    last_ack: None,
                    last_answered: None,
                    fenced: false,
                    verdict: Verdict::Renewing,
                    units: BTreeMap::new(),
                    outstanding: None,
                    last_urgent: None,
                    next_renewal: booted + Duration::from_millis(*phase),
                    retry_pause: RETRY_PAUSE,
                    retry_share: (i as u32 * 379) % 1000,
                    asks: Vec::new(),
                    last_asked: None,
                    known: all(n),
                    engine: None,
                }
            })
            .collect();
        let mut w = World {
            sc: sc.clone(),
            timing,
            now: 0,
            at: 0,
            net: Net::at(sc, 0),
            rng: Rng(sc.seed),
            etcd: Etcd {
                up: true,
                leases: vec![
                    Some(Lease {
                        expiry: sc.lease_ms(),
                        incarnation: 1,
                    });
                    n
                ],
                incarnations: vec![1; n],
                members: all(n),
                members_version: 0,
                joined: vec![0; n],
                seen: vec![0; n],
                placements: (0..n).map(Some).collect(),
                leader: None,
            },
            machines,
            events: BTreeMap::new(),
            seq: 0,
            outcome: Outcome::default(),
            trace: trace.then(Vec::new),
        };
        for m in 0..n {
            w.machines[m].units.insert(m, Run::Running);
        }
        w
    }

    fn log(&mut self, what: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(format!("{:>7} ms  {}", self.at, what()));
        }
    }

    fn local(&self, m: usize) -> Duration {
        self.machines[m].clock.local(self.at)
    }

    // --- messages --------------------------------------------------------------------------

    fn schedule(&mut self, at: Ms, path: Path, ev: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), (path, ev));
    }

    fn lost(&mut self) -> bool {
        let pct = self.net.loss_pct;
        pct > 0 && self.rng.percent(pct)
    }

    fn send_to_etcd(&mut self, m: usize, ev: Event) {
        if self.net.reaches_etcd(m) && !self.lost() {
            let at = self.at + self.rng.upto(self.sc.etcd_delay);
            self.schedule(at, Path::ToEtcd, ev);
        }
    }

    fn send_from_etcd(&mut self, m: usize, ev: Event) {
        if !self.lost() {
            let at = self.at + self.rng.upto(self.sc.etcd_delay);
            self.schedule(at, Path::FromEtcd(m), ev);
        }
    }

    fn send_to_peer(&mut self, from: usize, to: usize, ev: Event) {
        if from == to {
            self.schedule(self.at, Path::Local, ev);
        } else if self.net.link(from, to) && !self.lost() {
            let at = self.at + self.rng.upto(self.sc.peer_delay);
            self.schedule(at, Path::Peer(from, to), ev);
        }
    }

    fn deliver_due(&mut self) {
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            self.at = entry.key().0;
            let (path, ev) = entry.remove();
            let delivered = match path {
                Path::Local | Path::ToEtcd => true,
                Path::FromEtcd(m) => self.net.reaches_etcd(m),
                Path::Peer(a, b) => self.net.link(a, b),
            };
            if delivered {
                self.handle(ev);
            }
        }
        self.at = self.now;
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::KeepAlive { m, sent, for_round } => {
                if !self.etcd.up {
                    return;
                }
                let expiry = self.at + self.sc.lease_ms();
                match &mut self.etcd.leases[m] {
                    Some(lease) => lease.expiry = expiry,
                    None => {
                        self.etcd.incarnations[m] += 1;
                        let incarnation = self.etcd.incarnations[m];
                        self.etcd.leases[m] = Some(Lease {
                            expiry,
                            incarnation,
                        });
                        if !has(self.etcd.members, m) {
                            self.etcd.members |= 1 << m;
                            self.etcd.members_version += 1;
                            self.etcd.joined[m] = self.etcd.members_version;
                        }
                        self.log(|| format!("m{m} registers anew (lease {incarnation})"));
                    }
                }
                self.send_from_etcd(m, Event::Ack { m, sent, for_round });
            }
            Event::Ack { m, sent, for_round } => {
                let local = self.local(m);
                let ttl = self.timing.ttl;
                let mach = &mut self.machines[m];
                mach.guard.renewed(sent);
                mach.last_ack = Some(local);
                if for_round.is_none() {
                    // Any renewal acknowledged, urgent ones too, as fleetd's one loop does.
                    mach.retry_pause = RETRY_PAUSE;
                }
                if mach.outstanding == Some(sent) && for_round.is_none() {
                    mach.outstanding = None;
                    mach.next_renewal = local + ttl / 3;
                }
                if mach.fenced && mach.guard.verdict(local) != Verdict::Fence {
                    mach.fenced = false;
                    self.log(|| format!("m{m} renewed: no longer fenced"));
                }
                if let Some((engine, id)) = for_round {
                    let quiet = self.machines[m].quiet_for(local);
                    self.send_to_peer(
                        m,
                        engine,
                        Event::Renewed {
                            engine,
                            from: m,
                            id,
                            quiet,
                        },
                    );
                }
            }
            Event::Question { asker, to, id } => {
                let local = self.local(to);
                let mach = &mut self.machines[to];
                let since = mach.since_ack(local);
                let since = if self.sc.rules.fenced_answer_zero {
                    mach.guard.answer(since)
                } else {
                    since
                };
                if since > Duration::ZERO {
                    mach.last_answered = Some(local);
                }
                self.send_to_peer(to, asker, Event::Answer { asker, id, since });
            }
            Event::Answer { asker, id, since } => {
                let local = self.local(asker);
                let timeout = self.timing.peer_timeout;
                let mach = &mut self.machines[asker];
                if let Some(ask) = mach.asks.iter_mut().find(|a| a.id == id) {
                    if local <= ask.sent + timeout {
                        ask.answers.push(since);
                    }
                }
            }
            Event::RenewNow { engine, to, id } => {
                let sent = self.local(to);
                let for_round = Some((engine, id));
                self.send_to_etcd(
                    to,
                    Event::KeepAlive {
                        m: to,
                        sent,
                        for_round,
                    },
                );
            }
            Event::Renewed {
                engine,
                from,
                id,
                quiet,
            } => {
                if has(self.net.stalled, engine) {
                    return;
                }
                let local = self.local(engine);
                let timeout = self.timing.peer_timeout;
                let quiet_after = self.timing.quiet_after();
                if let Some(e) = &mut self.machines[engine].engine {
                    if let Some(r) = &mut e.round {
                        if r.id == id && local <= r.sent + timeout {
                            r.renewed |= 1 << from;
                            if quiet >= quiet_after {
                                r.quiet |= 1 << from;
                            }
                        }
                    }
                }
            }
        }
    }

    // --- one tick ----------------------------------------------------------------------------

    fn step(&mut self) {
        self.net = Net::at(&self.sc, self.now);
        self.at = self.now;
        self.etcd_tick();
        self.deliver_due();
        for m in 0..self.sc.n() {
            self.machine_tick(m);
        }
        for m in 0..self.sc.n() {
            self.engine_tick(m);
        }
    }

    /// etcd's own clock: leases expire while it is up, and are extended to a full TTL when it
    /// comes back (its leader election); the leader key goes with its lease.
    fn etcd_tick(&mut self) {
        let ttl = self.sc.lease_ms();
        let now = self.now;
        if self.net.etcd_up != self.etcd.up {
            self.etcd.up = self.net.etcd_up;
            let up = self.etcd.up;
            self.log(|| format!("etcd {}", if up { "comes back" } else { "goes down" }));
            if self.etcd.up {
                for lease in self.etcd.leases.iter_mut().flatten() {
                    lease.expiry = lease.expiry.max(now + ttl);
                }
            }
        }
        if !self.etcd.up {
            return;
        }
        for m in 0..self.sc.n() {
            if self.etcd.leases[m].is_some_and(|l| l.expiry <= now) {
                self.etcd.leases[m] = None;
                self.log(|| format!("m{m}'s lease expires"));
            }
        }
        if let Some((m, inc)) = self.etcd.leader {
            if self.etcd.leases[m].is_none_or(|l| l.incarnation != inc) {
                self.etcd.leader = None;
            }
        }
        if self.etcd.leader.is_none() {
            let candidate = (0..self.sc.n()).find(|m| {
                self.net.reaches_etcd(*m)
                    && self.etcd.leases[*m].is_some()
                    && !self.machines[*m].fenced
            });
            if let Some(m) = candidate {
                let incarnation = self.etcd.leases[m].unwrap().incarnation;
                self.etcd.leader = Some((m, incarnation));
                self.machines[m].engine = Some(Engine {
                    incarnation,
                    verdicts: Verdicts::new(self.timing),
                    round: None,
                });
                self.log(|| format!("m{m} becomes the engine"));
            }
        }
    }

    fn machine_tick(&mut self, m: usize) {
        let now = self.now;
        let local = self.local(m);
        let timing = self.timing;

        // Units finish starting or stopping.
        let mach = &mut self.machines[m];
        mach.units.retain(|_, run| match *run {
            Run::Stopping(until) => until > now,
            _ => true,
        });
        for run in mach.units.values_mut() {
            if matches!(*run, Run::Starting(at) if at <= now) {
                *run = Run::Running;
            }
        }

        // The keepalive loop: every third of the TTL; after a failure, again after a pause.
        if let Some(sent) = mach.outstanding {
            if local >= sent + REQUEST_TIMEOUT {
                mach.outstanding = None;
                let pause = if mach.fenced {
                    RETRY_PAUSE
                } else {
                    let until_at_risk = mach.guard.at_risk_from().saturating_sub(sent);
                    let pause = mach.retry_pause + mach.retry_pause / 4 * mach.retry_share / 1000;
                    mach.retry_pause = (mach.retry_pause * 2).min(MAX_RETRY_PAUSE);
                    // At risk, the urgent renewals go every `ask_every` (below), besides.
                    match until_at_risk.saturating_sub(local - sent) {
                        Duration::ZERO => RETRY_PAUSE,
                        left => pause.min(left),
                    }
                };
                mach.next_renewal = local + pause;
            }
        }
        let mut renew = false;
        if mach.outstanding.is_none() && local >= mach.next_renewal {
            mach.outstanding = Some(local);
            renew = true;
        }
        let at_risk = matches!(mach.guard.verdict(local), Verdict::Ask | Verdict::Confirmed);
        if self.sc.rules.urgent_renewals
            && at_risk
            && mach
                .last_urgent
                .is_none_or(|t| local >= t + timing.ask_every())
        {
            mach.last_urgent = Some(local);
            renew = true;
        }
        if renew {
            let for_round = None;
            self.send_to_etcd(
                m,
                Event::KeepAlive {
                    m,
                    sent: local,
                    for_round,
                },
            );
        }

        // Rounds of questions: collect, then ask again when due.
        let mach = &mut self.machines[m];
        let members = (mach.known | 1 << m).count_ones() as usize;
        let guard = &mut mach.guard;
        mach.asks.retain(|ask| {
            if local < ask.sent + timing.peer_timeout && ask.answers.len() < ask.asked {
                return true;
            }
            guard.round(ask.sent, ask.own_since, &ask.answers, members);
            false
        });
        if !mach.fenced && mach.guard.should_ask(local, mach.last_asked) {
            self.seq += 1;
            let id = self.seq;
            let mach = &mut self.machines[m];
            let own_since = mach.since_ack(local);
            let asked = (mach.known & !(1 << m)).count_ones() as usize;
            mach.asks.push(Ask {
                id,
                asked,
                sent: local,
                own_since,
                answers: Vec::new(),
            });
            mach.last_asked = Some(local);
            for to in ids(mach.known & !(1 << m)) {
                self.send_to_peer(m, to, Event::Question { asker: m, to, id });
            }
        }

        let verdict = self.machines[m].guard.verdict(local);
        if verdict != self.machines[m].verdict {
            self.machines[m].verdict = verdict;
            let known = ids(self.machines[m].known).collect::<Vec<_>>();
            self.log(|| format!("m{m}: {verdict:?} (members known: {known:?})"));
        }
        if !self.machines[m].fenced && verdict == Verdict::Fence {
            self.fence(m);
        }

        // Read the members and this machine's placements.
        if self.net.reaches_etcd(m) && self.etcd.up {
            self.machines[m].known = self.etcd.members;
            self.etcd.seen[m] = self.etcd.members_version;
            self.reconcile_units(m);
        }
    }

    fn fence(&mut self, m: usize) {
        let allowance = ms(self.timing.stop_allowance);
        let now = self.now;
        let mut units = std::mem::take(&mut self.machines[m].units);
        units.retain(|_, run| !matches!(run, Run::Starting(_)));
        for run in units.values_mut() {
            if *run == Run::Running {
                *run = Run::Stopping(now + self.stop_delay(allowance));
            }
        }
        let mach = &mut self.machines[m];
        mach.units = units;
        mach.fenced = true;
        self.outcome.fences += 1;
        self.outcome.fenced |= 1 << m;
        self.log(|| format!("m{m} FENCES"));
    }

    /// Half the time the longest stop allowed (the worst case), else anything within it.
    fn stop_delay(&mut self, allowance: Ms) -> Ms {
        if self.rng.percent(50) {
            allowance
        } else {
            self.rng.upto(allowance)
        }
    }

    /// A machine that read etcd: starts what is placed on it (if it may), stops what is not.
    fn reconcile_units(&mut self, m: usize) {
        let now = self.now;
        let allowance = ms(self.timing.stop_allowance);
        let placed: Vec<usize> = self.etcd.placed_on(m).collect();
        let registered = self.etcd.leases[m].is_some();
        let current: Vec<(usize, Run)> = self.machines[m]
            .units
            .iter()
            .map(|(u, r)| (*u, *r))
            .collect();
        for (u, run) in current {
            if placed.contains(&u) {
                continue;
            }
            match run {
                Run::Starting(_) => {
                    self.machines[m].units.remove(&u);
                }
                Run::Running => {
                    let until = now + self.stop_delay(allowance);
                    self.machines[m].units.insert(u, Run::Stopping(until));
                    self.log(|| format!("m{m} stops u{u}: placed elsewhere"));
                }
                Run::Stopping(_) => {}
            }
        }
        if self.machines[m].fenced || !registered {
            return;
        }
        for u in placed {
            let mach = &self.machines[m];
            if matches!(
                mach.units.get(&u),
                Some(Run::Running) | Some(Run::Starting(_))
            ) {
                continue;
            }
            // A unit still stopping from a fence is started again once it has stopped.
            if mach.units.contains_key(&u) {
                continue;
            }
            let delay = self.rng.upto(self.sc.start_delay);
            let run = if delay == 0 {
                Run::Running
            } else {
                Run::Starting(now + delay)
            };
            self.machines[m].units.insert(u, run);
            self.log(|| format!("m{m} starts u{u}"));
        }
    }

    fn engine_tick(&mut self, e: usize) {
        if has(self.net.stalled, e) {
            return;
        }
        let Some(mut engine) = self.machines[e].engine.take() else {
            return;
        };
        let local = self.local(e);
        let timing = self.timing;
        if let Some(r) = &engine.round {
            if local >= r.sent + timing.peer_timeout {
                let renewed = (r.renewed & r.eligible).count_ones() as usize;
                let quiet = if self.sc.rules.short_wait_needs_quiet {
                    (r.quiet & r.renewed & r.eligible).count_ones() as usize
                } else {
                    renewed
                };
                let majority = engine.verdicts.round(r.sent, renewed, quiet, r.members);
                let (sent, members) = (r.sent, r.members);
                self.log(|| {
                    format!(
                        "engine m{e}: round sent {sent:?}: {renewed}/{members} renewed, {quiet} quiet{}",
                        if majority { " (majority)" } else { "" }
                    )
                });
                engine.round = None;
            }
        }
        if !(self.net.reaches_etcd(e) && self.etcd.up) {
            self.machines[e].engine = Some(engine);
            return;
        }
        if self.etcd.leader != Some((e, engine.incarnation)) {
            self.log(|| format!("m{e} is no longer the engine"));
            return;
        }
        let present = self.etcd.present();
        let absent = self.etcd.members & !present;
        engine
            .verdicts
            .observe(local, ids(absent).map(|x| self.vanished_key(x)));
        for ((x, inc), _) in engine.verdicts.dead(local) {
            // Conditioned on the machine still not registered (and on its registration, when
            // keyed by it).
            if !has(self.etcd.members & !self.etcd.present(), x) || self.vanished_key(x).1 != inc {
                continue;
            }
            self.etcd.members &= !(1 << x);
            self.etcd.members_version += 1;
            for p in self.etcd.placements.iter_mut() {
                if *p == Some(x) {
                    *p = None;
                }
            }
            self.outcome.deaths += 1;
            self.log(|| format!("engine m{e}: m{x} is DEAD; its placements deleted"));
        }
        self.place_unplaced(e);
        if engine.round.is_none() && engine.verdicts.needs_round() {
            self.seq += 1;
            let id = self.seq;
            let members = self.etcd.members;
            let eligible = if self.sc.rules.joiners_wait {
                let absent = members & !self.etcd.present();
                let floor = ids(absent).map(|x| self.etcd.seen[x]).min();
                let floor = floor.unwrap_or(u64::MAX);
                let mut eligible = 0;
                for m in ids(members).filter(|m| self.etcd.joined[*m] <= floor) {
                    eligible |= 1 << m;
                }
                eligible
            } else {
                members
            };
            engine.round = Some(EngineRound {
                id,
                sent: local,
                members: members.count_ones() as usize,
                eligible,
                renewed: 0,
                quiet: 0,
            });
            for to in ids(members) {
                self.send_to_peer(e, to, Event::RenewNow { engine: e, to, id });
            }
        }
        self.machines[e].engine = Some(engine);
    }

    /// How the engine names vanished member `x`.
    fn vanished_key(&self, x: usize) -> (usize, u64) {
        if self.sc.rules.key_by_registration {
            (x, self.etcd.incarnations[x])
        } else {
            (x, 0)
        }
    }

    /// Each unplaced unit goes to the least loaded live member.
    fn place_unplaced(&mut self, e: usize) {
        let live = self.etcd.members & self.etcd.present();
        for u in 0..self.etcd.placements.len() {
            if self.etcd.placements[u].is_some() {
                continue;
            }
            let target = ids(live).min_by_key(|m| self.etcd.placed_on(*m).count());
            if let Some(t) = target {
                self.etcd.placements[u] = Some(t);
                self.outcome.moves += 1;
                self.log(|| format!("engine m{e}: u{u} placed on m{t}"));
            }
        }
    }

    // --- checks ------------------------------------------------------------------------------

    /// The machines running `u`.
    fn running(&self, u: usize) -> Mask {
        let mut mask = 0;
        for (m, mach) in self.machines.iter().enumerate() {
            if mach.runs(u) {
                mask |= 1 << m;
            }
        }
        mask
    }

    fn check_invariant(&mut self) -> Result<(), String> {
        let mut settled = true;
        for u in 0..self.sc.n() {
            let running = self.running(u);
            if running.count_ones() > 1 {
                return Err(format!(
                    "at {} ms unit u{u} runs on machines {:?}",
                    self.now,
                    ids(running).collect::<Vec<_>>()
                ));
            }
            settled &= running.count_ones() == 1;
        }
        if !settled {
            self.outcome.last_unsettled = Some(self.now);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running scenarios
// ---------------------------------------------------------------------------------------------

/// Runs `sc` until `until` (real ms), checking the invariant and `extra` after every tick.
/// On a failure, runs it again with a trace of what happened and returns both.
fn simulate(
    sc: &Scenario,
    until: Ms,
    extra: impl Fn(&World) -> Result<(), String> + Copy,
) -> Result<Outcome, String> {
    match run(sc, until, extra, false) {
        Ok(outcome) => Ok(outcome),
        Err((failure, _)) => {
            let (_, trace) = run(sc, until, extra, true).unwrap_err();
            let tail = trace.len().saturating_sub(150);
            Err(format!("{failure}\ntrace:\n{}", trace[tail..].join("\n")))
        }
    }
}

fn run(
    sc: &Scenario,
    until: Ms,
    extra: impl Fn(&World) -> Result<(), String>,
    trace: bool,
) -> Result<Outcome, (String, Vec<String>)> {
    let mut w = World::new(sc, trace);
    while w.now <= until {
        w.step();
        if let Err(e) = w.check_invariant().and_then(|()| extra(&w)) {
            return Err((e, w.trace.take().unwrap_or_default()));
        }
        w.now += TICK;
    }
    Ok(w.outcome)
}

/// How long after the last fault heals every unit runs on exactly one machine again, at most:
/// a TTL and a few seconds (in 20,000 cases, 1.8 s at most whatever the TTL).
fn settle_bound(sc: &Scenario) -> Ms {
    sc.lease_ms() + 3_000
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn ttl_secs() -> impl Strategy<Value = u64> {
    prop_oneof![4 => Just(5u64), 1 => Just(2u64), 1 => Just(30u64)]
}

fn clocks(n: usize) -> impl Strategy<Value = Vec<Clock>> {
    let drift = Timing::for_ttl(Duration::from_secs(5), REQUEST_TIMEOUT).drift_ppm as i64;
    proptest::collection::vec(
        (-drift..=drift, 0u64..1_000_000).prop_map(|(ppm, offset_ms)| Clock { ppm, offset_ms }),
        n,
    )
}

/// etcd's clock: often at either bound of the drift (the worst cases), else anywhere within.
fn etcd_clock() -> impl Strategy<Value = i64> {
    let drift = Timing::for_ttl(Duration::from_secs(5), REQUEST_TIMEOUT).drift_ppm as i64;
    prop_oneof![Just(drift), Just(-drift), -drift..=drift]
}

/// One machine, or any proper subset.
fn mask(n: usize) -> impl Strategy<Value = Mask> {
    let full = all(n);
    prop_oneof![
        (0..n).prop_map(|i| 1 << i),
        (1..full).prop_map(|m| m as Mask)
    ]
}

/// A majority of the machines, not all of them.
fn majority_mask(n: usize) -> impl Strategy<Value = Mask> {
    let majority = n / 2 + 1;
    (1..all(n)).prop_filter("a majority", move |m| (m.count_ones() as usize) >= majority)
}

fn kind(n: usize) -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => Just(Kind::EtcdDown),
        2 => mask(n).prop_map(Kind::CutEtcd),
        1 => majority_mask(n).prop_map(Kind::CutEtcd),
        2 => mask(n).prop_map(Kind::CutPeers),
        2 => mask(n).prop_map(Kind::Isolate),
        1 => prop_oneof![Just(5u8), Just(30u8)].prop_map(Kind::Lossy),
        1 => mask(n).prop_map(Kind::EngineStall),
    ]
}

/// Up to six faults, each starting within the first two TTLs (20 s at least) and lasting up to
/// two TTLs and 5 s.
fn random_faults(n: usize, ttl: Ms) -> BoxedStrategy<Vec<Fault>> {
    let window = (2 * ttl).max(20_000);
    let longest = 2 * ttl + 5_000;
    proptest::collection::vec(
        (0..window, 0..longest, kind(n)).prop_map(|(start, duration, kind)| Fault {
            start,
            duration,
            kind,
        }),
        0..=6,
    )
    .boxed()
}

/// Delays as fleetd sees them in a healthy network, or anything within their bounds.
#[derive(Clone, Copy)]
enum Delays {
    Healthy,
    Any,
}

/// 3 to 7 machines with drifting clocks, a TTL from `ttl_secs`, the faults from `faults`
/// (given the number of machines and the TTL in ms), and the delays.
fn scenario_with(
    delays: Delays,
    ttl_secs: impl Strategy<Value = u64>,
    faults: fn(usize, Ms) -> BoxedStrategy<Vec<Fault>>,
) -> impl Strategy<Value = Scenario> {
    (3usize..=MAX_MACHINES, ttl_secs).prop_flat_map(move |(n, ttl_secs)| {
        let timing = Timing::for_ttl(Duration::from_secs(ttl_secs), REQUEST_TIMEOUT);
        let half_peer = ms(timing.peer_timeout) / 2;
        let (etcd_delay, peer_delay) = match delays {
            Delays::Healthy => (
                prop_oneof![Just(5u64), Just(30)].boxed(),
                prop_oneof![Just(10u64), Just(50)].boxed(),
            ),
            Delays::Any => (
                prop_oneof![Just(5u64), Just(50), Just(200), Just(ms(REQUEST_TIMEOUT))].boxed(),
                prop_oneof![Just(10u64), Just(half_peer)].boxed(),
            ),
        };
        (
            clocks(n),
            etcd_clock(),
            proptest::collection::vec(0..ms(timing.ttl) / 3, n),
            any::<u64>(),
            etcd_delay,
            peer_delay,
            prop_oneof![Just(0u64), Just(300)],
            faults(n, ttl_secs * 1_000),
        )
            .prop_map(
                move |(
                    clocks,
                    etcd_ppm,
                    phases,
                    seed,
                    etcd_delay,
                    peer_delay,
                    start_delay,
                    faults,
                )| {
                    Scenario {
                        clocks,
                        etcd_ppm,
                        phases,
                        ttl_secs,
                        seed,
                        etcd_delay,
                        peer_delay,
                        start_delay,
                        faults,
                        rules: Rules::documented(),
                    }
                },
            )
    })
}

fn scenario(delays: Delays) -> impl Strategy<Value = Scenario> {
    scenario_with(delays, ttl_secs(), random_faults)
}

fn fault(start: Ms, end: Ms, kind: Kind) -> Fault {
    Fault {
        start,
        duration: end - start,
        kind,
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// `default` cases, or as many as `PROPTEST_CASES` says (for longer searches).
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok());
    ProptestConfig::with_cases(cases.unwrap_or(default))
}

fn no_extra(_: &World) -> Result<(), String> {
    Ok(())
}

/// Every unit runs where it was placed at the start, and nobody has fenced.
fn nothing_moves(w: &World) -> Result<(), String> {
    for u in 0..w.sc.n() {
        if w.running(u) != 1 << u || w.etcd.placements[u] != Some(u) {
            return Err(format!(
                "at {} ms unit u{u} runs on {:?}, placed on {:?}",
                w.now,
                ids(w.running(u)).collect::<Vec<_>>(),
                w.etcd.placements[u]
            ));
        }
    }
    if w.outcome.fences > 0 {
        return Err(format!(
            "at {} ms machines {:?} have fenced",
            w.now,
            ids(w.outcome.fenced).collect::<Vec<_>>()
        ));
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    /// Whatever the faults and delays: no unit ever runs on two machines.
    #[test]
    fn a_unit_never_runs_on_two_machines(sc in scenario(Delays::Any)) {
        let until = sc.healed() + settle_bound(&sc) + 3_000;
        simulate(&sc, until, no_extra).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(cases(128))]

    /// Once every fault has healed, every unit runs on exactly one machine within a TTL and a
    /// few seconds, and stays so.
    #[test]
    fn the_cluster_settles_once_the_faults_heal(sc in scenario(Delays::Healthy)) {
        let healed = sc.healed();
        let until = healed + settle_bound(&sc) + 5_000;
        let outcome = simulate(&sc, until, no_extra).map_err(TestCaseError::fail)?;
        let settled_by = outcome.last_unsettled.map_or(0, |t| t + TICK);
        prop_assert!(
            settled_by <= healed + settle_bound(&sc),
            "healed at {healed} ms, settled only at {settled_by} ms: {outcome:?}"
        );
    }
}

proptest! {
    #![proptest_config(cases(32))]

    /// etcd down for everyone for 20 s: every member confirms every other, nobody fences, no
    /// unit stops or moves.
    #[test]
    fn etcd_down_for_everyone_stops_nothing(
        sc in scenario_with(Delays::Healthy, prop_oneof![Just(5u64), Just(30)], |_, ttl| {
            (1_000..ttl).prop_map(|start| vec![fault(start, start + 20_000, Kind::EtcdDown)]).boxed()
        })
    ) {
        let until = sc.healed() + settle_bound(&sc);
        simulate(&sc, until, nothing_moves).map_err(TestCaseError::fail)?;
    }

    /// A majority cut off from etcd, reaching each other: they keep their units, and the
    /// engine (on the minority) moves nothing.
    #[test]
    fn a_majority_cut_from_etcd_keeps_its_units(
        sc in scenario_with(Delays::Healthy, prop_oneof![Just(5u64), Just(30)], |n, ttl| {
            (1_000..ttl, majority_mask(n))
                .prop_map(move |(start, cut)| vec![fault(start, start + 3 * ttl, Kind::CutEtcd(cut))])
                .boxed()
        })
    ) {
        let until = sc.healed() + settle_bound(&sc);
        simulate(&sc, until, nothing_moves).map_err(TestCaseError::fail)?;
    }

    /// One machine cut off from everything: it fences before its lease can expire, and its unit
    /// runs elsewhere within a TTL, the stop allowance and a second: it asked nobody anything,
    /// so the members that renew on request are quiet and the engine waits only the stop
    /// allowance.
    #[test]
    fn a_machine_cut_off_from_everything_fences_and_its_unit_moves(
        (sc, lone) in scenario_with(Delays::Healthy, prop_oneof![Just(5u64), Just(30)], |n, ttl| {
            (1_000..ttl, 0..n)
                .prop_map(|(start, lone)| vec![fault(start, u64::MAX / 2, Kind::Isolate(1 << lone))])
                .boxed()
        })
        .prop_map(|sc| {
            let Kind::Isolate(lone) = sc.faults[0].kind else { unreachable!() };
            (sc, lone.trailing_zeros() as usize)
        })
    ) {
        let cut = sc.faults[0].start;
        let timing = sc.timing();
        let fenced_by = cut + ms(timing.ttl);
        // etcd's clock, not the machine's, says when the lease is gone.
        let moved_by = cut + sc.lease_ms() + ms(timing.quiet_wait()) + 1_000;
        let check = move |w: &World| {
            let others = all(w.sc.n()) & !(1 << lone);
            if w.outcome.fenced & others != 0 {
                return Err(format!("at {} ms another machine fenced", w.now));
            }
            if w.now >= fenced_by && w.outcome.fenced != 1 << lone {
                return Err(format!("at {} ms m{lone} has not fenced", w.now));
            }
            if w.now >= moved_by && (w.running(lone) & others).count_ones() != 1 {
                return Err(format!("at {} ms u{lone} does not run elsewhere", w.now));
            }
            Ok(())
        };
        simulate(&sc, moved_by + 2_000, check).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Counterexamples: each rule of the module documentation, and what happens without it
// ---------------------------------------------------------------------------------------------

/// Perfect clocks, a TTL of 5 s, short delays: only the faults matter. Machine 0 is the
/// engine.
fn directed(n: usize, faults: Vec<Fault>, rules: Rules) -> Scenario {
    Scenario {
        clocks: vec![
            Clock {
                ppm: 0,
                offset_ms: 0
            };
            n
        ],
        etcd_ppm: 0,
        phases: (0..n as u64).map(|m| 1_000 + m * 100).collect(),
        ttl_secs: 5,
        seed: 1,
        etcd_delay: 5,
        peer_delay: 10,
        start_delay: 0,
        faults,
        rules,
    }
}

/// Runs `faults` without a rule (expecting `failure`) and with every rule (expecting none).
fn only_the_rule_prevents(
    n: usize,
    faults: Vec<Fault>,
    until: Ms,
    without: Rules,
    extra: impl Fn(&World) -> Result<(), String> + Copy,
    failure: &str,
) {
    match run(&directed(n, faults.clone(), without), until, extra, false) {
        Err((e, _)) => assert!(e.contains(failure), "{e}"),
        Ok(outcome) => panic!("without the rule, expected {failure:?}: {outcome:?}"),
    }
    if let Err(e) = simulate(&directed(n, faults, Rules::documented()), until, extra) {
        panic!("{e}");
    }
}

/// Five machines, m0 the engine. m3 and m4 are cut off from everything at 1 s; they fence at
/// 4.95 s and, having asked nobody reachable, are declared dead at 6.09 s (members now m0, m1,
/// m2). m2 is cut off from etcd at 5.5 s, having last read the members when they still held m3
/// and m4. At 9 s m3 and m4 reach their peers again (not etcd). m2, its lease at risk, asks
/// m0, m1, m3 and m4; m3 and m4, cut off from etcd too, answer that they are: 3 of 5,
/// confirmed at 9.23 s. m2's lease expires at 10.02 s; the engine counts 2 renewals (m0, m1)
/// of its 3 members, declares m2 dead at 12.47 s and starts u2 on m0 at 12.48 s, while m2,
/// still confirmed, runs it. With fenced machines answering zero, m2 is never confirmed and
/// fences before its lease expires.
#[test]
fn without_fenced_machines_answering_zero_a_unit_runs_twice() {
    let faults = vec![
        fault(1_000, 9_000, Kind::Isolate(0b11000)),
        fault(9_000, 40_000, Kind::CutEtcd(0b11000)),
        fault(5_500, 40_000, Kind::CutEtcd(0b00100)),
    ];
    let without = Rules {
        fenced_answer_zero: false,
        ..Rules::documented()
    };
    let failure = "unit u2 runs on machines [0, 2]";
    only_the_rule_prevents(5, faults, 45_000, without, no_extra, failure);
}

/// Five machines, m0 the engine. m3 and m4 are cut off from everything at 1 s and declared
/// dead at 7.03 s (members m0, m1, m2). m1 and m2 are cut off from etcd at 8 s, knowing those
/// three members. m3 and m4 reach etcd again at 9 s and register again at 10.3 s: 5 members.
/// m1 and m2 confirm each other (2 of the 3 they know) from 10.78 s and keep their units; their
/// leases expire at 12.8 s. The engine counts the renewals of m0, m3 and m4, 3 of 5, declares
/// m1 dead at 14.85 s and starts u1 on m3 at 14.86 s, while m1, still confirmed by m2, runs
/// it. With joiners waiting, m3 and m4 count only once m1 and m2 have read the members holding
/// them, and m0 alone is no majority.
#[test]
fn without_joiners_waiting_a_unit_runs_twice() {
    let faults = vec![
        fault(1_000, 9_000, Kind::Isolate(0b11000)),
        fault(8_000, 40_000, Kind::CutEtcd(0b00110)),
    ];
    let without = Rules {
        joiners_wait: false,
        ..Rules::documented()
    };
    let failure = "unit u1 runs on machines [1, 3]";
    only_the_rule_prevents(5, faults, 45_000, without, no_extra, failure);
}

/// Three machines, m0 the engine. m1 is cut off from everything at 1 s: it fences at 4.95 s,
/// the engine sees its lease gone at 5 s and a majority renew (m0, m2): m1 is due to be
/// declared dead at 7.03 s. But the engine's loop stalls from 6 s to 20 s (its keepalives go
/// on). m1 is back at 7.5 s, registers again at 8.6 s, reads u1 still placed on it and starts
/// it. At 10 s m1 and m2 are cut off from etcd; they confirm each other (2 of 3) from 11.56 s
/// and keep their units; their leases expire at 13.6 s and 14.6 s. At 20 s the engine resumes,
/// sees m1 gone and, naming it by machine alone, declares it dead at once on the round of 5 s:
/// u1 starts on m0 at 20.01 s while m1 runs it. Named by registration, the new absence needs
/// a round of its own, which finds no majority.
#[test]
fn without_naming_vanished_machines_by_registration_a_unit_runs_twice() {
    let faults = vec![
        fault(1_000, 7_500, Kind::Isolate(0b010)),
        fault(6_000, 20_000, Kind::EngineStall(0b001)),
        fault(10_000, 30_000, Kind::CutEtcd(0b110)),
    ];
    let without = Rules {
        key_by_registration: false,
        ..Rules::documented()
    };
    let failure = "unit u1 runs on machines [0, 1]";
    only_the_rule_prevents(3, faults, 35_000, without, no_extra, failure);
}

/// Three machines renewing at different phases, etcd down for everyone from 2.3 s to 22.3 s:
/// all confirm each other meanwhile. When etcd comes back, the first to renew answer from then
/// on that they are not cut off. A machine whose renewals wait for an attempt made during the
/// outage to time out (1 s) and then pause (500 ms) can see its last confirmation lapse first,
/// and fence, for some phases of the renewals (searched here). Renewing every `ask_every`
/// while its lease is at risk, it renews in time, whatever the phases.
#[test]
fn without_urgent_renewals_etcd_coming_back_fences_machines() {
    let without = Rules {
        urgent_renewals: false,
        ..Rules::documented()
    };
    let mut fenced_without = None;
    'search: for end in (0..1_500).step_by(100) {
        for p1 in (0..3_300).step_by(100) {
            let faults = vec![fault(2_300, 22_300 + end, Kind::EtcdDown)];
            let mut sc = directed(3, faults.clone(), without);
            sc.phases = vec![0, p1, 1_200];
            if let Err((e, _)) = run(&sc, 30_000, nothing_moves, false) {
                if e.contains("have fenced") {
                    fenced_without = Some((p1, e));
                    break 'search;
                }
            }
            sc.rules = Rules::documented();
            if let Err(e) = simulate(&sc, 30_000, nothing_moves) {
                panic!("phases {:?}: {e}", sc.phases);
            }
        }
    }
    assert!(
        fenced_without.is_some(),
        "no phase made a machine fence without urgent renewals"
    );
}

/// Five machines, m0 the engine, a TTL of 30 s (renewals every 10 s, so a healthy member has
/// often had none acknowledged for `confirm_after`). m3 and m4 are cut off from etcd at 1 s,
/// not from their peers: when their leases come to risk they ask, and m3, m4 and a healthy
/// member that last renewed long enough ago make 3 of 5: they stay confirmed. Their leases
/// expire; the engine's round finds m0, m1 and m2 renewing on request, a majority, but each of
/// them had answered m3's and m4's questions just before. Waiting only the stop allowance,
/// the engine declares m3 dead while m3's last confirmation still lasts and starts u3
/// elsewhere while m3 runs it. With the rule, those members are not quiet: the whole wait.
#[test]
fn without_a_quiet_majority_the_short_wait_runs_a_unit_twice() {
    let faults = vec![fault(1_000, 80_000, Kind::CutEtcd(0b11000))];
    let without = Rules {
        short_wait_needs_quiet: false,
        ..Rules::documented()
    };
    let mut found = None;
    for p in (0..10_000).step_by(500) {
        let mut sc = directed(5, faults.clone(), without);
        sc.ttl_secs = 30;
        sc.phases = vec![1_000, 1_000 + p, 1_000 + (p * 7) % 10_000, 1_000, 1_100];
        if let Err((e, _)) = run(&sc, 80_000, no_extra, false) {
            assert!(e.contains("runs on machines"), "{e}");
            found = Some(e);
        }
        sc.rules = Rules::documented();
        if let Err(e) = simulate(&sc, 80_000, no_extra) {
            panic!("phases {:?}: {e}", sc.phases);
        }
    }
    assert!(
        found.is_some(),
        "no phase made a unit run twice with the short wait after every majority"
    );
}
