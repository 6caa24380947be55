//! What fleet decided, and why: placed (and why there), could not place, declared a machine
//! dead, fenced, failed to start, ... as [`Event`]s, kept in etcd for a while and read back by
//! unit, by machine, or as they happen.
//!
//! `events/<time>-<writer>-<sequence>` holds one event each: `<time>` its Unix time in
//! microseconds, 17 digits, so that key order is time order (by each writer's clock); `<writer>`
//! the machine id of the fleetd that recorded it and `<sequence>` a counter of this process
//! (20 digits), so that several writers, or one writing many events in the same microsecond,
//! never collide. A range read is a read in time order, and a page ends at a key
//! ([`EventCursor`]) that the next one starts after.
//!
//! Retention is bounded: at most [`EVENTS_KEPT`] events are kept. The leading engine trims
//! the oldest ([`Registry::trim_events`]: a count-only read, then one range delete up to the
//! cut) at most every [`TRIM_EVERY`], or sooner once it has written [`TRIM_AFTER`] events
//! itself, never on every write: between two trims the log may hold what was written
//! meanwhile on top of the bound.
//!
//! Events are not fenced writes: they say what happened, and the engine records one only for
//! a change etcd accepted. A [`Recorder`] (one per component of a fleetd) writes each event to
//! the journal at once, with its kind, unit and machine as fields (`FLEET_EVENT`,
//! `FLEET_UNIT`, `FLEET_MACHINE` under systemd), and to etcd in batches from a task of its
//! own; while etcd does not answer (a fenced machine's, say) it keeps them in memory, at most
//! [`EVENTS_KEPT`], and writes them when etcd answers again.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{DeleteOptions, GetOptions, KeyValue, TxnOp};
use fleet_units::UnitName;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::listing::{prefix_end, successor, FILTERED_CHUNK};
use crate::watch::Changes;
use crate::{decode, encode, op_bytes, MachineId, Registry, Result, MAX_PAGE};

/// How many events are kept: the oldest beyond are trimmed by the leading engine.
pub const EVENTS_KEPT: usize = 10_000;

/// The longest message an event keeps, in bytes: a longer one is cut (an unplaceable unit's
/// reasons run to 16 lines).
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// The leading engine trims the events at most this often...
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// ...or sooner once it has written this many since its last trim.
pub const TRIM_AFTER: usize = 1_000;

