//! Watches: what changed under a few key prefixes since a revision.
//!
//! The engine's and the agents' views apply the changes themselves (`view.rs`); other users
//! take an event as "look now" and read what they need. A watch that ends is an error: whoever
//! followed it reads again and opens a new one.

use std::collections::VecDeque;
use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchClient, WatchOptions, WatchResponse, WatchStream};

use crate::{Error, Result};

/// One etcd watch stream over several key prefixes.
pub struct Changes {
    stream: WatchStream,
    /// Answers that arrived while the watch was being created, to be taken before the stream's.
    early: VecDeque<WatchResponse>,
    /// Changes made at or before this revision are left out: a read made at it holds them.
    skip_through: i64,
    /// For errors: where etcd was expected.
    endpoints: String,
}

impl Changes {
    /// Watches `prefixes` from `start` on: a revision, or `None` for "from now", in which case
    /// it returns once etcd has created every watcher, so that whatever a linearizable read
    /// made afterwards does not hold is in the watch ([`Changes::skip_through`] then leaves
    /// out what it does hold).
    ///
    /// Why "from now" matters: etcd must catch a watcher from a past revision up from its
    /// history, under the lock its writes take, a few hundred watchers every 100 ms. At 10,000
    /// machines, each agent reading again every minute and watching from that read's revision
    /// held etcd's writes back until lease renewals timed out.
    pub(crate) async fn open(
        client: WatchClient,
        prefixes: &[String],
        start: Option<i64>,
        timeout: Duration,
        endpoints: &str,
    ) -> Result<Changes> {
        let opened = tokio::time::timeout(
            timeout,
            Changes::open_uncounted(client, prefixes, start, endpoints),
        )
        .await
        .unwrap_or(Err(Error::Timeout(timeout)));
        if opened.is_err() {
            fleet_telemetry::ETCD_ERRORS.inc();
        }
        opened
    }

    async fn open_uncounted(
        mut client: WatchClient,
        prefixes: &[String],
        start: Option<i64>,
        endpoints: &str,
    ) -> Result<Changes> {
        let etcd_error = |e| Error::from_etcd(e, endpoints);
        let options = || {
            let options = WatchOptions::new().with_prefix();
            match start {
                Some(revision) => options.with_start_revision(revision),
                None => options,
            }
        };
        let Some((first, rest)) = prefixes.split_first() else {
            return Err(Error::Protocol("watch of no prefix".into()));
        };
        let mut stream = client
            .watch(first.as_str(), Some(options()))
            .await
            .map_err(etcd_error)?;
        for prefix in rest {
            stream
                .watch(prefix.as_str(), Some(options()))
                .await
                .map_err(etcd_error)?;
        }
        let mut changes = Changes {
            stream,
            early: VecDeque::new(),
            skip_through: 0,
            endpoints: endpoints.to_string(),
        };
        if start.is_none() {
            // etcd answers each creation in the order asked; events of a watcher already
            // created may come in between.
            let mut created = 0;
            while created < prefixes.len() {
                let resp = changes.message().await?;
                if resp.canceled() {
                    return Err(Error::WatchEnded(format!(
                        "refused by etcd: {}",
                        resp.cancel_reason()
                    )));
                }
                if resp.created() {
                    created += 1;
                } else {
                    changes.early.push_back(resp);
                }
            }
        }
        Ok(changes)
    }

    /// Leaves out, from now on, every change made at or before `revision`: what a read made
    /// at `revision` (after the watch was opened from now) already holds.
    pub fn skip_through(&mut self, revision: i64) {
        self.skip_through = revision;
    }

    async fn message(&mut self) -> Result<WatchResponse> {
        let message = self.stream.message().await;
        match message.map_err(|e| Error::from_etcd(e, &self.endpoints))? {
            Some(resp) => Ok(resp),
            None => Err(Error::WatchEnded("stream closed by etcd".into())),
        }
    }

    /// Consumes the changes that have already arrived, without waiting, so that one re-read
    /// covers a burst of events.
    pub fn drain(&mut self) -> Result<()> {
        use futures_util::FutureExt;
        while let Some(next) = self.next().now_or_never() {
            next?;
        }
        Ok(())
    }

    /// Waits until something changed under one of the prefixes and returns the revision of the
    /// newest change seen. An error means the watch is over (etcd unreachable, history
    /// compacted): resynchronise and open a new one.
    pub async fn next(&mut self) -> Result<i64> {
        self.next_changes().await.map(|(revision, _)| revision)
    }

    /// As [`Changes::next`], with the changes themselves, in the order etcd made them (per
    /// prefix: changes under different prefixes may arrive out of order between them).
    pub(crate) async fn next_changes(&mut self) -> Result<(i64, Vec<Change>)> {
        loop {
            let resp = match self.early.pop_front() {
                Some(resp) => resp,
                None => self.message().await?,
            };
            if resp.canceled() {
                return Err(Error::WatchEnded(format!(
                    "canceled by etcd (compacted at {}): {}",
                    resp.compact_revision(),
                    resp.cancel_reason()
                )));
            }
            if !resp.events().is_empty() {
                let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                let changes: Vec<Change> = resp
                    .events()
                    .iter()
                    .filter_map(|event| {
                        let kv = event.kv()?;
                        // A deletion's `mod_revision` is the deletion's revision.
                        (kv.mod_revision() > self.skip_through).then(|| Change {
                            kv: kv.clone(),
                            deleted: event.event_type() == EventType::Delete,
                        })
                    })
                    .collect();
                if !changes.is_empty() {
                    return Ok((revision, changes));
                }
            }
        }
    }
}

/// One key written or deleted. For a deletion `kv` holds the key and the revision of the
/// deletion (`mod_revision`), no value.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub kv: KeyValue,
    pub deleted: bool,
}
