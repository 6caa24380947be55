//! Everything fleet stores in etcd (v3), and the only crate that knows the key layout.
//!
//! Key layout under the configured prefix (default `/_coreos.com/fleet/`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `units/<name>` | [`Unit`]: options and desired state | none |
//! | `global/<name>` | [`Unit`], a copy for global units only, so agents watch just these | none |
//! | `machines/<id>` | [`Machine`] | the machine's |
//! | `members/<id>` | [`Member`]: the cluster's members, counted for majorities, written when each registers | none |
//! | `readings/<id>` | [`MemberReading`]: what a member last read of the members, which it counts its majorities over; followed by the engine only | none |
//! | `placements/<id>/<name>` | [`Placement`], written by the engine | none |
//! | `placed/<name>/<id>` | empty: the index from a unit to its machine, written with the placement | none |
//! | `states/<id>/<name>` | [`UnitState`], published by the agent | the machine's |
//! | `engine/leader` | the leading machine's id | the leader's |
//! | `unplaceable/<name>` | why the engine cannot place a unit (`Vec<String>`) | the leader's |
//! | `metadata/<id>` | metadata set through the API, overriding fleet.conf (`MetadataOverrides`) | none |
//! | `peer/secret` | the cluster secret fleetds authenticate each other's peer requests with (hex), created once if absent | none |
//! | `stopping/<id>/<name>` | empty: a unit the engine took off a live machine to run elsewhere, until that machine's agent has stopped it (written with the placement's removal, removed by the agent or when the machine is declared dead) | none |
//! | `updates/<id>` | [`Update`]: a rolling update, driven by the engine leader (`update.rs`) | none |
//! | `updating/<name>` | the id of the running update the unit is in, created with it and removed when it ends | none |
//! | `versions/<id>/<name>` | [`GlobalVersion`]: the content a machine runs of a global unit in place of the unit's own while a rolling update moves it machine by machine (`update.rs`); applies only over the very write of the unit's `global/` key it was made for | none |
//! | `drain/<id>` | [`Drain`]: the machine takes no new units and its units move elsewhere | none |
//! | `history/<name>/<seq>` | a version of the unit's content (`history.rs`): the newest is the current one, the others previous ones, at most [`HISTORY_DEPTH`]; written with the unit, removed with it | none |
//! | `events/<micros>-<machine>-<seq>` | an [`Event`] (`events.rs`): what fleet decided or what happened, keyed by time (17 digits), writer and a counter of the writer's process (20 digits); at most [`EVENTS_KEPT`], the oldest trimmed by the leading engine | none |
//!
//! Liveness is one lease per machine: when a machine's lease expires, its record and its unit
//! states disappear together, and watchers learn it from one set of delete events. What was
//! placed on it stays until the engine declares the machine dead ([`Registry::declare_dead`]),
//! or an operator removes it by hand ([`Registry::remove_member`]): a machine whose lease
//! expired may still be running its units (`fleet-quorum`). Engine writes are transactions conditioned on the leader key's creation revision
//! ([`Leadership`]), so a deposed engine cannot write.

mod drain;
mod events;
mod history;
mod listing;
mod located;
mod model;
mod presence;
mod progress;
mod removal;
mod together;
mod update;
mod view;
mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, GetResponse, KeyValue,
    PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use fleet_errors::root_cause;
use fleet_units::UnitName;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use drain::{Drain, DrainStart, DrainStatus};
pub use events::{
    Event, EventCursor, EventFilter, EventFollow, EventKind, EventPage, InvalidEventCursor,
    Recorder, Trimming, EVENTS_KEPT, MAX_MESSAGE_BYTES, TRIM_AFTER, TRIM_EVERY,
};
pub use history::{
    HashPrefix, InvalidHashPrefix, Rollback, RollbackError, UnitHistory, UnitVersion, HISTORY_DEPTH,
};
pub use listing::{Page, StateCursor, MAX_PAGE};
pub use located::UnitMachines;
pub use model::{
    InvalidJobState, InvalidMachineId, JobState, Machine, MachineId, Member, MemberReading,
    Placement, Unit, UnitState,
};
pub use presence::{
    lease_not_found, Liveness, Presence, PresenceOptions, PresenceStatus, Registration, Renewal,
    Witness,
};
pub use progress::{reports_active, Progress};
pub use removal::{MemberStatus, Removal};
pub use update::{
    as_listed, CreateUpdateError, GlobalUnitOn, GlobalVersion, Layout, LayoutError, Omitted, Phase,
    PreviousContent, StoredUpdate, Update, UpdateState, UpdateUnit, FINISHED_UPDATES_KEPT,
    MACHINES_PER_KEY, MAX_PARALLEL_MACHINES, MAX_UPDATE_MACHINES,
};
pub use view::{AgentView, ClusterDigest, EngineView, Refreshed, ViewChanges};
pub use watch::Changes;

/// The key prefix fleet has always used.
pub const DEFAULT_PREFIX: &str = "/_coreos.com/fleet/";

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Bound on every single request, so an unreachable etcd is reported instead of hanging.
    pub request_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS to etcd (`https://` endpoints), if any.
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd: the certificates that sign etcd's, and this client's certificate for etcd's
/// client-certificate authentication, all PEM.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    /// Certificate and private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: DEFAULT_PREFIX.to_string(),
            request_timeout: Duration::from_secs(1),
            username: None,
            password: None,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd at {endpoints} is unreachable: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd request timed out after {0:?}")]
    Timeout(Duration),
    /// etcd answered but will not serve this client: a TLS handshake failed (a certificate
    /// unknown, expired or for another name) or authentication failed (a wrong user or
    /// password, no permission on the key prefix). A configuration problem, not an outage.
    #[error("etcd at {endpoints} refuses this client: {reason}")]
    Refused { endpoints: String, reason: String },
    #[error("etcd request failed: {0}")]
    Etcd(#[source] etcd_client::Error),
    #[error("corrupt record at {key}: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// An update's record that its machine lists do not fit (see `update/record.rs`).
    #[error("update record at {key} cannot be read: {source}")]
    Layout {
        key: String,
        #[source]
        source: LayoutError,
    },
    #[error("this engine no longer holds the leadership")]
    NotLeader,
    /// A conditioned write refused because etcd no longer holds what it was decided from:
    /// another write came first (a write of this process's that timed out and was applied
    /// late, say). Read again and decide again.
    #[error("{0}")]
    Conflict(String),
    #[error("machine {0} is already registered by another live fleetd")]
    DuplicateMachine(MachineId),
    #[error("the lease of this machine is gone")]
    LeaseLost,
    #[error("watch ended: {0}")]
    WatchEnded(String),
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
    /// Refused before it was sent: etcd would refuse a request this large.
    #[error(
        "{what} is too large to store: it takes {bytes} bytes in one etcd request, which is \
         limited to {limit} bytes"
    )]
    TooLarge {
        what: String,
        bytes: usize,
        limit: usize,
    },
    /// etcd's database reached its quota: etcd raised its NOSPACE alarm and refuses every
    /// write until an operator frees space. Reads, deletes and lease renewals still work.
    #[error(
        "etcd at {endpoints} is out of space (its database reached its quota and it raised the \
         NOSPACE alarm), so nothing was written; free space in etcd: delete what is not needed, \
         compact, defragment, then 'etcdctl alarm disarm'"
    )]
    OutOfSpace { endpoints: String },
}

impl Error {
    /// Whether the error means etcd could not be reached or did not answer in time, as opposed
    /// to a refusal or bad data. Decided once, where etcd-client's errors become ours
    /// ([`Error::from_etcd`]).
    ///
    /// A refusal ([`Error::Refused`]) counts as unavailable too: etcd cannot be used until an
    /// operator fixes the configuration, and running units are kept (or fenced) exactly as in
    /// an outage. fleetd tells it apart at start-up ([`Registry::check_access`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::Timeout(_)
                | Error::WatchEnded(_)
                | Error::Refused { .. }
        )
    }

    /// Whether etcd refused the request, unapplied, as one too many while it applies what it
    /// committed too slowly, and kept refusing it for as long as the request could wait:
    /// nothing was written, and a client may make it again later.
    pub fn is_overloaded(&self) -> bool {
        matches!(self, Error::Etcd(e) if overloaded(e))
    }

    /// The same error again, for each of many requests it answers (sent together, see
    /// `together.rs`): an unavailability ([`Error::is_unavailable`]), a refusal for space and
    /// an overload ([`Error::is_overloaded`]) are copied; any other error is told in its
    /// words.
    pub(crate) fn copy(&self) -> Error {
        match self {
            Error::Unreachable { endpoints, reason } => Error::Unreachable {
                endpoints: endpoints.clone(),
                reason: reason.clone(),
            },
            Error::Timeout(after) => Error::Timeout(*after),
            Error::Refused { endpoints, reason } => Error::Refused {
                endpoints: endpoints.clone(),
                reason: reason.clone(),
            },
            Error::WatchEnded(why) => Error::WatchEnded(why.clone()),
            Error::OutOfSpace { endpoints } => Error::OutOfSpace {
                endpoints: endpoints.clone(),
            },
            // Still an overload for each, so that a caller may make it again later.
            Error::Etcd(e) if overloaded(e) => {
                Error::Etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(
                    tonic::Code::ResourceExhausted,
                    "etcdserver: too many requests",
                )))
            }
            other => Error::Protocol(other.to_string()),
        }
    }

    /// Whether etcd refused the request before applying any of it: it found it too large, with
    /// too many operations or a key twice (`InvalidArgument`), or it is out of space.
    pub(crate) fn refused_unapplied(&self) -> bool {
        match self {
            Error::OutOfSpace { .. } => true,
            Error::Etcd(etcd_client::Error::GRpcStatus(s)) => {
                s.code() == tonic::Code::InvalidArgument
            }
            _ => false,
        }
    }

    /// The one conversion of etcd-client's errors: silence (no connection, a broken one, no
    /// answer in time) becomes [`Error::Unreachable`], an answer from etcd [`Error::Etcd`].
    pub(crate) fn from_etcd(e: etcd_client::Error, endpoints: &str) -> Error {
        if let Some(reason) = refusal(&e) {
            return Error::Refused {
                endpoints: endpoints.to_string(),
                reason,
            };
        }
        let reason = match &e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                root_cause(&e)
            }
            // A broken connection surfaces as `Unknown` or `Cancelled` on an open stream
            // (watch, keepalive); every other code is an answer from etcd, not a silence.
            etcd_client::Error::GRpcStatus(s)
                if s.code() == tonic::Code::ResourceExhausted
                    && s.message().contains("database space exceeded") =>
            {
                return Error::OutOfSpace {
                    endpoints: endpoints.to_string(),
                };
            }
            etcd_client::Error::GRpcStatus(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Unknown
                        | tonic::Code::Cancelled
                ) =>
            {
                match std::error::Error::source(s) {
                    Some(inner) => format!("{}: {}", s.message(), root_cause(inner)),
                    None => s.message().to_string(),
                }
            }
            _ => return Error::Etcd(e),
        };
        Error::Unreachable {
            endpoints: endpoints.to_string(),
            reason,
        }
    }
}

/// Whether a failed request may be made again, and where.
enum Again {
    No,
    /// It was never sent: on the next endpoint.
    Elsewhere,
    /// etcd refused it unapplied because it is behind: on the same one, after a pause.
    Later,
}