/// What an event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The engine placed a unit on a machine (the message says why there).
    Placed,
    /// The engine moved a unit to another machine (the message says why).
    Moved,
    /// The engine cannot place a unit (the message says why, per machine, or per reason past
    /// 16 machines); recorded when the
    /// reasons change, not on every pass.
    Unplaceable,
    /// The engine declared a machine whose lease is gone dead, or an operator removed one by
    /// hand, releasing its units.
    DeclaredDead,
    /// A machine could not renew its lease and stopped its non-global units.
    Fenced,
    /// A fenced machine reaches etcd again.
    Unfenced,
    /// A unit failed to start on its machine (as systemd said).
    StartFailed,
    /// A machine was drained: marked unschedulable, its units moved away.
    Drained,
    /// A drained machine takes units again.
    Undrained,
    /// A step of a rolling update.
    UpdateStep,
    /// A unit went back to its previous content.
    Reverted,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Placed,
        EventKind::Moved,
        EventKind::Unplaceable,
        EventKind::DeclaredDead,
        EventKind::Fenced,
        EventKind::Unfenced,
        EventKind::StartFailed,
        EventKind::Drained,
        EventKind::Undrained,
        EventKind::UpdateStep,
        EventKind::Reverted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Placed => "placed",
            EventKind::Moved => "moved",
            EventKind::Unplaceable => "unplaceable",
            EventKind::DeclaredDead => "declared-dead",
            EventKind::Fenced => "fenced",
            EventKind::Unfenced => "unfenced",
            EventKind::StartFailed => "start-failed",
            EventKind::Drained => "drained",
            EventKind::Undrained => "undrained",
            EventKind::UpdateStep => "update-step",
            EventKind::Reverted => "reverted",
        }
    }

    /// Whether the journal shows it as a warning: something did not go as asked.
    fn is_warning(self) -> bool {
        matches!(
            self,
            EventKind::Unplaceable
                | EventKind::DeclaredDead
                | EventKind::Fenced
                | EventKind::StartFailed
                | EventKind::Reverted
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decision fleet made, or one thing that happened to a unit or a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When it happened, by the recording machine's clock (stored in microseconds).
    #[serde(with = "micros")]
    pub time: SystemTime,
    pub kind: EventKind,
    /// The unit it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitName>,
    /// The machine it concerns, if any (where a unit was placed, the machine that fenced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineId>,
    /// What happened and why, in a few words.
    pub message: String,
    /// The machine whose fleetd recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<MachineId>,
}

impl Event {
    /// An event of `kind` happening now, saying `message` (cut to [`MAX_MESSAGE_BYTES`]).
    pub fn new(kind: EventKind, message: impl Into<String>) -> Event {
        Event {
            time: SystemTime::now(),
            kind,
            unit: None,
            machine: None,
            message: bounded(message.into()),
            source: None,
        }
    }

    /// The event, concerning `unit`.
    pub fn unit(mut self, unit: &UnitName) -> Event {
        self.unit = Some(unit.clone());
        self
    }

    /// The event, concerning `machine`.
    pub fn machine(mut self, machine: &MachineId) -> Event {
        self.machine = Some(machine.clone());
        self
    }
}

/// `message`, cut at a character boundary to at most [`MAX_MESSAGE_BYTES`].
fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// A `SystemTime` as Unix microseconds.
mod micros {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn of(t: &SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or_default()
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(of(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let micros = u64::deserialize(d)?;
        Ok(UNIX_EPOCH + Duration::from_micros(micros))
    }
}

/// Which events to read: those of a unit, of a machine, or both (all when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub unit: Option<UnitName>,
    pub machine: Option<MachineId>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        let unit = self.unit.is_none() || event.unit == self.unit;
        let machine = self.machine.is_none() || event.machine == self.machine;
        unit && machine
    }

    fn is_empty(&self) -> bool {
        self.unit.is_none() && self.machine.is_none()
    }
}

/// Where a reading of the events stands: the key of the last event read, which the next read
/// starts after (`<17 digits>-<machine id>-<20 digits>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventCursor(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event position {0:?}")]
pub struct InvalidEventCursor(pub String);

impl EventCursor {
    pub fn parse(s: &str) -> Result<EventCursor, InvalidEventCursor> {
        let digits =
            |part: &str, n: usize| part.len() == n && part.bytes().all(|b| b.is_ascii_digit());
        let valid = match s.split('-').collect::<Vec<_>>().as_slice() {
            [time, machine, sequence] => {
                digits(time, 17)
                    && MachineId::parse(machine).is_ok_and(|m| m.as_str() == *machine)
                    && digits(sequence, 20)
            }
            _ => false,
        };
        match valid {
            true => Ok(EventCursor(s.to_string())),
            false => Err(InvalidEventCursor(s.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Events read in time order.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    /// The events that match, oldest first.
    pub events: Vec<Event>,
    /// The last key read, matching or not: where the next page starts (`None` when there was
    /// none to read, and no cursor was given).
    pub last: Option<EventCursor>,
    /// Whether more events may follow `last` (as the read found them).
    pub more: bool,
    /// The revision the events were read at: [`Registry::follow_events`] from it misses
    /// nothing recorded later.
    pub revision: i64,
}

/// The sequence of this process's events, part of their keys.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The machine id in the key of an event that names no source.
const NO_SOURCE: &str = "00000000000000000000000000000000";

/// An event and the key it is written at, chosen once so that writing it again (after a
/// failed write) writes the same key.
#[derive(Debug, Clone)]
pub(crate) struct Keyed {
    key: String,
    event: Event,
}

impl Registry {
    fn events_prefix(&self) -> String {
        self.key("events/")
    }

    /// A new key for `event`: its time, its source and this process's next sequence number.
    fn event_key(&self, event: &Event) -> Keyed {
        let source = event
            .source
            .as_ref()
            .map(MachineId::as_str)
            .unwrap_or(NO_SOURCE);
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        Keyed {
            key: format!(
                "{}{:017}-{source}-{sequence:020}",
                self.events_prefix(),
                micros::of(&event.time)
            ),
            event: Event {
                message: bounded(event.message.clone()),
                ..event.clone()
            },
        }
    }

    /// Records `events`, in as few transactions as etcd's limits allow. Not fenced: anyone
    /// may record what happened. On an error, the batches before the failing one are written.
    pub async fn record_events(&self, events: &[Event]) -> Result<()> {
        let keyed: Vec<Keyed> = events.iter().map(|e| self.event_key(e)).collect();
        self.write_events(&keyed).await
    }

    /// Writes events at the keys chosen for them.
    pub(crate) async fn write_events(&self, events: &[Keyed]) -> Result<()> {
        let ops = events
            .iter()
            .map(|k| {
                let value = encode(&k.event);
                let bytes = op_bytes(&k.key, &value);
                (TxnOp::put(k.key.as_str(), value, None), bytes)
            })
            .collect();
        self.write_batched(ops).await
    }

    fn event_cursor(&self, kv: &KeyValue) -> Option<EventCursor> {
        let key = kv.key_str().ok()?;
        EventCursor::parse(key.strip_prefix(&self.events_prefix())?).ok()
    }

    /// Reads the events after `after` (from the oldest without), in time order, calling
    /// `take` with each one `filter` matches until it answers `false`: the last key read,
    /// whether more follow it, and the revision read at. Unreadable events (another version's)
    /// are left out.
    async fn scan_events(
        &self,
        filter: &EventFilter,
        after: Option<&EventCursor>,
        chunk_size: usize,
        mut take: impl FnMut(Event) -> bool,
    ) -> Result<(Option<EventCursor>, bool, i64)> {
        let prefix = self.events_prefix();
        let end = prefix_end(prefix.as_bytes());
        let mut start = Self::start_after(&prefix, after.map(EventCursor::as_str));
        let mut last = after.cloned();
        let mut revision = 0;
        loop {
            let chunk = self
                .chunk(start.clone(), end.clone(), chunk_size, revision)
                .await?;
            revision = chunk.revision;
            for (i, kv) in chunk.kvs.iter().enumerate() {
                if let Some(cursor) = self.event_cursor(kv) {
                    last = Some(cursor);
                }
                let event = match decode::<Event>(kv) {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::debug!(error = %e, "unreadable event left out");
                        continue;
                    }
                };
                if filter.matches(&event) && !take(event) {
                    let more = i + 1 < chunk.kvs.len() || chunk.more;
                    return Ok((last, more, revision));
                }
            }
            match (chunk.more, chunk.kvs.last()) {
                (true, Some(kv)) => start = successor(kv.key()),
                _ => return Ok((last, false, revision)),
            }
        }
    }

    /// One page of the events `filter` matches, oldest first, at most `limit` (and at most
    /// [`MAX_PAGE`]), after `after`. Filtering is done here, reading the kept events in
    /// chunks: a filtered page may read every event kept ([`EVENTS_KEPT`]), never more.
    pub async fn events(
        &self,
        filter: &EventFilter,
        after: Option<&EventCursor>,
        limit: usize,
    ) -> Result<EventPage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let chunk = match filter.is_empty() {
            true => limit,
            false => FILTERED_CHUNK.max(limit),
        };
        let mut events = Vec::new();
        let (last, more, revision) = self
            .scan_events(filter, after, chunk, |e| {
                events.push(e);
                events.len() < limit
            })
            .await?;
        Ok(EventPage {
            events,
            last,
            more,
            revision,
        })
    }

    /// The newest `count` events `filter` matches (at most [`MAX_PAGE`]), oldest first, with
    /// the newest key read as the page's end: what `fleetctl events --limit N` shows, and
    /// where following starts.
    pub async fn latest_events(&self, filter: &EventFilter, count: usize) -> Result<EventPage> {
        let count = count.clamp(1, MAX_PAGE);
        let mut events = VecDeque::with_capacity(count);
        let (last, more, revision) = self
            .scan_events(filter, None, FILTERED_CHUNK, |e| {
                if events.len() == count {
                    events.pop_front();
                }
                events.push_back(e);
                true
            })
            .await?;
        Ok(EventPage {
            events: events.into(),
            last,
            more,
            revision,
        })
    }

    /// The events `filter` matches recorded after `revision` (a page's: nothing recorded after
    /// that read is missed), as they are recorded; for revision 0, those recorded from now on.
    pub async fn follow_events(&self, filter: EventFilter, revision: i64) -> Result<EventFollow> {
        let revision = match revision {
            0 => self.count_events().await?.0,
            r => r,
        };
        let changes = self.watch(&[self.events_prefix()], revision + 1).await?;
        Ok(EventFollow { changes, filter })
    }

    /// The revision now and how many events are kept: one count-only read.
    async fn count_events(&self) -> Result<(i64, usize)> {
        self.count_prefix(&self.events_prefix()).await
    }

    /// Trims the events to the newest `keep`: one count-only read, and when there are more,
    /// a keys-only read of the excess (bounded by [`MAX_PAGE`] a round) and one range delete
    /// up to its last key. How many were deleted.
    pub async fn trim_events(&self, keep: usize) -> Result<usize> {
        let prefix = self.events_prefix();
        let mut deleted = 0;
        loop {
            let excess = self.count_events().await?.1.saturating_sub(keep);
            if excess == 0 {
                return Ok(deleted);
            }
            let oldest = self
                .kv_request(|mut kv| {
                    let prefix = prefix.clone();
                    let options = GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(excess.min(MAX_PAGE) as i64);
                    async move { kv.get(prefix, Some(options)).await }
                })
                .await?;
            self.count_keys(oldest.kvs().len());
            let Some(cut) = oldest.kvs().last() else {
                return Ok(deleted);
            };
            let end = successor(cut.key());
            let gone = self
                .kv_request(|mut kv| {
                    let (prefix, end) = (prefix.clone(), end.clone());
                    async move {
                        kv.delete(prefix, Some(DeleteOptions::new().with_range(end)))
                            .await
                    }
                })
                .await?;
            deleted += usize::try_from(gone.deleted()).unwrap_or_default();
            if excess <= MAX_PAGE {
                return Ok(deleted);
            }
        }
    }
}

/// The events recorded from a revision on, as they are recorded ([`Registry::follow_events`]).
pub struct EventFollow {
    changes: Changes,
    filter: EventFilter,
}

impl EventFollow {
    /// Waits for the next events the filter matches, in the order they were recorded. An
    /// error means the watch is over (etcd unreachable, say): read and follow again.
    pub async fn next(&mut self) -> Result<Vec<Event>> {
        loop {
            let (_, changes) = self.changes.next_changes().await?;
            let events: Vec<Event> = changes
                .into_iter()
                // Deletions are trims.
                .filter(|c| !c.deleted)
                .filter_map(|c| decode::<Event>(&c.kv).ok())
                .filter(|e| self.filter.matches(e))
                .collect();
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

/// Records events: each one goes to the journal at once, with its kind, unit and machine as
/// fields, and to etcd from a task of its own, in batches, kept in memory while etcd does not
/// answer (at most [`EVENTS_KEPT`]; the oldest are dropped beyond). Cheap to clone; the task
/// ends when the last clone is dropped.
#[derive(Clone)]
pub struct Recorder {
    sender: mpsc::UnboundedSender<Event>,
    source: MachineId,
    trimming: Arc<AtomicBool>,
}

impl Recorder {
    /// A recorder of the events of machine `source`, writing through `registry`. Must be
    /// called within a tokio runtime (it starts the writing task).
    pub fn start(registry: Registry, source: MachineId) -> Recorder {
        let (sender, receiver) = mpsc::unbounded_channel();
        let trimming = Arc::new(AtomicBool::new(false));
        tokio::spawn(
            Writer {
                registry,
                receiver,
                pending: VecDeque::new(),
                dropped: 0,
                trimming: trimming.clone(),
                written: 0,
                trimmed_at: None,
                refusals: 0,
                last_error: None,
            }
            .run(),
        );
        Recorder {
            sender,
            source,
            trimming,
        }
    }

    /// Records `event` (from this machine): in the journal now, in etcd as soon as it answers.
    pub fn record(&self, mut event: Event) {
        event.source.get_or_insert_with(|| self.source.clone());
        journal(&event);
        // The writer ends only when every sender is gone.
        let _ = self.sender.send(event);
    }

    /// Makes this recorder trim the events to [`EVENTS_KEPT`] (every [`TRIM_EVERY`], or after
    /// [`TRIM_AFTER`] written) until the guard is dropped: what the leading engine does.
    pub fn trimming(&self) -> Trimming {
        self.trimming.store(true, Ordering::Relaxed);
        Trimming(self.trimming.clone())
    }
}

/// Trims while held; see [`Recorder::trimming`].
pub struct Trimming(Arc<AtomicBool>);

impl Drop for Trimming {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// One journal line for `event`: `<kind>: <message>`, with `event`, `unit` and `machine` as
/// fields.
fn journal(event: &Event) {
    let kind = event.kind.as_str();
    let unit = event.unit.as_ref().map(UnitName::as_str);
    let machine = event.machine.as_ref().map(MachineId::as_str);
    if event.kind.is_warning() {
        tracing::warn!(event = kind, unit, machine, "{kind}: {}", event.message);
    } else {
        tracing::info!(event = kind, unit, machine, "{kind}: {}", event.message);
    }
}

/// A recorder's task: writes what was recorded, keeps it while etcd does not answer, trims
/// while asked to.
struct Writer {
    registry: Registry,
    receiver: mpsc::UnboundedReceiver<Event>,
    pending: VecDeque<Keyed>,
    /// Events dropped since the last write, for want of room while etcd did not answer.
    dropped: u64,
    trimming: Arc<AtomicBool>,
    /// Events written since the last trim.
    written: usize,
    trimmed_at: Option<Instant>,
    /// Failed writes in a row, and the last failure's reason (logged when it changes).
    refusals: u32,
    last_error: Option<String>,
}

impl Writer {
    async fn run(mut self) {
        let mut open = true;
        loop {
            if self.pending.is_empty() {
                if !open {
                    return;
                }
                tokio::select! {
                    got = self.receiver.recv() => match got {
                        Some(event) => self.keep(event),
                        None => return,
                    },
                    _ = tokio::time::sleep(TRIM_EVERY) => {}
                }
            }
            loop {
                match self.receiver.try_recv() {
                    Ok(event) => self.keep(event),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if !self.pending.is_empty() && !self.flush().await && !open {
                // Nobody records any more and etcd does not answer: give up.
                return;
            }
            self.trim_if_due().await;
        }
    }

    fn keep(&mut self, event: Event) {
        self.pending.push_back(self.registry.event_key(&event));
        if self.pending.len() > EVENTS_KEPT {
            self.pending.pop_front();
            self.dropped += 1;
        }
    }

    /// Writes what is pending; on a failure waits (200 ms, doubling up to 5 s) and keeps it.
    /// Whether it was written.
    async fn flush(&mut self) -> bool {
        let count = self.pending.len();
        match self
            .registry
            .write_events(self.pending.make_contiguous())
            .await
        {
            Ok(()) => {
                self.pending.clear();
                self.written += count;
                self.refusals = 0;
                if self.last_error.take().is_some() {
                    tracing::info!(events = count, "events written to etcd again");
                }
                if self.dropped > 0 {
                    tracing::warn!(
                        dropped = self.dropped,
                        "events lost while etcd did not answer: more than {EVENTS_KEPT} were waiting"
                    );
                    self.dropped = 0;
                }
                true
            }
            Err(e) => {
                let reason = e.to_string();
                if self.last_error.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(error = %reason, events = count, "events not written to etcd yet: kept until it answers");
                    self.last_error = Some(reason);
                }
                let pause = Duration::from_millis(200) * 2u32.pow(self.refusals.min(5));
                self.refusals = self.refusals.saturating_add(1);
                tokio::time::sleep(pause.min(Duration::from_secs(5))).await;
                false
            }
        }
    }

    async fn trim_if_due(&mut self) {
        if !self.trimming.load(Ordering::Relaxed) {
            return;
        }
        let due = match self.trimmed_at {
            None => true,
            Some(at) => at.elapsed() >= TRIM_EVERY || self.written >= TRIM_AFTER,
        };
        if !due {
            return;
        }
        self.trimmed_at = Some(Instant::now());
        self.written = 0;
        match self.registry.trim_events(EVENTS_KEPT).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "trimmed the oldest events"),
            Err(e) => tracing::debug!(error = %e, "cannot trim the events now"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn kinds_are_kebab_case_and_read_back() {
        for kind in EventKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
        }
        assert_eq!(EventKind::DeclaredDead.as_str(), "declared-dead");
        assert!(serde_json::from_str::<EventKind>("\"Placed\"").is_err());
    }

    #[test]
    fn events_are_camel_case_json_with_times_in_microseconds() {
        let event = Event {
            time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            kind: EventKind::StartFailed,
            unit: Some(UnitName::parse("web.service").unwrap()),
            machine: None,
            message: "exit-code".into(),
            source: Some(MachineId::parse(&"a".repeat(32)).unwrap()),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "time": 1_700_000_000_123_456u64,
                "kind": "start-failed",
                "unit": "web.service",
                "message": "exit-code",
                "source": "a".repeat(32),
            })
        );
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let event = Event::new(EventKind::Unplaceable, long);
        assert!(event.message.len() <= MAX_MESSAGE_BYTES);
        assert!(event.message.ends_with('…'));
        assert_eq!(Event::new(EventKind::Placed, "short").message, "short");
    }

    #[test]
    fn cursors_are_keys_of_events_only() {
        let good = format!("{:017}-{}-{:020}", 5, "0f".repeat(16), 7);
        assert_eq!(EventCursor::parse(&good).unwrap().as_str(), good);
        for bad in [
            String::new(),
            "x".into(),
            format!("{:016}-{}-{:020}", 5, "0f".repeat(16), 7),
            format!("{:017}-{}-{:020}", 5, "0F".repeat(16), 7),
            format!("{:017}-{}-{:019}", 5, "0f".repeat(16), 7),
            format!("{:017}-{}-{:020}-x", 5, "0f".repeat(16), 7),
            format!("{:017}/{}-{:020}", 5, "0f".repeat(16), 7),
        ] {
            assert!(EventCursor::parse(&bad).is_err(), "{bad:?}");
        }
    }

    /// One tracing event's fields: name and value.
    type Line = Vec<(String, String)>;

    /// The fields of each tracing event sent while it is the subscriber.
    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<Line>>>);

    struct Fields(Line);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0
                .push((field.name().to_string(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push((field.name().to_string(), value.to_string()));
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Fields(Vec::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn each_event_is_one_journal_line_with_its_kind_unit_and_machine_as_fields() {
        let capture = Capture::default();
        let web = UnitName::parse("web.service").unwrap();
        let m = MachineId::parse(&"c".repeat(32)).unwrap();
        tracing::subscriber::with_default(capture.clone(), || {
            journal(
                &Event::new(EventKind::Placed, "the only machine")
                    .unit(&web)
                    .machine(&m),
            );
            journal(&Event::new(EventKind::Fenced, "cannot renew").machine(&m));
        });
        let lines = capture.0.lock().unwrap().clone();
        let pairs = |pairs: &[(&str, &str)]| -> Line {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // fleetd's journal layer makes them FLEET_EVENT, FLEET_UNIT and FLEET_MACHINE.
        assert_eq!(
            lines,
            [
                pairs(&[
                    ("message", "placed: the only machine"),
                    ("event", "placed"),
                    ("unit", "web.service"),
                    ("machine", m.as_str()),
                ]),
                pairs(&[
                    ("message", "fenced: cannot renew"),
                    ("event", "fenced"),
                    ("machine", m.as_str()),
                ]),
            ]
        );
    }

    #[test]
    fn filters_match_unit_and_machine() {
        let web = UnitName::parse("web.service").unwrap();
        let m = MachineId::parse(&"1".repeat(32)).unwrap();
        let other = MachineId::parse(&"2".repeat(32)).unwrap();
        let event = Event::new(EventKind::Placed, "x").unit(&web).machine(&m);
        let filter = |unit: Option<&UnitName>, machine: Option<&MachineId>| EventFilter {
            unit: unit.cloned(),
            machine: machine.cloned(),
        };
        assert!(filter(None, None).matches(&event));
        assert!(filter(Some(&web), None).matches(&event));
        assert!(filter(Some(&web), Some(&m)).matches(&event));
        assert!(!filter(Some(&web), Some(&other)).matches(&event));
        let db = UnitName::parse("db.service").unwrap();
        assert!(!filter(Some(&db), None).matches(&event));
        let machine_only = Event::new(EventKind::Fenced, "x").machine(&m);
        assert!(!filter(Some(&web), None).matches(&machine_only));
        assert!(filter(None, Some(&m)).matches(&machine_only));
    }
}
