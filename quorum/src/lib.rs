//! When a machine that cannot reach etcd may keep running its units, and when the engine may
//! move the units of a machine that vanished from etcd. Pure: no IO, no clock, no
//! dependencies. Times are [`Duration`]s since an arbitrary origin on the deciding machine's own
//! monotonic clock; no two machines' clocks are ever compared.
//!
//! # The protocol
//!
//! Both sides count a **majority of the cluster's members** (every machine registered and not
//! yet declared dead), each asking the members over the peer endpoint:
//!
//! - A machine whose lease renewals fail keeps its units past the time its lease could expire
//!   only while it holds a *confirmation*: a round of questions, sent at most
//!   [`Timing::validity`] ago, in which a majority of the members (itself included) answered
//!   that no renewal of theirs was acknowledged for at least [`Timing::confirm_after`]
//!   ([`Guard`]). Otherwise it fences: it stops its units.
//! - The engine declares a vanished machine dead (removes its placements, so that its units are
//!   placed elsewhere) only after a round, sent after it saw the machine's lease gone, in which
//!   a majority of the members renewed their lease on request, and then only
//!   [`Timing::engine_wait`] after that round was sent ([`Verdicts`]); only
//!   [`Timing::quiet_wait`] after it if each member of that majority also said it had answered
//!   no peer's question for [`Timing::quiet_after`] (the common case: a machine that died, or
//!   lost the network, asked nobody anything).
//!
//! # Why a unit never runs twice
//!
//! Let the engine's round be sent at `s` (real time). Each member `m` of its majority had a
//! renewal acknowledged within `[s, s + T]` (`T` = [`Timing::peer_timeout`] bounds a round).
//! A confirmation round of the vanished machine sent at `q` counts `m` only if `m` answered, at
//! some time in `[q, q + T]`, that it had no acknowledgement for `D` (`confirm_after`), i.e.
//! none in `[q + T - D, q]`. Two majorities of the same members share a member, so no
//! confirmation round sent in `[s + T, s + D - T]` succeeds. With `D ≥ 2T + F`
//! (`F` = `validity`), that interval is longer than `F`: the vanished machine's last
//! confirmation was sent before `s + T`, lapses before `s + T + F`, and it fences then at the
//! latest (or earlier, at its lease's expiry, if it never had one; the engine's round comes
//! after that expiry, since it starts from seeing the lease gone). It has stopped its units
//! `S` later (`stop_allowance`). The engine moves them no sooner than
//! `s + T + F + S` ([`Timing::engine_wait`]), and only if the machine has not registered
//! again meanwhile. Every duration is measured on one machine's clock and widened by the
//! clock-rate bound [`Timing::drift_ppm`] where it matters, so drifting clocks keep the argument;
//! a lease's expiry, which etcd times on its clock and the machine reckons on its own, is
//! narrowed by the bound for each ([`Guard::expiry`]).
//!
//! # Why a quiet majority needs only the stop allowance
//!
//! Each member of the engine's majority also says, when it answers at some `r` in `[s, s + T]`,
//! how long it has answered no peer's question with anything but zero; the engine counts it
//! *quiet* if that is at least `T + F` ([`Timing::quiet_after`]). Every confirmation round of
//! the vanished machine counts a member of the engine's majority (two majorities of the same
//! members share one). If that member answered it before `r`, it did so before `r - (T + F)
//! ≤ s - F`, and that confirmation lapsed before `s`. If after `r`, its renewal had been
//! acknowledged before `r`, so it answered that it is cut off `D` after that at the earliest:
//! the round was sent after `s + D - T`. So the vanished machine holds no confirmation
//! anywhere in `[s, s + D - T]`, and its lease's expiry as it reckons it ([`Guard::expiry`],
//! shortened for its own clock running slow and etcd's running fast) came before etcd's, so
//! before the engine saw the lease gone, before `s`: it has fenced by `s`, latched, and stopped
//! its units by `s + S` ([`Timing::quiet_wait`]). A member that restarted counts its quiet
//! from its start: it knows nothing of the questions it answered before.
//!
//! # What the callers must do for the argument to hold
//!
//! The argument needs both sides to count majorities of the same members, and the engine to
//! see one absence as one absence. Three rules keep it so; without any one of them a unit can
//! run twice (the counterexamples are in `tests/simulation.rs`):
//!
//! - **A fenced machine answers zero** ([`Guard::answer`]). The engine drops the machines it
//!   declares dead from the members, but a machine cut off from etcd since then still counts
//!   them, and they, cut off too, would answer that they are: with the asker they can make up
//!   a majority of its members that shares no machine with the engine's majority. A machine
//!   declared dead has fenced (that is what the argument shows) and stays fenced until a
//!   renewal is acknowledged ([`Guard::verdict`] latches), which for a machine declared dead
//!   means registering again, as a member again; so while it is not a member it counts for
//!   nobody.
//! - **The engine counts only the renewals of members every vanished machine knew of**
//!   ([`Verdicts::round`]). A machine that joins the members (or joins again, after being
//!   declared dead) while others are cut off from etcd is unknown to them: they count their
//!   majority over fewer members than the engine does. Each machine records which version of
//!   the members it last read; a member's renewal counts only if it joined at a version no
//!   later than the one every vanished machine read.
//! - **A vanished machine is named by its registration** ([`Verdicts::observe`]): machine and
//!   lease, not machine alone, and it is declared dead only if that registration is still the
//!   latest one and still gone. Otherwise an engine that did not look for a while (a stalled
//!   loop, a short partition from etcd) misses the machine registering again, running its
//!   units again and vanishing again, and declares it dead on the strength of a round sent
//!   before all that.
//!
//! # What the callers must do for the protocol to be of use
//!
//! When etcd is down for everyone, every member confirms every other, so no unit stops; the
//! engine cannot move anything meanwhile (it needs etcd), and etcd itself extends every lease
//! when it elects a leader again. But when etcd comes back, the members that renew first stop
//! confirming the others, whose confirmations then lapse within [`Timing::validity`]: a
//! machine whose lease is at risk must try to renew at least every [`Timing::ask_every`],
//! without waiting for an earlier attempt to time out, or it fences needlessly.
//!
//! A majority cut off from etcd can confirm only once its members' last acknowledgements are
//! [`Timing::confirm_after`] old, before the earliest of their leases can expire: with
//! renewals every third of the TTL, that needs `(2/3 - 2 drift) TTL > confirm_after +
//! peer_timeout` (the expiry as [`Guard::expiry`] reckons it) and
//! some room for delays: with the bounds of [`Timing::for_ttl`] (`confirm_after` 1.7 s,
//! `peer_timeout` 0.3 s), a TTL of 4 s at least (fleet's default is 30 s, the local cluster's
//! 10 s). With less, such a majority often fences, depending on how the members' renewals are
//! spread.
//!
//! The bounds assume that a round's answers are counted only if they came within
//! `peer_timeout` of its sending (the callers drop a round that took longer, a stall of the
//! asker included), and that a fenced machine stops its units within `stop_allowance` of the
//! lapse of its last confirmation; a unit whose stop takes longer (systemd's `TimeoutStopSec`)
//! is outside what this protocol can promise.