/// The first pause before a request etcd refused as one too many is made again.
const OVERLOAD_PAUSE: Duration = Duration::from_millis(50);

/// Whether etcd refused a request, before proposing it, because it applies what it committed
/// too slowly ("etcdserver: too many requests"): a refusal with nothing written.
fn overloaded(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::ResourceExhausted && s.message().contains("too many requests"))
}

/// Whether `e` says that the request was never sent: no connection to the endpoint could be
/// made (a refused or failed TCP connect; tonic reports it as `Unavailable` with the connect
/// error as the status's source).
fn not_sent(e: &etcd_client::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unavailable => {
            if s.message().starts_with("tcp connect error") {
                return true;
            }
            std::error::Error::source(s)
        }
        other => Some(other),
    };
    while let Some(s) = source {
        if s.to_string().starts_with("tcp connect error") {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// Why etcd refuses this client, if `e` says it does: a failed authentication, a missing
/// permission, or a TLS handshake that failed (found as rustls's error in the source chain; an
/// `io::Error` hides the error it wraps from `source()`, so it is opened with `get_ref`).
fn refusal(e: &etcd_client::Error) -> Option<String> {
    if let etcd_client::Error::GRpcStatus(s) = e {
        let auth = s.message().contains("authentication failed")
            || s.message().contains("user name is empty")
            || s.message().contains("invalid auth token");
        return match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                Some(s.message().to_string())
            }
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition if auth => {
                Some(s.message().to_string())
            }
            _ => None,
        };
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(format!("TLS handshake failed: {tls}"));
        }
        if let Some(tls) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(format!("TLS handshake failed: {tls}"));
        }
        next = err.source();
    }
    None
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A consistent view of everything the engine decides from, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct EngineSnapshot {
    pub revision: i64,
    /// Creation revision of the leader key, if any engine leads.
    pub leader: Option<Leadership>,
    pub units: Vec<Unit>,
    pub machines: Vec<MachineEntry>,
    /// Every machine registered and not declared dead, live or not.
    pub members: Vec<MemberEntry>,
    /// The members' readings of the members (`readings/`), by machine: see
    /// [`EngineSnapshot::judged`].
    pub readings: BTreeMap<MachineId, ReadingEntry>,
    pub placements: Vec<(MachineId, Placement)>,
    /// Why units could not be placed, as the leader last wrote it.
    pub unplaceable: BTreeMap<UnitName, Vec<String>>,
    /// Units taken off a live machine that has not yet stopped them (`stopping/`): they are
    /// placed nowhere until it has, so that a move never runs two copies.
    pub stopping: std::collections::BTreeSet<(MachineId, UnitName)>,
    /// Machines being drained (`drain/`): no new units, and theirs move elsewhere.
    pub draining: std::collections::BTreeSet<MachineId>,
    /// Rolling updates (`updates/`), by id.
    pub updates: BTreeMap<String, StoredUpdate>,
}

/// One unit and what the cluster knows of it, for the API's `GET /units/{name}` and its lists.
#[derive(Debug, Clone)]
pub struct UnitView {
    pub unit: Unit,
    /// The machine it is placed on, if any.
    pub machine: Option<MachineId>,
    /// What that machine last reported of it.
    pub state: Option<UnitState>,
    /// Why the engine cannot place it, if so.
    pub unplaceable: Option<Vec<String>>,
}

/// What became of a reading written over a member's reading (`readings/<id>`) at a known
/// revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written, at this revision.
    Written(i64),
    /// Not written: the member record is gone (the machine was declared dead), or is no
    /// longer the one its registration wrote.
    Gone,
    /// Not written: the reading was written since, last at this revision (0: it is gone,
    /// the member record is not).
    Moved(i64),
}

/// A member record and its revisions: it was created when the machine first registered after
/// being declared dead (or ever), and last written when it registered (or, by an older
/// fleetd, when it recorded a new reading of the members).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberEntry {
    pub member: Member,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// A member's reading (`readings/<id>`) and the revision it was written at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadingEntry {
    pub reading: MemberReading,
    pub mod_revision: i64,
}

/// What the engine judges a vanished member over: the members it counts its majorities over,
/// and the revision that judgement rests on ([`EngineSnapshot::judged`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Judged {
    pub reading: MemberReading,
    /// The later of the revisions of the member record and of its reading: a declaration made
    /// on this judgement holds only while neither was written since
    /// ([`Registry::declare_dead`]).
    pub revision: i64,
}

impl EngineSnapshot {
    /// What member `entry` counts its majorities over: of its reading (`readings/<id>`) and
    /// what its record says, the one written last. A fleetd writes both when it registers,
    /// then only its reading; an older fleetd writes only its record, so a reading left by a
    /// newer one before it (a fleetd downgraded) is older than the record and does not count.
    /// A record that cannot be read is judged by itself whatever the reading (nobody can judge
    /// it): an unreadable record must make majorities harder to reach, never easier.
    pub fn judged(&self, entry: &MemberEntry) -> Judged {
        let record = entry.member.reading();
        match self.readings.get(&entry.member.machine.id) {
            Some(r) => Judged {
                reading: if r.mod_revision >= entry.mod_revision
                    && record.seen_members != usize::MAX
                {
                    r.reading
                } else {
                    record
                },
                revision: entry.mod_revision.max(r.mod_revision),
            },
            None => Judged {
                reading: record,
                revision: entry.mod_revision,
            },
        }
    }
}

/// A live machine and the lease its record hangs on.
#[derive(Debug, Clone, Hash)]
pub struct MachineEntry {
    pub machine: Machine,
    pub lease: i64,
}

/// A consistent view of what one agent must run, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct AgentSnapshot {
    pub revision: i64,
    /// This machine's own record (its live metadata), if registered.
    pub machine: Option<Machine>,
    pub placements: Vec<Placement>,
    pub global_units: Vec<Unit>,
    /// Units the engine took off this machine that the agent is to confirm stopped, each with
    /// the revision its `stopping/` record was created at (what the release is conditioned on).
    pub stopping: BTreeMap<UnitName, i64>,
    /// The revision each global unit's `global/` key was last written at.
    pub global_revisions: BTreeMap<UnitName, i64>,
    /// This machine's versions of global units (a rolling update's).
    pub versions: BTreeMap<UnitName, GlobalVersion>,
}

impl AgentSnapshot {
    /// The content this machine is to run of the global unit `unit`: its version's while one
    /// applies, otherwise the unit's own.
    pub fn global_options<'a>(&'a self, unit: &'a Unit) -> &'a [fleet_units::UnitOption] {
        match (
            self.versions.get(&unit.name),
            self.global_revisions.get(&unit.name),
        ) {
            (Some(version), Some(&revision)) if version.applies_to(revision) => &version.options,
            _ => &unit.options,
        }
    }
}

/// What [`Registry::create_unless_exists`] did.
enum Creation {
    Created(i64),
    Exists(Option<KeyValue>),
}

/// The engine's proof of leadership: the revision at which it created the leader key, and the
/// lease that key (and everything the leader writes for itself) hangs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Leadership {
    pub revision: i64,
    pub lease: i64,
}

/// One change the engine wants made to placements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementOp {
    /// Create or overwrite the placement of a unit on a machine.
    Put {
        machine: MachineId,
        placement: Placement,
    },
    /// Remove the placement of a unit from a machine.
    Delete { machine: MachineId, name: UnitName },
    /// Remove the placement of a unit that is to run elsewhere from a live machine, recording
    /// that the machine is stopping it (`stopping/<id>/<name>`): the unit is placed again only
    /// once that machine's agent has stopped it.
    Move { machine: MachineId, name: UnitName },
    /// Record why a unit cannot be placed (on the leader's lease).
    SetUnplaceable {
        name: UnitName,
        reasons: Vec<String>,
    },
    /// Forget why a unit could not be placed.
    ClearUnplaceable { name: UnitName },
}

/// Changes to one machine's metadata, as `PATCH /machines` carries them: `Some(value)` sets a
/// key, `None` removes it. They persist (`metadata/<id>`) and override fleet.conf's metadata.
pub type MetadataOverrides = BTreeMap<String, Option<String>>;

/// Handle on fleet's data in etcd. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    members: std::sync::Arc<Members>,
    prefix: String,
    timeout: Duration,
    endpoints: String,
    /// How it connected, for [`Registry::set_tls`].
    config: std::sync::Arc<EtcdConfig>,
    /// Keys etcd answered to listings, whole-prefix reads and reads of named units' states
    /// and machines ([`Registry::keys_read`]).
    keys_read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Key-value requests made ([`Registry::kv_requests`]).
    kv_requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Unit creations waiting to be sent together (`together.rs`).
    creations: std::sync::Arc<together::Creations>,
}

/// The etcd endpoints fleetd was given, one client each once connected (with authentication,
/// an endpoint down at start-up joins the ring when it is up), used one at a time: every
/// request goes to the current one, and a request it does not answer makes the next one
/// current. (A client balancing over all endpoints kept sending a share of requests to a dead
/// member.)
///
/// A member that answers "no leader" is alive and usually in an election: it stays current for
/// [`NO_LEADER_PATIENCE`] before the next is tried, since moving on at once can land on the
/// member whose loss caused the election. A member cut off from its cluster says "no leader"
/// for good, and is left after that.
struct Members {
    /// Each endpoint that connected, with its client; swapped whole by [`Registry::set_tls`]
    /// (streams already open go on over their connections). Only ever grows: an endpoint
    /// that could not be connected at start-up is added once it can (`connect_later`).
    clients: std::sync::RwLock<Vec<(String, Client)>>,
    /// The endpoints not connected yet, in the configured order.
    pending: std::sync::Mutex<Vec<String>>,
    /// How to connect: the latest certificates ([`Registry::set_tls`]), and how many times
    /// they were renewed (a client connected with older ones is not added).
    options: std::sync::Mutex<(u64, ConnectOptions)>,
    current: std::sync::atomic::AtomicUsize,
    /// Since when the current member has been answering "no leader".
    no_leader: std::sync::Mutex<Option<(usize, std::time::Instant)>>,
}

/// How long a member that answers "no leader" stays current (etcd elects a leader within a
/// few election timeouts, one second each by default).
const NO_LEADER_PATIENCE: Duration = Duration::from_secs(3);

impl Members {
    /// How many endpoints are connected (at least one).
    fn count(&self) -> usize {
        self.clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            .max(1)
    }

