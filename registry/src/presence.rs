//! A machine's presence: its record on one lease, kept alive by one keepalive stream.
//!
//! Idle cost per machine is one keepalive every third of the TTL, however many units the machine
//! runs: its unit states and the placements made to it hang on the same lease.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::time::Instant;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};

use crate::{encode, Creation, Error, Machine, Registry, Result};

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
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.task.abort();
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
        // Within what etcd grants, which also keeps the timer arithmetic below from overflowing.
        let ttl_secs = ttl.as_secs().clamp(2, MAX_LEASE_TTL_SECS) as i64;
        let lease = register_until_done(&registry, &machine, ttl_secs, lease_file.as_ref()).await?;
        let (tx, rx) = watch::channel(PresenceStatus::Alive { lease });
        let task = tokio::spawn(keep_alive(
            registry, machine, ttl_secs, lease_file, lease, tx,
        ));
        Ok(Presence { status: rx, task })
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
) -> Result<i64> {
    let mut warned = false;
    loop {
        match register(registry, machine, ttl, lease_file).await {
            Ok(lease) => return Ok(lease),
            Err(Error::DuplicateMachine(id)) => {
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

/// One registration attempt: take back the lease of a previous run if the record still hangs
/// on it, else create the record on a new lease unless a live record exists.
async fn register(
    registry: &Registry,
    machine: &Machine,
    ttl: i64,
    lease_file: Option<&PathBuf>,
) -> Result<i64> {
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
    if let Some(previous) = lease_file.and_then(read_lease) {
        let txn = Txn::new()
            .when(vec![Compare::lease(
                key.clone(),
                CompareOp::Equal,
                previous,
            )])
            .and_then(vec![TxnOp::put(
                key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(previous)),
            )]);
        // The put fails if the lease expired meanwhile; then register afresh.
        if let Ok(resp) = registry.txn(txn).await {
            if resp.succeeded() {
                tracing::info!(lease = previous, "took back the lease of the previous run");
                return Ok(previous);
            }
        }
    }
    let mut lease_client = registry.lease_client();
    let grant = registry.timed(lease_client.grant(ttl, None)).await?;
    let lease = grant.id();
    if let Creation::Exists(holder) = registry
        .create_unless_exists(&key, value, Some(lease))
        .await?
    {
        let _ = registry.timed(lease_client.revoke(lease)).await;
        tracing::debug!(holder = ?holder.map(|kv| kv.lease()), "machine key is held");
        return Err(Error::DuplicateMachine(machine.id.clone()));
    }
    if let Some(path) = lease_file {
        if let Err(e) = write_lease(path, lease) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remember the lease");
        }
    }
    tracing::info!(machine = %machine.id, lease, ttl, "registered machine");
    Ok(lease)
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

/// Renews the lease every third of its TTL. When the lease is found gone (etcd says TTL 0),
/// registers again on a new one. When renewal keeps failing past the lease's expiry, reports
/// `Fenced` until it succeeds again.
async fn keep_alive(
    registry: Registry,
    machine: Machine,
    ttl: i64,
    lease_file: Option<PathBuf>,
    mut lease: i64,
    status: watch::Sender<PresenceStatus>,
) {
    let period = Duration::from_millis((ttl as u64 * 1000) / 3);
    let mut expires_at = Instant::now() + Duration::from_secs(ttl as u64);
    let mut renewer = Renewer { stream: None };
    loop {
        match renewer.renew(&registry, lease).await {
            Ok(remaining) if remaining > 0 => {
                expires_at = Instant::now() + Duration::from_secs(remaining as u64);
                status.send_if_modified(|s| {
                    let next = PresenceStatus::Alive { lease };
                    let changed = *s != next;
                    if changed {
                        tracing::info!(lease, "lease renewed");
                    }
                    *s = next;
                    changed
                });
            }
            Ok(_) => {
                tracing::warn!(
                    lease,
                    "this machine's lease expired; fencing and registering again"
                );
                status.send_replace(PresenceStatus::Fenced);
                match register(&registry, &machine, ttl, lease_file.as_ref()).await {
                    Ok(new_lease) => {
                        lease = new_lease;
                        expires_at = Instant::now() + Duration::from_secs(ttl as u64);
                        status.send_replace(PresenceStatus::Alive { lease });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot register again yet"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew this machine's lease");
                // Fence a little before the lease can expire in etcd: the engine moves this
                // machine's units the moment it does, and they must not run twice.
                if Instant::now() + fence_margin(ttl, registry.timeout) >= expires_at
                    && *status.borrow() != PresenceStatus::Fenced
                {
                    tracing::error!("lease about to expire without renewal: fencing this machine");
                    status.send_replace(PresenceStatus::Fenced);
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// How long before its lease could expire a machine that cannot renew it stops its units: more
/// than one failed renewal takes (a request timeout and the pause before the next try), so the
/// fence always comes first; at most half the TTL.
fn fence_margin(ttl: i64, request_timeout: Duration) -> Duration {
    (request_timeout + RETRY_PAUSE + Duration::from_millis(500))
        .min(Duration::from_millis(ttl as u64 * 1000 / 2))
}

/// The longest lease TTL etcd grants (its `MaxLeaseTTL`).
const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;

/// The pause between two failed renewals.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The one keepalive stream of this machine, opened again after an error.
struct Renewer {
    stream: Option<(i64, LeaseKeeper, LeaseKeepAliveStream)>,
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
        if !matches!(&self.stream, Some((l, _, _)) if *l == lease) {
            let mut lease_client = registry.lease_client();
            let opened = registry.timed(lease_client.keep_alive(lease)).await;
            // etcd-client reports a lease that is already gone as an error when the stream is
            // opened (on an open stream, as a TTL of 0): both mean "register again".
            if let Err(Error::Etcd(etcd_client::Error::LeaseKeepAliveError(message))) = &opened {
                if message.contains("lease not found") {
                    return Ok(0);
                }
            }
            let (keeper, stream) = opened?;
            self.stream = Some((lease, keeper, stream));
        }
        let Some((_, keeper, stream)) = self.stream.as_mut() else {
            return Err(Error::Protocol("no keepalive stream".into()));
        };
        registry.timed(keeper.keep_alive()).await?;
        match registry.timed(stream.message()).await? {
            Some(resp) => Ok(resp.ttl()),
            None => Err(Error::Protocol("keepalive stream closed".into())),
        }
    }
}