use std::collections::BTreeMap;
use std::time::Duration;

/// The protocol's time bounds, derived from the lease TTL ([`Timing::for_ttl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The machines' lease TTL.
    pub ttl: Duration,
    /// How long before its lease could expire a machine whose renewals fail starts asking its
    /// peers (at least one failed renewal's worth, at most half the TTL).
    pub ask_ahead: Duration,
    /// Bound on one round of questions, from sending to the last answer counted (`T`).
    pub peer_timeout: Duration,
    /// How long a confirmation lasts after its round was sent (`F`).
    pub validity: Duration,
    /// How long a machine may take to stop its units once it fences (`S`).
    pub stop_allowance: Duration,
    /// Bound on the rate error of any machine's clock, in parts per million.
    pub drift_ppm: u32,
}

/// Parts per million in one.
const PPM: u64 = 1_000_000;

/// Slack added to derived bounds, for rounding and scheduling.
const SLACK: Duration = Duration::from_millis(50);

impl Timing {
    /// The bounds fleetd uses for a lease of `ttl` renewed with requests bounded by
    /// `request_timeout`.
    pub fn for_ttl(ttl: Duration, request_timeout: Duration) -> Timing {
        let ask_ahead = (request_timeout + Duration::from_secs(1)).min(ttl / 2);
        Timing {
            ttl,
            ask_ahead,
            peer_timeout: Duration::from_millis(300),
            validity: Duration::from_secs(1),
            stop_allowance: Duration::from_secs(1),
            drift_ppm: 10_000,
        }
    }