    fn current(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed) % self.count()
    }

    fn client(&self) -> Client {
        self.current_client().1
    }

    /// The endpoint current now and its client.
    fn current_client(&self) -> (usize, Client) {
        let index = self.current();
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        (index, clients[index % clients.len()].1.clone())
    }

    fn no_leader(&self) -> std::sync::MutexGuard<'_, Option<(usize, std::time::Instant)>> {
        lock(&self.no_leader)
    }

    /// The member at `index` answered.
    fn answered(&self, index: usize) {
        let mut since = self.no_leader();
        if since.is_some_and(|(i, _)| i == index) {
            *since = None;
        }
    }

    /// The member at `index` answered that it has no leader: move on once that has lasted.
    fn leaderless(&self, index: usize) {
        let mut since = self.no_leader();
        match *since {
            Some((i, t)) if i == index => {
                if t.elapsed() >= NO_LEADER_PATIENCE {
                    *since = None;
                    drop(since);
                    self.failed(index);
                }
            }
            _ => *since = Some((index, std::time::Instant::now())),
        }
    }

    /// The endpoint at `index` did not answer: use the next one, unless another request
    /// already moved on.
    fn failed(&self, index: usize) {
        let next = (index + 1) % self.count();
        if next != index {
            let _ = self.current.compare_exchange(
                index,
                next,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

/// At most this many operations go into one etcd transaction (etcd's default `--max-txn-ops`).
pub(crate) const MAX_TXN_OPS: usize = 128;

/// etcd's default `--max-request-bytes` (1.5 MiB): etcd refuses a larger request.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// What one request may carry in keys and values: the limit less room for etcd's request
/// header and the protobuf framing of each operation (see [`op_bytes`]).
const REQUEST_BUDGET: usize = MAX_REQUEST_BYTES - 4 * 1024;

/// Operations kept in one transaction, with the conditions they add to it and their size in
/// a request.
pub(crate) struct Group {
    pub(crate) ops: Vec<TxnOp>,
    pub(crate) compares: Vec<Compare>,
    pub(crate) bytes: usize,
}

impl Group {
    fn of(ops: Vec<TxnOp>, bytes: usize) -> Group {
        Group {
            ops,
            compares: Vec::new(),
            bytes,
        }
    }
}

/// One transaction's worth of groups: their operations and conditions, and how many groups.
#[derive(Default)]
struct Batch {
    ops: Vec<TxnOp>,
    compares: Vec<Compare>,
    bytes: usize,
    groups: usize,
}

/// Groups in batches within etcd's limits on operations (conditions count apart, and one of
/// each is left for the caller's own, such as the leadership's) and bytes, in order.
fn batched(groups: impl IntoIterator<Item = Group>) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    for group in groups {
        let fits = batches.last().is_some_and(|b| {
            b.ops.len() + group.ops.len() < MAX_TXN_OPS
                && b.compares.len() + group.compares.len() < MAX_TXN_OPS
                && b.bytes + group.bytes <= REQUEST_BUDGET
        });
        if !fits {
            batches.push(Batch::default());
        }
        if let Some(b) = batches.last_mut() {
            b.ops.extend(group.ops);
            b.compares.extend(group.compares);
            b.bytes += group.bytes;
            b.groups += 1;
        }
    }
    batches
}

/// What an operation on `key` with `value` adds to a request, framing included.
pub(crate) fn op_bytes(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + 32
}

/// How many units, and how many placements, one request of the engine's snapshot reads. Read
/// whole in one request, the snapshot of 60,000 units (tens of megabytes) did not come within
/// the request timeout from an etcd under load, and the engine, reading again after a failed
/// write, tried again and again (README, `fleet-bench hollow`).
const SNAPSHOT_CHUNK: usize = 5_000;

/// The largest response taken from etcd: etcd's own Go client's default (`math.MaxInt32`), not
/// gRPC's 4 MiB, which a whole-prefix read outgrows (the engine's snapshot of 10,000 placed
/// units is about 4.3 MB).
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

impl Registry {
    /// Connects lazily: an unreachable etcd is reported by the first request, within the
    /// request timeout. With a username, connecting authenticates: an endpoint that cannot be
    /// connected is connected again in the background (`connect_later`), and when none can,
    /// the error is a refusal if one refused (a wrong password), else an outage.
    pub async fn connect(config: &EtcdConfig) -> Result<Registry> {
        let options = connect_options(config);
        let endpoints = config.endpoints.join(",");
        let mut clients = Vec::new();
        let mut first_error = None;
        let mut pending = Vec::new();
        for endpoint in &config.endpoints {
            match connect_one(endpoint, &options, config.request_timeout).await {
                Ok(client) => clients.push((endpoint.clone(), client)),
                // Without authentication connecting is lazy and cannot fail this way; with
                // it, a member down at start-up is connected once it is up.
                Err(e) => {
                    pending.push((endpoint.clone(), e.to_string()));
                    // A refusal says more than an outage: it is what is reported when no
                    // endpoint connects, whichever came first.
                    if first_error.is_none() || matches!(e, Error::Refused { .. }) {
                        first_error = Some(e);
                    }
                }
            }
        }
        let later = if clients.is_empty() {
            ""
        } else {
            "; trying again in the background"
        };
        let pending: Vec<String> = pending
            .into_iter()
            .map(|(endpoint, error)| {
                tracing::warn!(endpoint = %endpoint, %error, "cannot connect to this etcd endpoint{later}");
                endpoint
            })
            .collect();
        if clients.is_empty() {
            return Err(first_error
                .unwrap_or_else(|| Error::Protocol("no etcd endpoint configured".into())));
        }
        let members = std::sync::Arc::new(Members {
            no_leader: std::sync::Mutex::new(None),
            clients: std::sync::RwLock::new(clients),
            pending: std::sync::Mutex::new(pending),
            options: std::sync::Mutex::new((0, options)),
            current: std::sync::atomic::AtomicUsize::new(0),
        });
        if !lock(&members.pending).is_empty() {
            tokio::spawn(connect_later(
                std::sync::Arc::downgrade(&members),
                config.request_timeout,
            ));
        }
        let mut prefix = config.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Registry {
            members,
            prefix,
            timeout: config.request_timeout,
            endpoints,
            config: std::sync::Arc::new(config.clone()),
            keys_read: Default::default(),
            kv_requests: Default::default(),
            creations: Default::default(),
        })
    }

    /// Uses `tls` (renewed certificates) for every request from now on: each endpoint is
    /// connected again with it, and its new client replaces the old one (streams already open
    /// go on over their connections). An endpoint that cannot be connected keeps its client.
    pub async fn set_tls(&self, tls: EtcdTls) -> Result<()> {
        let config = EtcdConfig {
            tls: Some(tls),
            ..(*self.config).clone()
        };
        let options = connect_options(&config);
        {
            let mut latest = lock(&self.members.options);
            *latest = (latest.0 + 1, options.clone());
        }
        let old: Vec<(String, Client)> = self
            .members
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let before = old.len();
        let mut new = Vec::with_capacity(old.len());
        let mut first_error = None;
        for (endpoint, client) in old {
            match connect_one(&endpoint, &options, config.request_timeout).await {
                Ok(fresh) => new.push((endpoint, fresh)),
                Err(e) => {
                    tracing::warn!(endpoint = %endpoint, error = %e, "cannot connect to this etcd endpoint with the renewed certificates; keeping its connection");
                    first_error.get_or_insert(e);
                    new.push((endpoint, client));
                }
            }
        }
        {
            let mut clients = self
                .members
                .clients
                .write()
                .unwrap_or_else(|e| e.into_inner());
            // Endpoints connected meanwhile (`connect_later`) are kept.
            new.extend(clients.drain(..).skip(before));
            *clients = new;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Locks `m`, whose holders leave nothing half-done: a panic while it was held does not
/// poison it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first pause before connecting again to endpoints that could not be connected, and the
/// longest.
const CONNECT_AGAIN: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Connects the endpoints that could not be connected at start-up (with authentication,
/// connecting authenticates, so a member down then fails it), one after another, again after a
/// pause doubling from 1 s to 30 s (each up to half longer, at random), until all are or the
/// registry is dropped. Each is added to the endpoints requests go to once it is connected,
/// last in their ring.
async fn connect_later(members: std::sync::Weak<Members>, timeout: Duration) {
    use std::hash::{BuildHasher, Hasher};
    let mut pause = CONNECT_AGAIN.0;
    // Endpoints warned about once they had failed for a while (each try is logged at debug).
    let mut warned: Vec<String> = Vec::new();
    loop {
        // Up to half again, at random: fleetds that started together do not all authenticate
        // to a member at the moment it is back.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let jitter = pause.mul_f64((random % 1000) as f64 / 2000.0);
        tokio::time::sleep(pause + jitter).await;
        pause = (pause * 2).min(CONNECT_AGAIN.1);
        let Some(strong) = members.upgrade() else {
            return;
        };
        let endpoints = lock(&strong.pending).clone();
        let (renewals, options) = lock(&strong.options).clone();
        drop(strong);
        for endpoint in endpoints {
            let connected = connect_one(&endpoint, &options, timeout).await;
            let Some(members) = members.upgrade() else {
                return;
            };
            match connected {
                Ok(client) => {
                    let mut clients = members.clients.write().unwrap_or_else(|e| e.into_inner());
                    // Certificates renewed meanwhile: `set_tls` did not see this client, so
                    // it is connected again with them, next time.
                    if lock(&members.options).0 != renewals {
                        continue;
                    }
                    tracing::info!(endpoint = %endpoint, "connected to this etcd endpoint");
                    lock(&members.pending).retain(|e| *e != endpoint);
                    clients.push((endpoint, client));
                }
                Err(e) if pause == CONNECT_AGAIN.1 && !warned.contains(&endpoint) => {
                    tracing::warn!(endpoint = %endpoint, error = %e, "still cannot connect to this etcd endpoint; trying again every 30 s");
                    warned.push(endpoint);
                }
                Err(e) => {
                    tracing::debug!(endpoint = %endpoint, error = %e, "cannot connect to this etcd endpoint yet")
                }
            }
        }
        let Some(members) = members.upgrade() else {
            return;
        };
        if lock(&members.pending).is_empty() {
            return;
        }
    }
}

/// One client of one endpoint, connected within the request timeout.
async fn connect_one(
    endpoint: &str,
    options: &ConnectOptions,
    timeout: Duration,
) -> Result<Client> {
    tokio::time::timeout(
        timeout.max(Duration::from_millis(100)),
        Client::connect([endpoint], Some(options.clone())),
    )
    .await
    .map_err(|_| Error::Timeout(timeout))
    .and_then(|r| r.map_err(|e| Error::from_etcd(e, endpoint)))
}

/// etcd-client's options for `config`.
fn connect_options(config: &EtcdConfig) -> ConnectOptions {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.request_timeout)
        .with_timeout(config.request_timeout)
        .with_keep_alive(
            Duration::from_secs(5),
            config.request_timeout.max(Duration::from_secs(2)),
        )
        .with_keep_alive_while_idle(true)
        // A member cut off from the others answers at once ("no leader") instead of
        // serving stale reads or holding a watch that never fires.
        .with_require_leader(true);
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options = options
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &config.tls {
        let mut options_tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            options_tls = options_tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        options = options.with_tls(options_tls);
    }
    options
}

impl Registry {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A lease client on the current endpoint.
    fn lease_client(&self) -> etcd_client::LeaseClient {
        self.members.client().lease_client()
    }

    /// A lease client of the endpoint current now, with that endpoint's index (for streams).
    fn lease_client_at(&self) -> (usize, etcd_client::LeaseClient) {
        let (index, client) = self.members.current_client();
        (index, client.lease_client())
    }

    // ---- key layout -------------------------------------------------------------------------

    fn key(&self, rest: &str) -> String {
        format!("{}{}", self.prefix, rest)
    }
    fn units_prefix(&self) -> String {
        self.key("units/")
    }
    fn unit_key(&self, name: &UnitName) -> String {
        self.key(&format!("units/{name}"))
    }
    fn global_prefix(&self) -> String {
        self.key("global/")
    }
    fn global_key(&self, name: &UnitName) -> String {
        self.key(&format!("global/{name}"))
    }
    fn machines_prefix(&self) -> String {
        self.key("machines/")
    }
    fn machine_key(&self, id: &MachineId) -> String {
        self.key(&format!("machines/{id}"))
    }
    fn members_prefix(&self) -> String {
        self.key("members/")
    }
    fn member_key(&self, id: &MachineId) -> String {
        self.key(&format!("members/{id}"))
    }
    fn readings_prefix(&self) -> String {
        self.key("readings/")
    }
    fn reading_key(&self, id: &MachineId) -> String {
        self.key(&format!("readings/{id}"))
    }

    /// The reading a key under `readings/` holds, by the machine its key names; one that does
    /// not decode counts over no one (nobody can judge that member dead).
    pub(crate) fn reading_entry(&self, kv: &KeyValue) -> Option<(MachineId, ReadingEntry)> {
        let id = key_machine_id(&self.readings_prefix(), kv.key())?;
        let reading = decode::<MemberReading>(kv).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "unreadable member reading");
            MemberReading {
                seen_revision: 0,
                seen_members: usize::MAX,
            }
        });
        Some((
            id,
            ReadingEntry {
                reading,
                mod_revision: kv.mod_revision(),
            },
        ))
    }
    fn placements_prefix(&self) -> String {
        self.key("placements/")
    }
    fn machine_placements_prefix(&self, id: &MachineId) -> String {
        self.key(&format!("placements/{id}/"))
    }
    fn placement_key(&self, id: &MachineId, name: &UnitName) -> String {
        self.key(&format!("placements/{id}/{name}"))
    }
    /// A unit name holds no '/', so this prefix covers exactly one unit's index entries.
    fn placed_prefix(&self, name: &UnitName) -> String {
        self.key(&format!("placed/{name}/"))
    }
    fn placed_key(&self, name: &UnitName, id: &MachineId) -> String {
        self.key(&format!("placed/{name}/{id}"))
    }
    fn states_prefix(&self) -> String {
        self.key("states/")
    }
    fn state_key(&self, id: &MachineId, name: &UnitName) -> String {
        self.key(&format!("states/{id}/{name}"))
    }
    fn leader_key(&self) -> String {
        self.key("engine/leader")
    }
    fn unplaceable_prefix(&self) -> String {
        self.key("unplaceable/")
    }
    fn unplaceable_key(&self, name: &UnitName) -> String {
        self.key(&format!("unplaceable/{name}"))
    }
    fn metadata_key(&self, id: &MachineId) -> String {
        self.key(&format!("metadata/{id}"))
    }
    fn stopping_prefix(&self) -> String {
        self.key("stopping/")
    }
    fn machine_stopping_prefix(&self, id: &MachineId) -> String {
        self.key(&format!("stopping/{id}/"))
    }
    fn stopping_key(&self, id: &MachineId, name: &UnitName) -> String {
        self.key(&format!("stopping/{id}/{name}"))
    }
    fn drain_prefix(&self) -> String {
        self.key("drain/")
    }
    fn drain_key(&self, id: &MachineId) -> String {
        self.key(&format!("drain/{id}"))
    }

    // ---- plumbing ---------------------------------------------------------------------------

    /// Runs one etcd request under the request timeout; a failure counts in
    /// `fleet_etcd_errors_total`.
    async fn timed<T, F>(&self, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        // The request was made on the endpoint current now (`fut` is built just before).
        self.timed_on(self.members.current(), fut).await
    }

    /// [`Registry::timed`] for a request on a stream opened on the endpoint `used`, which may
    /// no longer be the current one: its failure must not make the current one look failed
    /// (a keepalive stream left on a member that died would move fleetd off a live member,
    /// possibly onto the dead one).
    async fn timed_on<T, F>(&self, used: usize, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.attempt_on(used, fut).await.map_err(|(e, _)| e)
    }

    /// [`Registry::timed_on`], also saying of a failure whether the request was never sent
    /// ([`not_sent`]).
    async fn attempt_on<T, F>(&self, used: usize, fut: F) -> std::result::Result<T, (Error, Again)>
    where
        F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut leaderless = false;
        let mut again = Again::No;
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => {
                self.members.answered(used);
                return Ok(v);
            }
            Ok(Err(e)) => {
                leaderless = matches!(&e, etcd_client::Error::GRpcStatus(s) if s.message().contains("no leader"));
                if not_sent(&e) {
                    again = Again::Elsewhere;
                } else if overloaded(&e) {
                    again = Again::Later;
                }
                Error::from_etcd(e, &self.endpoints)
            }
            Err(_) => Error::Timeout(self.timeout),
        };
        if leaderless {
            self.members.leaderless(used);
        } else if result.is_unavailable() {
            self.members.failed(used);
        }
        fleet_telemetry::ETCD_ERRORS.inc();
        Err((result, again))
    }

    /// One key-value request, made by `make` on the current endpoint's client. When that
    /// endpoint could not even be connected (a member that is down refuses at once) the
    /// request was never sent, so it is made again on the next endpoint, writes included,
    /// until each endpoint had its try: a member known to be down costs a request nothing.
    /// When etcd refuses it as one request too many (its applying lags behind what it
    /// committed), it was not applied either: it is made again after a pause that doubles, as
    /// long as the pause ends within one request's timeout of the first try (the last try then
    /// has a timeout of its own).
    async fn kv_request<T, F, Fut>(&self, make: F) -> Result<T>
    where
        F: Fn(etcd_client::KvClient) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut tries = self.members.count();
        let give_up = tokio::time::Instant::now() + self.timeout;
        let mut pause = OVERLOAD_PAUSE;
        self.kv_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loop {
            let (index, client) = self.members.current_client();
            let kv = client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES);
            match self.attempt_on(index, make(kv)).await {
                Ok(v) => return Ok(v),
                Err((_, Again::Elsewhere)) if tries > 1 => tries -= 1,
                Err((_, Again::Later)) if tokio::time::Instant::now() + pause < give_up => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Creates `key` with `value` (on `lease`, if any) unless it exists, in one transaction.
    /// `Created(revision)` when it was created, else `Exists` with the key as it stands
    /// (`None` if it vanished in between).
    async fn create_unless_exists(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: Option<i64>,
    ) -> Result<Creation> {
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key, value, options)])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(Creation::Created(
                resp.header().map(|h| h.revision()).unwrap_or_default(),
            ));
        }
        let [existing] = reads(&resp)?;
        Ok(Creation::Exists(existing.kvs().first().cloned()))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.kv_request(|mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// The value at `key`, if any (one request, [`Registry::kv_request`]).
    async fn get(&self, key: impl Into<Vec<u8>>) -> Result<GetResponse> {
        let key = key.into();
        self.kv_request(|mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })
        .await
    }

    async fn range<T: DeserializeOwned>(&self, prefix: &str) -> Result<(i64, Vec<(KeyValue, T)>)> {
        let resp = self
            .kv_request(|mut kv| async move {
                kv.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        self.count_keys(resp.kvs().len());
        let items = decode_all(resp.kvs())?;
        Ok((revision, items))
    }

    /// A read of everything under `prefix`, with `options`, at `revision` or the newest.
    pub(crate) async fn read_prefix(
        &self,
        prefix: &str,
        options: GetOptions,
        revision: Option<i64>,
    ) -> Result<GetResponse> {
        let mut options = options.with_prefix();
        if let Some(revision) = revision {
            options = options.with_revision(revision);
        }
        let resp = self
            .kv_request(|mut kv| {
                let options = options.clone();
                async move { kv.get(prefix, Some(options)).await }
            })
            .await?;
        self.count_keys(resp.kvs().len());
        Ok(resp)
    }

    /// Follows where units are placed and which are reported active; see [`Progress`].
    pub async fn follow_progress(&self) -> Result<Progress> {
        Progress::open(self).await
    }

    /// Whether etcd serves this client: one transaction whose put never runs (a version is
    /// never negative) but whose permissions etcd checks all the same, with a one-key read of
    /// the prefix. [`Error::Refused`] means a certificate, password or permission is wrong,
    /// which fleetd reports and stops on; an outage is just an outage.
    pub async fn check_access(&self) -> Result<()> {
        let probe = format!("{}access-check", self.prefix);
        let txn = Txn::new()
            .when(vec![Compare::version(probe.as_str(), CompareOp::Less, 0)])
            .and_then(vec![TxnOp::put(probe.as_str(), "", None)])
            .or_else(vec![TxnOp::get(
                self.prefix.as_str(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(1),
                ),
            )]);
        self.txn(txn).await.map(drop)
    }

    // ---- units ------------------------------------------------------------------------------

    /// All units, sorted by name.
    pub async fn units(&self) -> Result<Vec<Unit>> {
        let (_, items) = self.range::<Unit>(&self.units_prefix()).await?;
        Ok(items.into_iter().map(|(_, u)| u).collect())
    }

    pub async fn unit(&self, name: &UnitName) -> Result<Option<Unit>> {
        let resp = self.get(self.unit_key(name)).await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Some(decode(kv)?)),
            None => Ok(None),
        }
    }

    /// Creates or replaces a unit (options and desired state together), keeping the content it
    /// replaces in the unit's history (`history.rs`), in the same transaction. A unit whose
    /// records do not fit one etcd request is refused ([`Error::TooLarge`]) and nothing is
    /// written.
    pub async fn put_unit(&self, unit: &Unit) -> Result<()> {
        self.write_unit(unit).await
    }

    /// Sets the desired state of an existing unit; `false` when there is no such unit.
    /// Retries on a concurrent change so that no other update is lost. Written even when the
    /// unit already has that state: an earlier write of another state that timed out may
    /// still be applied, and must then be refused (each write is conditioned on the record
    /// it read), or a `stop` after a `start` that timed out could leave the unit running.
    pub async fn set_desired_state(&self, name: &UnitName, state: JobState) -> Result<bool> {
        loop {
            let key = self.unit_key(name);
            let resp = self.get(key.clone()).await?;
            let Some(current) = resp.kvs().first() else {
                return Ok(false);
            };
            let mut unit: Unit = decode(current)?;
            let changed = unit.desired_state != state;
            unit.desired_state = state;
            let value = encode(&unit);
            let mut ops = vec![TxnOp::put(key.clone(), value.clone(), None)];
            // Unchanged, only the unit's record is written again (the fence): a global unit's
            // `global/` key keeps the versions a rolling update wrote over it
            // (`GlobalVersion::applies_to`).
            if unit.is_global() && changed {
                ops.push(TxnOp::put(self.global_key(name), value, None));
            }
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    key,
                    CompareOp::Equal,
                    current.mod_revision(),
                )])
                .and_then(ops);
            if self.txn(txn).await?.succeeded() {
                return Ok(true);
            }
        }
    }

    /// Forgets a unit, and its history with it; `false` when there was no such unit (its
    /// history alone is no unit, and goes too). Conditioned on the unit's record as read
    /// just before: a destroy that timed out may still be applied, and must not remove the
    /// unit written since (submitted again, or changed): the later command wins. Read again
    /// when the unit changed between the read and the write.
    pub async fn delete_unit(&self, name: &UnitName) -> Result<bool> {
        loop {
            let key = self.unit_key(name);
            let resp = self.get(key.clone()).await?;
            let (condition, existed) = match resp.kvs().first() {
                Some(kv) => (
                    Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                    true,
                ),
                None => (Compare::version(key.clone(), CompareOp::Equal, 0), false),
            };
            let txn = Txn::new().when(vec![condition]).and_then(vec![
                TxnOp::delete(key, None),
                TxnOp::delete(self.global_key(name), None),
                TxnOp::delete(
                    self.history_prefix(name),
                    Some(DeleteOptions::new().with_prefix()),
                ),
            ]);
            if self.txn(txn).await?.succeeded() {
                return Ok(existed);
            }
        }
    }

    // ---- machines and states ----------------------------------------------------------------

    /// All live machines, sorted by id.
    pub async fn machines(&self) -> Result<Vec<Machine>> {
        let (_, items) = self.range::<Machine>(&self.machines_prefix()).await?;
        Ok(items.into_iter().map(|(_, m)| m).collect())
    }

    /// How many machines are live: their records counted by etcd (a count-only read), none
    /// sent.
    pub async fn machine_count(&self) -> Result<usize> {
        Ok(self.count_prefix(&self.machines_prefix()).await?.1)
    }

    /// The revision now and how many keys start with `prefix`: one count-only read, no key
    /// sent.
    pub(crate) async fn count_prefix(&self, prefix: &str) -> Result<(i64, usize)> {
        let resp = self
            .kv_request(|mut kv| {
                let prefix = prefix.to_string();
                async move {
                    kv.get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await
                }
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok((revision, usize::try_from(resp.count()).unwrap_or_default()))
    }

    /// Whether `name` is this machine's business: placed on `machine`, or global with a state
    /// published by `machine` (it runs there). One consistent read.
    pub async fn runs_on(&self, machine: &MachineId, name: &UnitName) -> Result<bool> {
        let keys_only = || Some(GetOptions::new().with_keys_only());
        let txn = Txn::new().and_then(vec![
            TxnOp::get(self.placement_key(machine, name), keys_only()),
            TxnOp::get(self.global_key(name), keys_only()),
            TxnOp::get(self.state_key(machine, name), keys_only()),
        ]);
        let [placed, global, state] = reads(&self.txn(txn).await?)?;
        let found = |r: &GetResponse| !r.kvs().is_empty();
        Ok(found(&placed) || (found(&global) && found(&state)))
    }

    /// Every unit state published by every live machine, sorted by machine then unit.
    pub async fn unit_states(&self) -> Result<Vec<UnitState>> {
        let (_, items) = self.range::<UnitState>(&self.states_prefix()).await?;
        Ok(items.into_iter().map(|(_, s)| s).collect())
    }

    /// The unit states one machine has published.
    pub async fn machine_states(&self, machine: &MachineId) -> Result<Vec<UnitState>> {
        let (_, items) = self
            .range::<UnitState>(&self.key(&format!("states/{machine}/")))
            .await?;
        Ok(items.into_iter().map(|(_, s)| s).collect())
    }

    /// Every placement, as `(machine, placement)`.
    pub async fn placements(&self) -> Result<Vec<(MachineId, Placement)>> {
        let prefix = self.placements_prefix();
        let (_, items) = self.range::<Placement>(&prefix).await?;
        Ok(items
            .into_iter()
            .filter_map(|(kv, p)| placement_machine(&prefix, &kv).map(|m| (m, p)))
            .collect())
    }

    /// Publishes (or replaces) the state of a unit on this machine, on the machine's lease.
    pub async fn publish_state(&self, lease: i64, state: &UnitState) -> Result<()> {
        self.publish_states(lease, std::slice::from_ref(state))
            .await
    }

    /// Publishes many unit states of one machine (all on its `lease`) in as few transactions
    /// as etcd's limits allow. On an error, the batches before the failing one are written.
    pub async fn publish_states(&self, lease: i64, states: &[UnitState]) -> Result<()> {
        let ops = states
            .iter()
            .map(|state| {
                let key = self.state_key(&state.machine_id, &state.name);
                let value = encode(state);
                let bytes = op_bytes(&key, &value);
                let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
                (put, bytes)
            })
            .collect();
        self.write_batched(ops).await
    }

    /// The revision each of this machine's unit states was last written at.
    pub async fn state_revisions(&self, machine: &MachineId) -> Result<BTreeMap<UnitName, i64>> {
        let prefix = self.key(&format!("states/{machine}/"));
        let resp = self
            .read_prefix(&prefix, GetOptions::new().with_keys_only(), None)
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = UnitName::parse(kv.key_str().ok()?.strip_prefix(&prefix)?).ok()?;
                Some((name, kv.mod_revision()))
            })
            .collect())
    }

    /// Publishes unit states of one machine on its `lease`, each over the revision its key
    /// was last written at as the machine knows it (`(state, over)`; 0: no state), so that a
    /// write that timed out and was applied late never replaces a later one. The revision
    /// each was written at. When a key was written meanwhile, [`Error::Conflict`]: nothing of
    /// that transaction is written (those before it are), and the machine reads the
    /// revisions again ([`Registry::state_revisions`]).
    pub async fn publish_states_over(
        &self,
        lease: i64,
        states: &[(UnitState, i64)],
    ) -> Result<Vec<i64>> {
        let groups = states.iter().map(|(state, over)| {
            let key = self.state_key(&state.machine_id, &state.name);
            let value = encode(state);
            let bytes = 2 * op_bytes(&key, &value);
            Group {
                compares: vec![Compare::mod_revision(key.clone(), CompareOp::Equal, *over)],
                ops: vec![TxnOp::put(
                    key,
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )],
                bytes,
            }
        });
        self.write_conditioned(groups, "unit states").await
    }

    /// Removes unit states of one machine, each only at the revision its key was last written
    /// at (`(name, at)`), as [`Registry::publish_states_over`] writes them.
    pub async fn remove_states_at(
        &self,
        machine: &MachineId,
        states: &[(UnitName, i64)],
    ) -> Result<()> {
        let groups = states.iter().map(|(name, at)| {
            let key = self.state_key(machine, name);
            let bytes = 2 * op_bytes(&key, b"");
            Group {
                compares: vec![Compare::mod_revision(key.clone(), CompareOp::Equal, *at)],
                ops: vec![TxnOp::delete(key, None)],
                bytes,
            }
        });
        self.write_conditioned(groups, "unit states").await?;
        Ok(())
    }

    /// Writes `groups` in transactions within etcd's limits, each conditioned on its groups'
    /// comparisons: the revision each group was written at, or [`Error::Conflict`] at the
    /// first transaction whose conditions no longer hold.
    pub(crate) async fn write_conditioned(
        &self,
        groups: impl IntoIterator<Item = Group>,
        what: &str,
    ) -> Result<Vec<i64>> {
        let mut revisions = Vec::new();
        for batch in batched(groups) {
            let resp = self
                .txn(Txn::new().when(batch.compares).and_then(batch.ops))
                .await?;
            if !resp.succeeded() {
                return Err(Error::Conflict(format!(
                    "{what} not written: etcd holds other versions than this process knew of"
                )));
            }
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            revisions.extend(std::iter::repeat_n(revision, batch.groups));
        }
        Ok(revisions)
    }

    /// Removes many unit states of one machine, in as few transactions as etcd's limits allow.
    pub async fn remove_states(&self, machine: &MachineId, names: &[UnitName]) -> Result<()> {
        self.delete_batched(names.iter().map(|name| self.state_key(machine, name)))
            .await
    }

    /// Deletes `keys`, in as few transactions as etcd's limits allow.
    async fn delete_batched(&self, keys: impl Iterator<Item = String>) -> Result<()> {
        let ops = keys
            .map(|key| {
                let bytes = op_bytes(&key, b"");
                (TxnOp::delete(key, None), bytes)
            })
            .collect();
        self.write_batched(ops).await
    }

    /// Unconditional writes, each with its size in a request, in transactions within etcd's
    /// limits on operations and bytes.
    async fn write_batched(&self, ops: Vec<(TxnOp, usize)>) -> Result<()> {
        for batch in batched(
            ops.into_iter()
                .map(|(op, bytes)| Group::of(vec![op], bytes)),
        ) {
            self.txn(Txn::new().and_then(batch.ops)).await?;
        }
        Ok(())
    }

    pub async fn remove_state(&self, machine: &MachineId, name: &UnitName) -> Result<()> {
        self.remove_states(machine, std::slice::from_ref(name))
            .await
    }

    /// Why units could not be placed, as the engine last recorded it.
    pub async fn unplaceable(&self) -> Result<BTreeMap<UnitName, Vec<String>>> {
        let prefix = self.unplaceable_prefix();
        let resp = self
            .kv_request(|mut kv| {
                let prefix = prefix.clone();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        self.decode_unplaceable(resp.kvs())
    }

    /// `unplaceable/<name>` records by unit name.
    fn decode_unplaceable(&self, kvs: &[KeyValue]) -> Result<BTreeMap<UnitName, Vec<String>>> {
        let prefix = self.unplaceable_prefix();
        Ok(decode_all::<Vec<String>>(kvs)?
            .into_iter()
            .filter_map(|(kv, reasons)| {
                let name = kv.key_str().ok()?.strip_prefix(&prefix)?;
                Some((UnitName::parse(name).ok()?, reasons))
            })
            .collect())
    }

    /// One unit with where it is placed, what its machine reports and why it is not placed,
    /// from point reads (the `placed/` index), not by reading every placement.
    pub async fn unit_view(&self, name: &UnitName) -> Result<Option<UnitView>> {
        let resp = self
            .txn(Txn::new().and_then(vec![
                TxnOp::get(self.unit_key(name), None),
                TxnOp::get(
                    self.placed_prefix(name),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
                TxnOp::get(self.unplaceable_key(name), None),
            ]))
            .await?;
        let [unit, placed, unplaceable] = reads(&resp)?;
        let Some(unit) = unit.kvs().first() else {
            return Ok(None);
        };
        let unit: Unit = decode(unit)?;
        let prefix = self.placed_prefix(name);
        // More than one entry only while a duplicate placement waits for removal: the engine
        // keeps the first by machine id, and so does this view.
        let machine = placed
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix))
            .filter_map(|id| MachineId::parse(id).ok())
            .min();
        let unplaceable = match unplaceable.kvs().first() {
            Some(kv) => Some(decode::<Vec<String>>(kv)?),
            None => None,
        };
        let state = match &machine {
            Some(m) => {
                let resp = self.get(self.state_key(m, name)).await?;
                match resp.kvs().first() {
                    Some(kv) => Some(decode::<UnitState>(kv)?),
                    None => None,
                }
            }
            None => None,
        };
        Ok(Some(UnitView {
            unit,
            machine,
            state,
            unplaceable,
        }))
    }

    /// The metadata overrides set through the API for a machine.
    pub async fn metadata_overrides(&self, id: &MachineId) -> Result<MetadataOverrides> {
        let resp = self.get(self.metadata_key(id)).await?;
        match resp.kvs().first() {
            Some(kv) => decode(kv),
            None => Ok(MetadataOverrides::new()),
        }
    }

    /// Applies metadata changes to a live machine: they are stored as overrides (so the
    /// machine keeps them when it registers again) and applied to its record, on its lease,
    /// in one transaction. `false` when the machine is not alive.
    pub async fn patch_machine_metadata(
        &self,
        id: &MachineId,
        changes: &MetadataOverrides,
    ) -> Result<bool> {
        let machine_key = self.machine_key(id);
        let metadata_key = self.metadata_key(id);
        loop {
            let resp = self
                .txn(Txn::new().and_then(vec![
                    TxnOp::get(machine_key.clone(), None),
                    TxnOp::get(metadata_key.clone(), None),
                ]))
                .await?;
            let [record, stored] = reads(&resp)?;
            let Some(record) = record.kvs().first() else {
                return Ok(false);
            };
            let mut machine: Machine = decode(record)?;
            let (mut overrides, stored_revision) = match stored.kvs().first() {
                Some(kv) => (decode::<MetadataOverrides>(kv)?, kv.mod_revision()),
                None => (MetadataOverrides::new(), 0),
            };
            for (key, value) in changes {
                overrides.insert(key.clone(), value.clone());
                match value {
                    Some(v) => machine.metadata.insert(key.clone(), v.clone()),
                    None => machine.metadata.remove(key),
                };
            }
            let txn = Txn::new()
                .when(vec![
                    Compare::mod_revision(
                        machine_key.clone(),
                        CompareOp::Equal,
                        record.mod_revision(),
                    ),
                    Compare::mod_revision(metadata_key.clone(), CompareOp::Equal, stored_revision),
                ])
                .and_then(vec![
                    TxnOp::put(
                        machine_key.clone(),
                        encode(&machine),
                        Some(PutOptions::new().with_lease(record.lease())),
                    ),
                    TxnOp::put(metadata_key.clone(), encode(&overrides), None),
                ]);
            if self.txn(txn).await?.succeeded() {
                return Ok(true);
            }
        }
    }

    // ---- engine -----------------------------------------------------------------------------

    /// Reads units, machines and placements at one revision.
    pub async fn engine_snapshot(&self) -> Result<EngineSnapshot> {
        let prefixed = || Some(GetOptions::new().with_prefix());
        let keys_only = || Some(GetOptions::new().with_prefix().with_keys_only());
        // The units and the placements, the bulk of a large cluster, a chunk at a time: the
        // first in this transaction, the rest at its revision.
        let chunked = |prefix: &str| {
            Some(
                GetOptions::new()
                    .with_range(listing::prefix_end(prefix.as_bytes()))
                    .with_limit(SNAPSHOT_CHUNK as i64),
            )
        };
        let resp = self
            .txn(Txn::new().and_then(vec![
                TxnOp::get(self.units_prefix(), chunked(&self.units_prefix())),
                TxnOp::get(self.machines_prefix(), prefixed()),
                TxnOp::get(self.placements_prefix(), chunked(&self.placements_prefix())),
                TxnOp::get(self.leader_key(), None),
                TxnOp::get(self.unplaceable_prefix(), prefixed()),
                TxnOp::get(self.members_prefix(), prefixed()),
                TxnOp::get(self.readings_prefix(), prefixed()),
                TxnOp::get(self.stopping_prefix(), keys_only()),
                TxnOp::get(self.drain_prefix(), keys_only()),
                TxnOp::get(self.updates_prefix(), prefixed()),
            ]))
            .await?;
        // The chunks after the first are read at this revision: without it they would read
        // the newest, and the snapshot would not be one.
        let revision = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| Error::Protocol("a snapshot's answer without a revision".into()))?;
        let [units, machines, placements, leader, unplaceable, members, readings, stopping, draining, updates] =
            reads(&resp)?;
        self.count_keys(
            [
                &units,
                &machines,
                &placements,
                &leader,
                &unplaceable,
                &members,
                &readings,
                &stopping,
                &draining,
                &updates,
            ]
            .iter()
            .map(|r| r.kvs().len())
            .sum(),
        );
        // Both at once: etcd serves them on cores of its own, and each answer is received
        // while the other is read.
        let (units_prefix, placements_prefix) = (self.units_prefix(), self.placements_prefix());
        let (units, placements) = tokio::try_join!(
            self.rest_of(&units_prefix, units, revision),
            self.rest_of(&placements_prefix, placements, revision),
        )?;
        let units = decode_all::<Unit>(&units)?
            .into_iter()
            .map(|(_, u)| u)
            .collect();
        let machines = decode_all::<Machine>(machines.kvs())?
            .into_iter()
            // Only a record under its own machine's key is that machine's (the view finds
            // machines by key, and its changes name them by key).
            .filter(|(kv, machine)| {
                let own = kv.key() == self.machine_key(&machine.id).as_bytes();
                if !own {
                    tracing::warn!(
                        key = %String::from_utf8_lossy(kv.key()),
                        machine = %machine.id,
                        "ignoring a machine record under another machine's key"
                    );
                }
                own
            })
            .map(|(kv, machine)| MachineEntry {
                machine,
                lease: kv.lease(),
            })
            .collect();
        let prefix = self.placements_prefix();
        let placements = decode_all::<Placement>(&placements)?
            .into_iter()
            .filter_map(|(kv, p)| placement_machine(&prefix, &kv).map(|m| (m, p)))
            .collect();
        let leader = leader.kvs().first().map(|kv| Leadership {
            revision: kv.create_revision(),
            lease: kv.lease(),
        });
        let unplaceable = self.decode_unplaceable(unplaceable.kvs())?;
        let members = member_entries(&self.members_prefix(), members.kvs());
        let readings = readings
            .kvs()
            .iter()
            .filter_map(|kv| self.reading_entry(kv))
            .collect();
        let stopping = stopping
            .kvs()
            .iter()
            .filter_map(|kv| self.stopping_entry(kv.key_str().ok()?))
            .collect();
        let draining = draining
            .kvs()
            .iter()
            .filter_map(|kv| self.drain_entry(kv.key_str().ok()?))
            .collect();
        let updates = self
            .engine_updates(updates.kvs(), revision)
            .await?
            .into_iter()
            .map(|u| (u.update.id.clone(), u))
            .collect();
        Ok(EngineSnapshot {
            revision,
            leader,
            units,
            machines,
            members,
            readings,
            placements,
            unplaceable,
            stopping,
            draining,
            updates,
        })
    }

    /// The keys and values under `prefix` at `revision`, a chunk (`SNAPSHOT_CHUNK`) per request.
    pub(crate) async fn read_chunks(&self, prefix: &str, revision: i64) -> Result<Vec<KeyValue>> {
        self.read_chunks_from(prefix, prefix.as_bytes().to_vec(), revision)
            .await
    }

    /// The keys and values under `prefix` from `start` on, at `revision`, a chunk per request.
    async fn read_chunks_from(
        &self,
        prefix: &str,
        mut start: Vec<u8>,
        revision: i64,
    ) -> Result<Vec<KeyValue>> {
        let end = listing::prefix_end(prefix.as_bytes());
        let mut kvs: Vec<KeyValue> = Vec::new();
        loop {
            let chunk = self
                .chunk(start, end.clone(), SNAPSHOT_CHUNK, revision)
                .await?;
            kvs.extend(chunk.kvs);
            match kvs.last() {
                Some(last) if chunk.more => start = listing::successor(last.key()),
                _ => return Ok(kvs),
            }
        }
    }

    /// The keys under `prefix` at `revision`: those of `first`, the answer to a read of it
    /// limited to a chunk, then the rest a chunk per request.
    async fn rest_of(
        &self,
        prefix: &str,
        first: GetResponse,
        revision: i64,
    ) -> Result<Vec<KeyValue>> {
        let more = first.more();
        let mut first = first;
        let mut kvs = first.take_kvs();
        if let Some(last) = kvs.last().filter(|_| more) {
            let start = listing::successor(last.key());
            kvs.extend(self.read_chunks_from(prefix, start, revision).await?);
        }
        Ok(kvs)
    }

    /// The key an engine that does not lead watches, to campaign when it is deleted.
    pub fn leader_watch_prefixes(&self) -> Vec<String> {
        vec![self.leader_key()]
    }

    /// Changes of the leader key from now on: what an engine that does not lead waits for.
    /// One point read, whatever the size of the cluster.
    pub async fn leader_changes(&self) -> Result<Changes> {
        let revision = self
            .get(self.leader_key())
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or_default();
        self.watch(&self.leader_watch_prefixes(), revision + 1)
            .await
    }

    /// The prefixes the leading engine's view follows: everything [`Registry::engine_snapshot`]
    /// reads.
    pub fn engine_watch_prefixes(&self) -> Vec<String> {
        vec![
            self.units_prefix(),
            self.machines_prefix(),
            self.members_prefix(),
            self.readings_prefix(),
            self.placements_prefix(),
            self.leader_key(),
            self.unplaceable_prefix(),
            self.stopping_prefix(),
            self.drain_prefix(),
            self.updates_prefix(),
            self.update_machines_root(),
        ]
    }

    /// Reads what the engine decides from ([`Registry::engine_snapshot`]) and follows its
    /// changes from then on; see [`EngineView`].
    pub async fn engine_view(&self) -> Result<EngineView> {
        EngineView::open(self).await
    }

    /// Tries once to become the engine leader on `lease`. `None` when another machine leads.
    /// A machine that already holds the key (e.g. after a restart on the same lease) keeps it.
    pub async fn campaign(&self, machine: &MachineId, lease: i64) -> Result<Option<Leadership>> {
        match self
            .create_unless_exists(&self.leader_key(), machine.as_str(), Some(lease))
            .await?
        {
            Creation::Created(revision) => Ok(Some(Leadership { revision, lease })),
            Creation::Exists(Some(kv))
                if kv.value() == machine.as_str().as_bytes() && kv.lease() == lease =>
            {
                Ok(Some(Leadership {
                    revision: kv.create_revision(),
                    lease,
                }))
            }
            Creation::Exists(_) => Ok(None),
        }
    }

    /// The machine currently leading the engine, if any.
    pub async fn engine_leader(&self) -> Result<Option<MachineId>> {
        let resp = self.get(self.leader_key()).await?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok())
            .and_then(|s| MachineId::parse(s).ok()))
    }

    /// Applies the engine's placement changes, each transaction conditioned on `leadership`:
    /// removals first, then new placements, each in batches of their own. A unit is placed on
    /// a machine only while no other machine holds it (its `placed/` entries): a plan made
    /// from a view that lacks a placement (the engine's own, written earlier, timed out and
    /// applied late, say) is refused as [`Error::Conflict`] rather than running the unit
    /// twice. The same plan may remove a unit from one machine and place it on another, which
    /// is why removals go first. An index entry left without its placement (by hand) is
    /// removed when it refuses one, so that the next plan goes through. The revision each
    /// change was written at, in the order of `ops`; on an error, the batches before the
    /// failing one are written.
    pub async fn apply_placements(
        &self,
        leadership: Leadership,
        ops: &[PlacementOp],
    ) -> Result<Vec<i64>> {
        let key = self.leader_key();
        let mut revisions = vec![0; ops.len()];
        let (removals, puts): (Vec<usize>, Vec<usize>) =
            (0..ops.len()).partition(|&i| !matches!(ops[i], PlacementOp::Put { .. }));
        for phase in [removals, puts] {
            let mut at = 0;
            for batch in self.placement_batches(leadership, phase.iter().map(|&i| &ops[i])) {
                let held = &phase[at..at + batch.groups];
                at += batch.groups;
                let placing: Vec<(&UnitName, &MachineId)> = held
                    .iter()
                    .filter_map(|&i| match &ops[i] {
                        PlacementOp::Put { machine, placement } => Some((&placement.name, machine)),
                        _ => None,
                    })
                    .collect();
                let mut when = vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    leadership.revision,
                )];
                when.extend(batch.compares);
                // Refused: whether the leadership holds, and where each unit is placed.
                let otherwise: Vec<TxnOp> = std::iter::once(TxnOp::get(key.clone(), None))
                    .chain(placing.iter().map(|(name, _)| {
                        TxnOp::get(
                            self.placed_prefix(name),
                            Some(GetOptions::new().with_prefix().with_keys_only()),
                        )
                    }))
                    .collect();
                let txn = Txn::new().when(when).and_then(batch.ops).or_else(otherwise);
                let resp = self.txn(txn).await?;
                if !resp.succeeded() {
                    return Err(self.placements_refused(leadership, &resp, &placing).await);
                }
                let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                for &i in held {
                    revisions[i] = revision;
                }
            }
        }
        Ok(revisions)
    }

    /// Why a batch of placements was refused: the leadership lost, or units placed on other
    /// machines than `placing` says. Index entries found without their placement are removed
    /// (conditioned on the leadership and on the placement's absence).
    async fn placements_refused(
        &self,
        leadership: Leadership,
        resp: &TxnResponse,
        placing: &[(&UnitName, &MachineId)],
    ) -> Error {
        let gets = gets(resp);
        let Some((held, placed)) = gets.split_first() else {
            return Error::Protocol("a refused placement transaction answered no read".into());
        };
        if held.kvs().first().map(|kv| kv.create_revision()) != Some(leadership.revision) {
            return Error::NotLeader;
        }
        let mut elsewhere = Vec::new();
        for ((name, target), placed) in placing.iter().zip(placed) {
            let prefix = self.placed_prefix(name);
            for kv in placed.kvs() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let machine = key
                    .strip_prefix(&prefix)
                    .and_then(|id| MachineId::parse(id).ok());
                if machine.as_ref() == Some(*target) {
                    continue;
                }
                // No placement stands behind a key that names no machine.
                let placement = machine.as_ref().map(|m| self.placement_key(m, name));
                match self.remove_orphan_index(leadership, &key, placement).await {
                    Ok(true) => tracing::warn!(
                        unit = %name,
                        key,
                        "removed an index entry of a placement that does not exist"
                    ),
                    Ok(false) => elsewhere.push(format!(
                        "{name} on {}",
                        machine.map_or(key, |m| m.to_string())
                    )),
                    Err(e) => return e,
                }
            }
        }
        Error::Conflict(format!(
            "placements refused: etcd holds placements the plan did not know of ({})",
            if elsewhere.is_empty() {
                "index entries without placements, now removed".to_string()
            } else {
                elsewhere.join(", ")
            }
        ))
    }

    /// Removes the index entry at `key` if the placement it stands for (`placement`; none for
    /// a key that names no machine) does not exist.
    async fn remove_orphan_index(
        &self,
        leadership: Leadership,
        key: &str,
        placement: Option<String>,
    ) -> Result<bool> {
        let mut when = vec![Compare::create_revision(
            self.leader_key(),
            CompareOp::Equal,
            leadership.revision,
        )];
        when.extend(placement.map(|p| Compare::version(p, CompareOp::Equal, 0)));
        let txn = Txn::new()
            .when(when)
            .and_then(vec![TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Declares a machine whose lease is gone dead: removes what was placed on it (`units`)
    /// and its member record and reading, so that the engine places those units elsewhere.
    /// Every transaction is conditioned on `leadership`, on the machine not being registered,
    /// and on its member record and reading being the ones the engine judged (`judged`, the
    /// later of their mod revisions, [`Judged::revision`]: neither written since, so that a
    /// machine that registered again in between, even if gone again, or that recorded another
    /// reading, is judged afresh); `Ok(false)` when that no longer holds (nothing more is
    /// removed then).
    pub async fn declare_dead(
        &self,
        leadership: Leadership,
        machine: &MachineId,
        judged: i64,
        units: &[UnitName],
    ) -> Result<bool> {
        let leader = self.leader_key();
        let mut ops: Vec<PlacementOp> = units
            .iter()
            .map(|name| PlacementOp::Delete {
                machine: machine.clone(),
                name: name.clone(),
            })
            .collect();
        ops.dedup();
        let mut batches: Vec<Vec<TxnOp>> = self
            .placement_batches(leadership, &ops)
            .into_iter()
            .map(|batch| batch.ops)
            .collect();
        // The member record goes last, so that an interrupted declaration is taken up again;
        // with it what the machine was stopping and its versions of global units: it runs
        // nothing any more.
        batches.push(self.member_removal(machine).to_vec());
        for batch in batches {
            // Written at or before `judged` (a key that is gone compares as written at 0: the
            // member record must be there).
            let txn = Txn::new()
                .when(vec![
                    Compare::create_revision(leader.clone(), CompareOp::Equal, leadership.revision),
                    Compare::version(self.machine_key(machine), CompareOp::Equal, 0),
                    Compare::version(self.member_key(machine), CompareOp::Greater, 0),
                    Compare::mod_revision(self.member_key(machine), CompareOp::Less, judged + 1),
                    Compare::mod_revision(self.reading_key(machine), CompareOp::Less, judged + 1),
                ])
                .and_then(batch)
                .or_else(vec![TxnOp::get(leader.clone(), None)]);
            let resp = self.txn(txn).await?;
            if !resp.succeeded() {
                let [held] = reads(&resp)?;
                return match held.kvs().first() {
                    Some(kv) if kv.create_revision() == leadership.revision => Ok(false),
                    _ => Err(Error::NotLeader),
                };
            }
        }
        Ok(true)
    }

    /// The deletion of a placement and its index entry, without a stop.
    pub(crate) fn placement_delete(&self, machine: &MachineId, name: &UnitName) -> Group {
        let (key, index) = (
            self.placement_key(machine, name),
            self.placed_key(name, machine),
        );
        let bytes = op_bytes(&key, b"") + op_bytes(&index, b"");
        Group::of(
            vec![TxnOp::delete(key, None), TxnOp::delete(index, None)],
            bytes,
        )
    }

    /// What ends a machine's membership, declared dead or removed by hand: its member record
    /// and reading, what it was stopping and its versions of global units (it runs nothing any
    /// more).
    pub(crate) fn member_removal(&self, machine: &MachineId) -> [TxnOp; 4] {
        let prefixed = || Some(DeleteOptions::new().with_prefix());
        [
            TxnOp::delete(self.machine_stopping_prefix(machine), prefixed()),
            TxnOp::delete(self.machine_versions_prefix(machine), prefixed()),
            TxnOp::delete(self.member_key(machine), None),
            TxnOp::delete(self.reading_key(machine), None),
        ]
    }

    /// What registering `member` writes besides its machine record: its member record,
    /// whose own reading counts over no one ([`Member`]), and its reading of the members.
    pub(crate) fn registration_puts(&self, member: &Member) -> [TxnOp; 2] {
        let id = &member.machine.id;
        let record = Member {
            seen_revision: 0,
            ..member.clone()
        };
        [
            TxnOp::put(self.member_key(id), encode(&record), None),
            TxnOp::put(self.reading_key(id), encode(&member.reading()), None),
        ]
    }

    /// Records a new reading of the members as this machine's reading, unless its member
    /// record is gone (the machine was declared dead: it becomes a member again only by
    /// registering). Whether it was recorded.
    pub async fn record_reading(&self, member: &Member) -> Result<bool> {
        let id = &member.machine.id;
        let txn = Txn::new()
            .when(vec![Compare::version(
                self.member_key(id),
                CompareOp::Greater,
                0,
            )])
            .and_then(vec![TxnOp::put(
                self.reading_key(id),
                encode(&member.reading()),
                None,
            )]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Records a new reading of the members as this machine's reading if its reading was last
    /// written at revision `over` (0: it has none) and its member record at `registered`, by
    /// its registration (see [`Recorded`]).
    pub async fn record_reading_over(
        &self,
        member: &Member,
        over: i64,
        registered: i64,
    ) -> Result<Recorded> {
        let id = &member.machine.id;
        let key = self.reading_key(id);
        let keys_only = || Some(GetOptions::new().with_keys_only());
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(self.member_key(id), CompareOp::Equal, registered),
                Compare::mod_revision(key.clone(), CompareOp::Equal, over),
            ])
            .and_then(vec![TxnOp::put(
                key.clone(),
                encode(&member.reading()),
                None,
            )])
            .or_else(vec![
                TxnOp::get(self.member_key(id), keys_only()),
                TxnOp::get(key, keys_only()),
            ]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(Recorded::Written(
                resp.header().map(|h| h.revision()).unwrap_or_default(),
            ));
        }
        let [record, reading] = reads::<2>(&resp)?;
        if record.kvs().first().map(|kv| kv.mod_revision()) != Some(registered) {
            return Ok(Recorded::Gone);
        }
        Ok(Recorded::Moved(
            reading.kvs().first().map_or(0, |kv| kv.mod_revision()),
        ))
    }

    /// The cluster's members (machines registered and not declared dead), and the revision
    /// they were read at.
    pub async fn cluster_members(&self) -> Result<(i64, Vec<MemberEntry>)> {
        let prefix = self.members_prefix();
        let resp = self
            .kv_request(|mut kv| {
                let prefix = prefix.clone();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        self.count_keys(resp.kvs().len());
        Ok((revision, member_entries(&self.members_prefix(), resp.kvs())))
    }

    /// How many members there are and whether `me` is one of them, with the revision read at
    /// (count-only reads: etcd sends no record).
    pub(crate) async fn count_members(&self, me: &MachineId) -> Result<(i64, usize, bool)> {
        let count = || Some(GetOptions::new().with_prefix().with_count_only());
        let txn = Txn::new().and_then(vec![
            TxnOp::get(self.members_prefix(), count()),
            TxnOp::get(
                self.member_key(me),
                Some(GetOptions::new().with_count_only()),
            ),
        ]);
        let resp = self.txn(txn).await?;
        let [all, own] = reads::<2>(&resp)?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let all = usize::try_from(all.count()).unwrap_or(usize::MAX);
        Ok((revision, all, own.count() > 0))
    }

    /// How many members there were at `revision` (a count-only read: etcd sends no record).
    pub(crate) async fn count_members_at(&self, revision: i64) -> Result<usize> {
        let resp = self
            .members_at(revision, GetOptions::new().with_count_only())
            .await?;
        Ok(usize::try_from(resp.count()).unwrap_or(usize::MAX))
    }

    /// The keys under the members' prefix at `revision` (a keys-only read): members' keys,
    /// and whatever else is there.
    pub(crate) async fn member_keys_at(&self, revision: i64) -> Result<Vec<Vec<u8>>> {
        let resp = self
            .members_at(revision, GetOptions::new().with_keys_only())
            .await?;
        self.count_keys(resp.kvs().len());
        Ok(resp.kvs().iter().map(|kv| kv.key().to_vec()).collect())
    }

    /// A read of the members' prefix at `revision`, with `options` (count or keys only).
    async fn members_at(&self, revision: i64, options: GetOptions) -> Result<GetResponse> {
        let prefix = self.members_prefix();
        let options = options.with_prefix().with_revision(revision);
        self.kv_request(|mut kv| {
            let prefix = prefix.clone();
            let options = options.clone();
            async move { kv.get(prefix, Some(options)).await }
        })
        .await
    }

    /// The prefix whose changes tell that the members changed.
    pub fn members_watch_prefixes(&self) -> Vec<String> {
        vec![self.members_prefix()]
    }

    /// The transactions that carry `ops`, in order, each within etcd's limits on operations
    /// and on bytes: placements carry their unit's options, so a few large units fill a
    /// request long before the operation limit does. A placement and its index entry always
    /// go in the same transaction.
    fn placement_batches<'a>(
        &self,
        leadership: Leadership,
        ops: impl IntoIterator<Item = &'a PlacementOp>,
    ) -> Vec<Batch> {
        let groups = ops.into_iter().map(|op| match op {
            PlacementOp::Put { machine, placement } => {
                let (key, value) = (
                    self.placement_key(machine, &placement.name),
                    encode(placement),
                );
                let index = self.placed_key(&placement.name, machine);
                // No other machine holds the unit: no index entry before this machine's in
                // the unit's, nor after it.
                let prefix = self.placed_prefix(&placement.name);
                let end = listing::prefix_end(prefix.as_bytes());
                let after = listing::successor(index.as_bytes());
                // Its puts, its two comparisons, and the read of the unit's entries the
                // transaction makes if refused.
                let bytes = op_bytes(&key, &value)
                    + op_bytes(&index, b"")
                    + op_bytes(&prefix, index.as_bytes())
                    + after.len()
                    + end.len()
                    + 32
                    + op_bytes(&prefix, &end);
                Group {
                    compares: vec![
                        Compare::version(prefix, CompareOp::Equal, 0).with_range(index.clone()),
                        Compare::version(after, CompareOp::Equal, 0).with_range(end),
                    ],
                    ops: vec![TxnOp::put(key, value, None), TxnOp::put(index, "", None)],
                    bytes,
                }
            }
            PlacementOp::Delete { machine, name } => self.placement_delete(machine, name),
            PlacementOp::Move { machine, name } => {
                let (key, index, stopping) = (
                    self.placement_key(machine, name),
                    self.placed_key(name, machine),
                    self.stopping_key(machine, name),
                );
                let bytes = op_bytes(&key, b"") + op_bytes(&index, b"") + op_bytes(&stopping, b"");
                Group::of(
                    vec![
                        TxnOp::delete(key, None),
                        TxnOp::delete(index, None),
                        TxnOp::put(stopping, "", None),
                    ],
                    bytes,
                )
            }
            PlacementOp::SetUnplaceable { name, reasons } => {
                let (key, value) = (self.unplaceable_key(name), encode(reasons));
                let bytes = op_bytes(&key, &value);
                let on_lease = Some(PutOptions::new().with_lease(leadership.lease));
                Group::of(vec![TxnOp::put(key, value, on_lease)], bytes)
            }
            PlacementOp::ClearUnplaceable { name } => {
                let key = self.unplaceable_key(name);
                let bytes = op_bytes(&key, b"");
                Group::of(vec![TxnOp::delete(key, None)], bytes)
            }
        });
        batched(groups)
    }

    // ---- agent ------------------------------------------------------------------------------

    /// Reads this machine's placements and all global units at one revision.
    pub async fn agent_snapshot(&self, machine: &MachineId) -> Result<AgentSnapshot> {
        let prefixed = || Some(GetOptions::new().with_prefix());
        let resp = self
            .txn(Txn::new().and_then(vec![
                TxnOp::get(self.machine_placements_prefix(machine), prefixed()),
                TxnOp::get(self.global_prefix(), prefixed()),
                TxnOp::get(self.machine_key(machine), None),
                TxnOp::get(
                    self.machine_stopping_prefix(machine),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
                TxnOp::get(self.machine_versions_prefix(machine), prefixed()),
            ]))
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let [placements, globals, record, stopping, versions] = reads(&resp)?;
        self.count_keys(
            placements.kvs().len()
                + globals.kvs().len()
                + record.kvs().len()
                + stopping.kvs().len()
                + versions.kvs().len(),
        );
        let mut global_revisions = BTreeMap::new();
        for kv in globals.kvs() {
            if let Some(name) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&self.global_prefix()))
                .and_then(|n| UnitName::parse(n).ok())
            {
                global_revisions.insert(name, kv.mod_revision());
            }
        }
        let mut machine_versions = BTreeMap::new();
        for kv in versions.kvs() {
            if let Some(name) = kv
                .key_str()
                .ok()
                .and_then(|k| self.version_entry(machine, k))
            {
                match decode::<GlobalVersion>(kv) {
                    Ok(version) => {
                        machine_versions.insert(name, version);
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a version that cannot be read"),
                }
            }
        }
        let machine = match record.kvs().first() {
            Some(kv) => Some(decode::<Machine>(kv)?),
            None => None,
        };
        Ok(AgentSnapshot {
            revision,
            machine,
            placements: decode_all::<Placement>(placements.kvs())?
                .into_iter()
                .map(|(_, p)| p)
                .collect(),
            global_units: decode_all::<Unit>(globals.kvs())?
                .into_iter()
                .map(|(_, u)| u)
                .collect(),
            stopping: stopping
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let (_, name) = self.stopping_entry(kv.key_str().ok()?)?;
                    Some((name, kv.create_revision()))
                })
                .collect(),
            global_revisions,
            versions: machine_versions,
        })
    }

    /// The prefixes whose changes concern one machine's agent: nobody else's placements.
    pub fn agent_watch_prefixes(&self, machine: &MachineId) -> Vec<String> {
        vec![
            self.machine_placements_prefix(machine),
            self.global_prefix(),
            self.machine_key(machine),
            self.machine_stopping_prefix(machine),
            self.machine_versions_prefix(machine),
        ]
    }

    /// Reads what this machine's agent decides from ([`Registry::agent_snapshot`]) and follows
    /// its changes from then on; see [`AgentView`].
    pub async fn agent_view(&self, machine: &MachineId) -> Result<AgentView> {
        AgentView::open(self, machine).await
    }

    /// Watches `prefixes` from `revision` on; see [`Changes`].
    pub async fn watch(&self, prefixes: &[String], revision: i64) -> Result<Changes> {
        self.watch_from(prefixes, Some(revision)).await
    }

    /// Watches `prefixes` from now on, returning once etcd has created the watch: a
    /// linearizable read made afterwards misses nothing the watch does not bring. Cheaper for
    /// etcd than a watch from a past revision (see [`Changes`]' `open`): a view is read after
    /// its watch is opened, not before.
    pub async fn watch_now(&self, prefixes: &[String]) -> Result<Changes> {
        self.watch_from(prefixes, None).await
    }

    async fn watch_from(&self, prefixes: &[String], start: Option<i64>) -> Result<Changes> {
        let used = self.members.current();
        let watch = self
            .members
            .client()
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let opened = Changes::open(watch, prefixes, start, self.timeout, &self.endpoints).await;
        if opened.as_ref().is_err_and(Error::is_unavailable) {
            self.members.failed(used);
        }
        opened
    }
}

/// The answers to a transaction's reads, in the order of the reads.
fn gets(resp: &TxnResponse) -> Vec<GetResponse> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()
}

