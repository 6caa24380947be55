//! Unit creations sent to etcd together.
//!
//! Creating a unit is one transaction: its record and the first entry of its history, on
//! condition that neither exists (`Registry::try_create`). Many at once (`fleetctl start` of a
//! directory of units, an API serving several clients) would be as many transactions, each a
//! raft proposal and a reply for etcd to handle. Instead, creations that arrive while another
//! group is on its way wait, and go next in one transaction: the conjunction of their
//! conditions, then all their writes. A group is as large as etcd takes in one request
//! ([`MAX_TXN_OPS`], [`REQUEST_BUDGET`]) and never names a unit twice.
//!
//! Nothing changes for one creation alone: it is sent on its own, as before. When a group's
//! condition fails (one of its units exists), nothing of it was written, and each of its
//! creations is sent again on its own, so that each gets its own answer (what exists in its
//! place); so is each of a group etcd refused before applying it (too large, out of space).
//! When the group fails otherwise (etcd does not answer, say), each creation gets that error,
//! as a request of its own would have: whether it was written is unknown either way. A
//! creation whose caller has gone before its group is made is not sent.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;

use etcd_client::{Compare, Txn, TxnOp};
use fleet_units::UnitName;
use tokio::sync::oneshot;

use crate::{Error, Registry, Result, MAX_TXN_OPS, REQUEST_BUDGET};

/// The creations waiting to be sent, shared by a registry's clones.
#[derive(Default)]
pub(crate) struct Creations {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    /// Whether a task is sending groups: it sends until nothing waits.
    sending: bool,
}

/// One unit's creation: its conditions and its writes, as one transaction of its own would
/// carry them.
pub(crate) struct Creation {
    pub name: UnitName,
    pub when: Vec<Compare>,
    pub ops: Vec<TxnOp>,
    /// What its writes add to a request.
    pub bytes: usize,
}

/// How a creation sent in a group went.
enum Outcome {
    Created,
    /// Not written: the group's condition failed, it was alone, or etcd refused the group
    /// before applying anything.
    SendAlone,
    /// The group failed otherwise (etcd did not answer, say): written or not, unknown.
    Failed(Error),
}

struct Waiting {
    creation: Creation,
    done: oneshot::Sender<Outcome>,
}

impl Creations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        crate::lock(&self.queue)
    }
}

impl Queue {
    /// The next group: waiting creations in order of arrival, as many as one request takes,
    /// each unit at most once (a second creation of a unit waits for the next group).
    fn next_group(&mut self) -> Vec<Waiting> {
        let mut group = Vec::new();
        let mut names = BTreeSet::new();
        let (mut when, mut ops, mut bytes) = (0, 0, 0);
        let mut later = VecDeque::new();
        while let Some(w) = self.waiting.pop_front() {
            // Its caller has gone: as with a request of its own not yet sent, nothing is.
            if w.done.is_closed() {
                continue;
            }
            let c = &w.creation;
            let fits = when + c.when.len() <= MAX_TXN_OPS
                && ops + c.ops.len() <= MAX_TXN_OPS
                && bytes + c.bytes <= REQUEST_BUDGET;
            if !fits && !group.is_empty() {
                self.waiting.push_front(w);
                break;
            }
            if names.contains(&c.name) {
                later.push_back(w);
                continue;
            }
            names.insert(c.name.clone());
            (when, ops, bytes) = (when + c.when.len(), ops + c.ops.len(), bytes + c.bytes);
            group.push(w);
        }
        while let Some(w) = later.pop_back() {
            self.waiting.push_front(w);
        }
        group
    }
}

impl Registry {
    /// Sends `creation` with the others waiting: `Ok(true)` when it was created, `Ok(false)`
    /// when it was not written and must be sent on its own.
    pub(crate) async fn create_together(&self, creation: Creation) -> Result<bool> {
        let (done, outcome) = oneshot::channel();
        let start = {
            let mut queue = self.creations.lock();
            queue.waiting.push_back(Waiting { creation, done });
            !std::mem::replace(&mut queue.sending, true)
        };
        if start {
            // Made before the task is spawned: if it never runs, or ends early, the guard
            // still lets the next creation start a task, and the waiting ones go alone.
            let sending = Sending {
                registry: self.clone(),
                done: false,
            };
            tokio::spawn(sending.send_groups());
        }
        match outcome.await {
            Ok(Outcome::Created) => Ok(true),
            Ok(Outcome::Failed(e)) => Err(e),
            // The sending task ended without an answer (its runtime is going away): nothing
            // tells whether it was sent, and sending it alone finds out.
            Ok(Outcome::SendAlone) | Err(_) => Ok(false),
        }
    }
}

/// The task that sends groups: while it lives, no other is started. When it ends, however it
/// ends (a panic, its runtime going away), the creations still waiting are answered "send
/// alone" and the next creation starts another.
struct Sending {
    registry: Registry,
    /// Whether it gave up sending itself, having found nothing waiting.
    done: bool,
}

impl Drop for Sending {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queue = self.registry.creations.lock();
        queue.sending = false;
        // Dropping their senders tells them to go alone.
        queue.waiting.clear();
    }
}

impl Sending {
    /// Sends groups of waiting creations, one at a time, until none waits.
    async fn send_groups(mut self) {
        loop {
            let group = {
                let mut queue = self.registry.creations.lock();
                let group = queue.next_group();
                if group.is_empty() {
                    // Under the same lock as the check: a creation that comes next starts
                    // another task.
                    queue.sending = false;
                    self.done = true;
                    return;
                }
                group
            };
            if group.len() == 1 {
                answer(group, || Outcome::SendAlone);
                continue;
            }
            let (mut when, mut ops) = (Vec::new(), Vec::new());
            for w in &group {
                when.extend(w.creation.when.iter().cloned());
                ops.extend(w.creation.ops.iter().cloned());
            }
            let count = group.len();
            match self.registry.txn(Txn::new().when(when).and_then(ops)).await {
                Ok(resp) if resp.succeeded() => {
                    tracing::debug!(units = count, "units created together");
                    answer(group, || Outcome::Created);
                }
                Ok(_) => answer(group, || Outcome::SendAlone),
                // Refused before anything was applied: each alone gets its own answer.
                Err(e) if e.refused_unapplied() => {
                    tracing::debug!(error = %e, units = count, "a group of creations refused; each sent alone");
                    answer(group, || Outcome::SendAlone);
                }
                // Maybe written: for each, what a request of its own would have said.
                Err(e) => {
                    for w in group {
                        let _ = w.done.send(Outcome::Failed(e.copy()));
                    }
                }
            }
        }
    }
}

fn answer(group: Vec<Waiting>, outcome: impl Fn() -> Outcome) {
    for w in group {
        // A creation whose caller has gone needs no answer.
        let _ = w.done.send(outcome());
    }
}