    /// `d` as the shortest real time it can take on a clock that runs fast.
    fn narrowed(&self, d: Duration) -> Duration {
        mul_ppm(d, PPM.saturating_sub(self.drift_ppm as u64))
    }

    /// `D`: a member confirms it is cut off from etcd when no renewal of its own was
    /// acknowledged for this long (`2T + F`, measured on the member's clock so that it is at
    /// least that long in real time).
    pub fn confirm_after(&self) -> Duration {
        self.with_drift(2 * self.peer_timeout + self.validity)
    }

    /// How long after sending a round that found a majority connected the engine waits before
    /// it declares dead the machines that had vanished before that round (`T + F + S` in real
    /// time at least, measured on the engine's clock).
    pub fn engine_wait(&self) -> Duration {
        self.with_drift(self.peer_timeout + self.validity + self.stop_allowance)
    }

    /// How long a member must have answered no peer's question (with anything but zero) for
    /// the engine to count its renewal on request as quiet: `T + F` in real time at least,
    /// measured on the member's clock, for an answer given within `T` of the round's sending
    /// on the engine's.
    pub fn quiet_after(&self) -> Duration {
        self.with_drift(self.peer_timeout + self.validity)
    }

    /// How long after sending a round in which a *quiet* majority renewed on request the
    /// engine waits before it declares dead the machines that had vanished before that round:
    /// `S` in real time at least, measured on the engine's clock (the vanished machine fenced
    /// by the round's sending: see the module documentation).
    pub fn quiet_wait(&self) -> Duration {
        self.with_drift(self.stop_allowance)
    }

    /// How long after sending a round that found `round` the engine waits before it declares
    /// dead the machines that had vanished before it: none for a round without a majority.
    pub fn wait(&self, round: Round) -> Option<Duration> {
        match round {
            Round::NoMajority => None,
            Round::Renewed => Some(self.engine_wait()),
            Round::Quiet => Some(self.quiet_wait()),
        }
    }

    /// A bound in real time as a duration on a clock that may run fast, when the bound's own
    /// parts were measured on clocks that may run slow: four times the drift covers both,
    /// plus the slack.
    fn with_drift(&self, real: Duration) -> Duration {
        mul_ppm(real, PPM + 4 * self.drift_ppm as u64) + SLACK
    }

    /// How often a machine whose lease is at risk asks its peers again.
    pub fn ask_every(&self) -> Duration {
        self.validity / 4
    }
}

fn mul_ppm(d: Duration, ppm: u64) -> Duration {
    let nanos = d.as_nanos().saturating_mul(ppm as u128) / PPM as u128;
    Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
}

/// The smallest majority of `members`.
pub fn majority(members: usize) -> usize {
    members / 2 + 1
}

/// What a machine whose lease renewals fail must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The lease cannot have expired yet: nothing to do.
    Renewing,
    /// The lease may expire soon or may have expired: ask the peers, keep the units meanwhile.
    Ask,
    /// A majority of the members confirmed being cut off too: keep the units.
    Confirmed,
    /// Stop the units: the engine may move them.
    Fence,
}

/// One machine's side: whether it may keep its units while its lease is not renewed.
#[derive(Debug, Clone)]
pub struct Guard {
    timing: Timing,
    /// When the keepalive behind the latest renewal was sent.
    renewed_sent: Duration,
    /// The end of the current confirmation.
    confirmed_until: Option<Duration>,
    /// Set by the first [`Verdict::Fence`], until the next renewal.
    fenced: bool,
}