/// The answers to a transaction's `N` reads, in the order of the reads. Any other number of
/// answers is a protocol error.
fn reads<const N: usize>(resp: &TxnResponse) -> Result<[GetResponse; N]> {
    let gets = gets(resp);
    let got = gets.len();
    gets.try_into()
        .map_err(|_| Error::Protocol(format!("a transaction of {N} reads answered {got} of them")))
}

/// The member records under `prefix`. One that cannot be read (written by another version,
/// say) still counts as a member, by the id in its key, that nobody can judge dead (it knew of
/// more members than there can be) until its machine registers again and rewrites it: an
/// unreadable record must make majorities harder to reach, never easier.
///
/// Only a key that names a machine (its id as fleet writes it, [`key_machine_id`]) holds a
/// member, and that machine's: a record under another key (a copy, written by hand) is no
/// member, and one that names another machine than its key is unreadable.
fn member_entries(prefix: &str, kvs: &[KeyValue]) -> Vec<MemberEntry> {
    kvs.iter()
        .filter_map(|kv| member_entry(prefix, kv))
        .collect()
}

/// The member a key under the members' `prefix` holds, if the key names one
/// ([`key_machine_id`]).
pub(crate) fn member_entry(prefix: &str, kv: &KeyValue) -> Option<MemberEntry> {
    Some(member_entry_of(key_machine_id(prefix, kv.key())?, kv))
}