impl Guard {
    /// A guard for a lease granted (or renewed) by a request sent at `sent_at`.
    pub fn new(timing: Timing, sent_at: Duration) -> Guard {
        Guard {
            timing,
            renewed_sent: sent_at,
            confirmed_until: None,
            fenced: false,
        }
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The lease was renewed (or granted anew) by a request sent at `sent_at`. This also ends a
    /// fence, unless the renewal is too old to keep the lease ([`Guard::verdict`] then fences
    /// again).
    pub fn renewed(&mut self, sent_at: Duration) {
        self.renewed_sent = self.renewed_sent.max(sent_at);
        self.confirmed_until = None;
        self.fenced = false;
    }

    /// The earliest time the lease can expire in etcd, on this machine's clock: the TTL from
    /// the latest renewal's request, shortened by two drift bounds, one for each clock that
    /// measures it (this machine's running slow, the etcd leader's running fast: etcd times
    /// the lease on its own). The engine's round comes after etcd's expiry, which the
    /// arguments need this to precede.
    pub fn expiry(&self) -> Duration {
        let ppm = PPM.saturating_sub(2 * self.timing.drift_ppm as u64);
        self.renewed_sent + mul_ppm(self.timing.ttl, ppm)
    }

    /// Records a round of questions sent at `sent_at` to the other members: `answers` holds,
    /// for each member that answered within [`Timing::peer_timeout`], how long it had had no
    /// renewal acknowledged. `members` counts every member, this machine included, and
    /// `own_since` is the same measure for this machine. Returns whether the round confirmed
    /// (never once fenced). The round may be recorded as soon as every member answered.
    pub fn round(
        &mut self,
        sent_at: Duration,
        own_since: Duration,
        answers: &[Duration],
        members: usize,
    ) -> bool {
        if self.fenced {
            return false;
        }
        // Due to fence when the round was sent (a confirmation lapsed unseen, say after a
        // stall): a later round does not bring the units back.
        if self.assess(sent_at) == Verdict::Fence {
            self.fenced = true;
            return false;
        }
        let d = self.timing.confirm_after();
        let cut_off = answers.iter().filter(|a| **a >= d).count() + usize::from(own_since >= d);
        let confirmed = cut_off >= majority(members.max(answers.len() + 1));
        if confirmed {
            let until = sent_at + self.timing.narrowed(self.timing.validity);
            self.confirmed_until = Some(self.confirmed_until.map_or(until, |u| u.max(until)));
        }
        confirmed
    }

    /// What to do at `now`. Once this says [`Verdict::Fence`] it keeps saying so until the next
    /// renewal, even if a later round would confirm: the machine has stopped its units and may
    /// have been declared dead, so it runs units again only once renewed (or registered again),
    /// and only those it then reads placed on it.
    pub fn verdict(&mut self, now: Duration) -> Verdict {
        let verdict = self.assess(now);
        self.fenced = verdict == Verdict::Fence;
        verdict
    }

    /// Fences now, whatever the confirmations (the lease was found gone, say), until the next
    /// renewal.
    pub fn fence(&mut self) {
        self.fenced = true;
    }

    /// Whether the machine has fenced since its latest renewal.
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// What this machine answers a peer's question, given how long it has had no renewal of its
    /// own acknowledged: that, or zero while it is fenced. A fenced machine may have been
    /// declared dead and dropped from the members, and must not count towards a majority the
    /// engine does not count it in (see the module documentation).
    pub fn answer(&self, since_ack: Duration) -> Duration {
        if self.fenced {
            Duration::ZERO
        } else {
            since_ack
        }
    }

    fn assess(&self, now: Duration) -> Verdict {
        if self.fenced {
            return Verdict::Fence;
        }
        if self.confirmed_until.is_some_and(|u| now < u) {
            return Verdict::Confirmed;
        }
        let expiry = self.expiry();
        if now >= expiry {
            Verdict::Fence
        } else if now + self.timing.ask_ahead >= expiry {
            Verdict::Ask
        } else {
            Verdict::Renewing
        }
    }

    /// Whether the lease may expire within [`Timing::ask_ahead`]: renewals are then tried
    /// every [`Timing::ask_every`], each given no longer than twice that (an attempt stuck on a
    /// connection etcd no longer answers must not keep a renewal waiting while confirmations
    /// lapse).
    pub fn at_risk(&self, now: Duration) -> bool {
        now + self.timing.ask_ahead >= self.expiry()
    }

    /// When the lease comes to risk ([`Guard::at_risk`] from then on, until a renewal).
    pub fn at_risk_from(&self) -> Duration {
        self.expiry().saturating_sub(self.timing.ask_ahead)
    }

    /// Whether a round sent at `now` is due: the lease is at risk, the machine has not fenced,
    /// and the last round (answered or not) was sent at least [`Timing::ask_every`] ago. Rounds
    /// go out at that pace whether or not the earlier ones have been answered: a confirmation
    /// lasts [`Timing::validity`], four rounds' worth, so that one or two slow answers do not
    /// leave it to lapse with no round behind it.
    pub fn should_ask(&self, now: Duration, last_sent: Option<Duration>) -> bool {
        !self.fenced
            && self.at_risk(now)
            && last_sent.is_none_or(|s| now >= s + self.timing.ask_every())
    }

    /// The next time after `now` at which [`Guard::verdict`] may change by itself (a
    /// confirmation lapsing, the lease coming to risk or to its possible expiry), if any: a
    /// caller that looks again then fences without delay.
    pub fn next_change(&self, now: Duration) -> Option<Duration> {
        if self.fenced {
            return None;
        }
        let expiry = self.expiry();
        [
            self.confirmed_until,
            Some(self.at_risk_from()),
            Some(expiry),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
    }
}

/// What one of the engine's rounds found for one vanished member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// The members that renewed on request make no majority of those it counts.
    NoMajority,
    /// They make a majority: it may be declared dead [`Timing::engine_wait`] after the round
    /// was sent.
    Renewed,
    /// They make a majority counting only those that were also quiet (had answered no peer's
    /// question for [`Timing::quiet_after`]): [`Timing::quiet_wait`] after.
    Quiet,
}

/// The engine's side: which vanished members may be declared dead.
#[derive(Debug, Clone)]
pub struct Verdicts<K> {
    timing: Timing,
    missing: BTreeMap<K, Missing>,
}

#[derive(Debug, Clone, Copy)]
struct Missing {
    /// When this engine first saw the member's lease gone.
    since: Duration,
    /// When it may be declared dead, once a round found a majority connected, and what that
    /// round found.
    dead_at: Option<(Duration, Round)>,
}

impl<K: Ord + Clone> Verdicts<K> {
    pub fn new(timing: Timing) -> Verdicts<K> {
        Verdicts {
            timing,
            missing: BTreeMap::new(),
        }
    }

    /// The members whose lease is gone, as read by a request answered at `now`. A member seen
    /// again is forgotten, so a later absence starts afresh.
    ///
    /// `K` must name a member's registration (machine and lease, say), not the machine alone:
    /// the engine may not see every read in between (a stalled loop, a short partition), and a
    /// machine that registered again, ran its units again and vanished again unseen must not
    /// inherit a verdict on its earlier absence. The caller declares a member dead only if that
    /// registration is still the latest one and still gone.
    pub fn observe(&mut self, now: Duration, absent: impl IntoIterator<Item = K>) {
        let mut next = BTreeMap::new();
        for k in absent {
            let m = self.missing.get(&k).copied().unwrap_or(Missing {
                since: now,
                dead_at: None,
            });
            next.insert(k, m);
        }
        self.missing = next;
    }

    /// Whether a round is needed: a vanished member is not yet due to be declared dead.
    pub fn needs_round(&self) -> bool {
        self.missing.values().any(|m| m.dead_at.is_none())
    }

    /// Records a round sent at `sent_at` in which `renewed` of the `members` members had a
    /// renewal of their lease acknowledged on request, `quiet` of those quiet ones. Returns
    /// whether the renewals made a majority.
    ///
    /// `renewed` and `quiet` count only members that every vanished member knew of: members
    /// that joined at a version of the members no later than the latest one each vanished
    /// member read (see the module documentation). `members` counts every member.
    pub fn round(
        &mut self,
        sent_at: Duration,
        renewed: usize,
        quiet: usize,
        members: usize,
    ) -> bool {
        let found = if quiet.min(renewed) >= majority(members) {
            Round::Quiet
        } else if renewed >= majority(members) {
            Round::Renewed
        } else {
            Round::NoMajority
        };
        self.round_with(sent_at, |_| found);
        found != Round::NoMajority
    }