/// The member `id`'s entry from its record `kv`: unreadable (a member nobody can judge dead)
/// if the record does not decode or names another machine.
pub(crate) fn member_entry_of(id: MachineId, kv: &KeyValue) -> MemberEntry {
    let decoded = decode::<Member>(kv).and_then(|member| {
        if member.machine.id == id {
            Ok(member)
        } else {
            Err(Error::Protocol(format!(
                "the record of {id} names {}",
                member.machine.id
            )))
        }
    });
    let member = match decoded {
        Ok(member) => member,
        Err(e) => {
            tracing::debug!(error = %e, "unreadable member record");
            Member {
                machine: Machine {
                    id,
                    public_ip: String::new(),
                    metadata: BTreeMap::new(),
                    version: String::new(),
                    peer_address: None,
                },
                seen_revision: 0,
                seen_members: usize::MAX,
            }
        }
    };
    MemberEntry {
        member,
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// The machine a key under `prefix` (the members' or the machines') names: its id as fleet
/// writes it (32 lowercase hexadecimal digits, nothing else), or none.
pub(crate) fn key_machine_id(prefix: &str, key: &[u8]) -> Option<MachineId> {
    let rest = std::str::from_utf8(key.strip_prefix(prefix.as_bytes())?).ok()?;
    MachineId::parse(rest).ok().filter(|id| id.as_str() == rest)
}

fn placement_machine(prefix: &str, kv: &KeyValue) -> Option<MachineId> {
    let key = kv.key_str().ok()?;
    let rest = key.strip_prefix(prefix)?;
    let (machine, _) = rest.split_once('/')?;
    MachineId::parse(machine).ok()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain records cannot fail: no maps with non-string keys, no floats.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(kv.value()).map_err(|source| Error::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        source,
    })
}

fn decode_all<T: DeserializeOwned>(kvs: &[KeyValue]) -> Result<Vec<(KeyValue, T)>> {
    kvs.iter()
        .map(|kv| decode(kv).map(|v| (kv.clone(), v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_etcds_too_many_requests_is_made_again_later() {
        let status =
            |code, message: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, message));
        assert!(overloaded(&status(
            tonic::Code::ResourceExhausted,
            "etcdserver: too many requests"
        )));
        // Out of space is a refusal that waiting does not mend; the others are not refusals.
        assert!(!overloaded(&status(
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        )));
        assert!(!overloaded(&status(
            tonic::Code::Unavailable,
            "etcdserver: too many requests"
        )));
        assert!(!overloaded(&status(
            tonic::Code::InvalidArgument,
            "etcdserver: too many operations in txn request"
        )));
        // What a caller is told once the request could wait no more.
        let too_many = status(
            tonic::Code::ResourceExhausted,
            "etcdserver: too many requests",
        );
        assert!(Error::from_etcd(too_many, "e").is_overloaded());
        let no_space = status(
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        );
        assert!(!Error::from_etcd(no_space, "e").is_overloaded());
        // Each creation of a group etcd refused so is told the same.
        let too_many = status(
            tonic::Code::ResourceExhausted,
            "etcdserver: too many requests",
        );
        assert!(Error::from_etcd(too_many, "e").copy().is_overloaded());
        let other = status(tonic::Code::InvalidArgument, "etcdserver: duplicate key");
        assert!(!Error::from_etcd(other, "e").copy().is_overloaded());
    }
}