    /// Records a round sent at `sent_at`, where `found(k)` says what it found for the
    /// vanished member `k`: whether the members that renewed on request (and of those, the
    /// quiet ones) make a majority of the members `k` counted (the version of the members it
    /// last read), counting only those that had joined by that version. A round sent before
    /// the absence was seen counts for nothing; of two rounds that count, the earlier due time
    /// holds. Returns whether the round found a majority for any vanished member.
    pub fn round_with(&mut self, sent_at: Duration, mut found: impl FnMut(&K) -> Round) -> bool {
        let mut any = false;
        for (k, m) in self.missing.iter_mut() {
            if m.since > sent_at {
                continue;
            }
            let round = found(k);
            let Some(wait) = self.timing.wait(round) else {
                continue;
            };
            let due = (sent_at + wait, round);
            m.dead_at = Some(match m.dead_at {
                Some(earlier) if earlier.0 <= due.0 => earlier,
                _ => due,
            });
            any = true;
        }
        any
    }

    /// The vanished members that may be declared dead at `now`, each with what the round
    /// that made it due found ([`Round::Renewed`] or [`Round::Quiet`]).
    pub fn dead(&self, now: Duration) -> Vec<(K, Round)> {
        self.missing
            .iter()
            .filter_map(|(k, m)| match m.dead_at {
                Some((at, round)) if now >= at => Some((k.clone(), round)),
                _ => None,
            })
            .collect()
    }

    /// The next time a vanished member becomes due, if one is waiting for its time.
    pub fn next_due(&self, now: Duration) -> Option<Duration> {
        self.missing
            .values()
            .filter_map(|m| m.dead_at.map(|(at, _)| at))
            .filter(|at| *at > now)
            .min()
    }

    /// Whether any member is missing.
    pub fn any_missing(&self) -> bool {
        !self.missing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timing() -> Timing {
        Timing::for_ttl(Duration::from_secs(5), Duration::from_secs(1))
    }

    #[test]
    fn bounds_satisfy_the_safety_argument() {
        for ttl in [2, 5, 30, 300] {
            let t = Timing::for_ttl(Duration::from_secs(ttl), Duration::from_secs(1));
            assert!(t.confirm_after() >= 2 * t.peer_timeout + t.validity);
            assert!(t.engine_wait() >= t.peer_timeout + t.validity + t.stop_allowance);
            assert!(t.quiet_after() >= t.peer_timeout + t.validity);
            assert!(t.quiet_wait() >= t.stop_allowance);
            assert!(t.ask_ahead <= t.ttl / 2);
        }
        let t = timing();
        assert_eq!(t.confirm_after(), ms(1_714));
        assert_eq!(t.engine_wait(), ms(2_442));
        assert_eq!(t.quiet_after(), ms(1_402));
        assert_eq!(t.quiet_wait(), ms(1_090));
    }

    #[test]
    fn a_machine_alone_fences_at_its_lease_expiry() {
        let mut g = Guard::new(timing(), ms(0));
        assert_eq!(g.verdict(ms(1_000)), Verdict::Renewing);
        assert_eq!(g.verdict(ms(3_000)), Verdict::Ask);
        // Every peer answers that it renewed recently.
        assert!(!g.round(ms(3_000), ms(3_000), &[ms(100), ms(200)], 3));
        // 5 s less twice the drift bound (1 %): this machine's clock may run slow, etcd's fast.
        assert_eq!(g.verdict(ms(4_899)), Verdict::Ask);
        assert_eq!(g.verdict(ms(4_900)), Verdict::Fence);
    }

    #[test]
    fn a_confirmed_machine_keeps_its_units_while_confirmations_are_fresh() {
        let t = timing();
        let mut g = Guard::new(t, ms(0));
        let d = t.confirm_after();
        assert!(g.round(ms(4_850), ms(4_850), &[d, ms(10)], 3));
        assert_eq!(g.verdict(ms(5_500)), Verdict::Confirmed);
        // Without another round, the confirmation lapses...
        assert_eq!(g.clone().verdict(ms(5_890)), Verdict::Fence);
        // ...and a round sent after the lapse, even unseen, does not bring it back...
        let mut late = g.clone();
        assert!(!late.round(ms(5_900), ms(5_900), &[d, d], 3));
        assert_eq!(late.verdict(ms(5_950)), Verdict::Fence);
        // ...but a round sent before it does extends it.
        assert!(g.round(ms(5_450), ms(5_450), &[d], 3));
        assert_eq!(g.verdict(ms(6_000)), Verdict::Confirmed);
        g.renewed(ms(6_100));
        assert_eq!(g.verdict(ms(6_200)), Verdict::Renewing);
    }

    #[test]
    fn the_next_change_is_each_deadline_in_turn() {
        let t = timing();
        let mut g = Guard::new(t, ms(0));
        let expiry = g.expiry();
        let ask_from = expiry - t.ask_ahead;
        assert_eq!(g.next_change(ms(0)), Some(ask_from));
        assert_eq!(g.verdict(ask_from - ms(1)), Verdict::Renewing);
        assert_eq!(g.verdict(ask_from), Verdict::Ask);
        assert_eq!(g.next_change(ask_from), Some(expiry));
        // A confirmation's lapse comes first while it lasts, then the expiry again.
        let d = t.confirm_after();
        assert!(g.round(ask_from, ask_from, &[d, ms(0)], 3));
        let until = g.next_change(ask_from).expect("the confirmation lapses");
        assert!(until < expiry && until > ask_from, "{until:?}");
        assert_eq!(g.verdict(until - ms(1)), Verdict::Confirmed);
        assert_eq!(g.next_change(until), Some(expiry));
        // Nothing changes by itself once fenced.
        assert_eq!(g.verdict(expiry), Verdict::Fence);
        assert_eq!(g.next_change(expiry), None);
    }

    #[test]
    fn a_fenced_machine_stays_fenced_until_renewed_and_counts_for_nobody() {
        let t = timing();
        let d = t.confirm_after();
        let mut g = Guard::new(t, ms(0));
        assert_eq!(g.answer(d), d);
        assert_eq!(g.verdict(ms(4_950)), Verdict::Fence);
        assert!(g.fenced());
        // A later round does not bring the units back...
        assert!(!g.should_ask(ms(5_000), None));
        assert!(!g.round(ms(5_000), d, &[d, d], 3));
        assert_eq!(g.verdict(ms(5_100)), Verdict::Fence);
        // ...and the machine answers that it is not cut off: it may have been declared dead.
        assert_eq!(g.answer(d), Duration::ZERO);
        // A renewal too old to keep the lease fences again; a fresh one ends the fence.
        g.renewed(ms(100));
        assert_eq!(g.verdict(ms(5_200)), Verdict::Fence);
        g.renewed(ms(5_150));
        assert_eq!(g.verdict(ms(5_200)), Verdict::Renewing);
        assert!(!g.fenced());
        assert_eq!(g.answer(d), d);
    }

    #[test]
    fn a_minority_never_confirms() {
        let t = timing();
        let mut g = Guard::new(t, ms(0));
        let d = t.confirm_after();
        // Two of five cut off, the others not answering.
        assert!(!g.round(ms(4_000), d, &[d], 5));
        // More answers than members known: the larger count is the majority's base.
        assert!(!g.round(ms(4_000), d, &[d, ms(1), ms(1), ms(1)], 2));
        // A lone machine is its own majority.
        assert!(g.round(ms(4_000), d, &[], 1));
    }

    #[test]
    fn the_engine_declares_dead_only_after_a_majority_round_and_the_wait() {
        let t = timing();
        let mut v: Verdicts<&str> = Verdicts::new(t);
        v.observe(ms(1_000), ["a"]);
        assert!(v.needs_round());
        // A round sent before the absence was seen does not count.
        assert!(v.round(ms(900), 3, 3, 3));
        assert!(v.dead(ms(10_000)).is_empty());
        assert!(!v.round(ms(1_100), 1, 1, 3));
        assert!(v.dead(ms(10_000)).is_empty());
        // A majority renewed, but only one of them quiet: the whole wait.
        assert!(v.round(ms(1_200), 2, 1, 3));
        assert!(!v.needs_round());
        let due = ms(1_200) + t.engine_wait();
        assert_eq!(v.next_due(ms(1_300)), Some(due));
        assert!(v.dead(due - ms(1)).is_empty());
        assert_eq!(v.dead(due), vec![("a", Round::Renewed)]);
        // Seen again, then gone again: it starts afresh.
        v.observe(ms(5_000), []);
        v.observe(ms(6_000), ["a"]);
        assert!(v.dead(ms(60_000)).is_empty());
    }

    #[test]
    fn a_quiet_majority_shortens_the_wait_to_the_stop_allowance() {
        let t = timing();
        let mut v: Verdicts<&str> = Verdicts::new(t);
        v.observe(ms(1_000), ["a", "b"]);
        // Quiet for "a" only (the members "b" counts were not all quiet, say).
        assert!(v.round_with(ms(1_100), |k| if *k == "a" {
            Round::Quiet
        } else {
            Round::Renewed
        }));
        assert_eq!(
            v.dead(ms(1_100) + t.quiet_wait()),
            vec![("a", Round::Quiet)]
        );
        assert!(!v.needs_round());
        // A later quiet round brings "b" forward; a slower one never puts a due time back.
        assert!(v.round(ms(1_300), 3, 3, 3));
        assert!(v.round(ms(1_400), 3, 0, 3));
        assert_eq!(v.next_due(ms(2_200)), Some(ms(1_300) + t.quiet_wait()));
        assert_eq!(
            v.dead(ms(1_300) + t.quiet_wait()),
            vec![("a", Round::Quiet), ("b", Round::Quiet)]
        );
        // Quiet members that make no majority shorten nothing.
        let mut w: Verdicts<&str> = Verdicts::new(t);
        w.observe(ms(1_000), ["a"]);
        assert!(!w.round(ms(1_100), 1, 1, 3));
        assert!(w.needs_round());
    }

    #[test]
    fn a_machine_that_registered_again_unseen_starts_afresh_when_named_by_registration() {
        let t = timing();
        // Named by machine alone: an engine that stalled from 2 s to 20 s, while "a" registered
        // again, ran its units and vanished again, declares it dead on the old round.
        let mut by_machine: Verdicts<&str> = Verdicts::new(t);
        by_machine.observe(ms(1_000), ["a"]);
        assert!(by_machine.round(ms(1_100), 2, 0, 3));
        by_machine.observe(ms(20_000), ["a"]);
        assert_eq!(by_machine.dead(ms(20_000)), vec![("a", Round::Renewed)]);
        // Named by machine and lease: the new absence waits for a round of its own.
        let mut v: Verdicts<(&str, u64)> = Verdicts::new(t);
        v.observe(ms(1_000), [("a", 1)]);
        assert!(v.round(ms(1_100), 2, 0, 3));
        v.observe(ms(20_000), [("a", 2)]);
        assert!(v.dead(ms(20_000)).is_empty());
        assert!(v.needs_round());
    }
}
