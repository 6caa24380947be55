//! Watches: what changed under a few key prefixes since a revision.
//!
//! The engine's and the agents' views apply the changes themselves (`view.rs`); other users
//! take an event as "look now" and read what they need. A watch that ends is an error: whoever
//! followed it reads again and opens a new one.

use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchClient, WatchOptions, WatchStream};

use crate::{Error, Result};

/// One etcd watch stream over several key prefixes.
pub struct Changes {
    stream: WatchStream,
    /// For errors: where etcd was expected.
    endpoints: String,
}

impl Changes {
    pub(crate) async fn open(
        client: WatchClient,
        prefixes: &[String],
        revision: i64,
        timeout: Duration,
        endpoints: &str,
    ) -> Result<Changes> {
        let opened = Changes::open_uncounted(client, prefixes, revision, timeout, endpoints).await;
        if opened.is_err() {
            fleet_telemetry::ETCD_ERRORS.inc();
        }
        opened
    }

    async fn open_uncounted(
        mut client: WatchClient,
        prefixes: &[String],
        revision: i64,
        timeout: Duration,
        endpoints: &str,
    ) -> Result<Changes> {
        let etcd_error = |e| Error::from_etcd(e, endpoints);
        let options = || {
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision)
        };
        let Some((first, rest)) = prefixes.split_first() else {
            return Err(Error::Protocol("watch of no prefix".into()));
        };
        let mut stream =
            tokio::time::timeout(timeout, client.watch(first.as_str(), Some(options())))
                .await
                .map_err(|_| Error::Timeout(timeout))?
                .map_err(etcd_error)?;
        for prefix in rest {
            tokio::time::timeout(timeout, stream.watch(prefix.as_str(), Some(options())))
                .await
                .map_err(|_| Error::Timeout(timeout))?
                .map_err(etcd_error)?;
        }
        Ok(Changes {
            stream,
            endpoints: endpoints.to_string(),
        })
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
            let message = self.stream.message().await;
            let Some(resp) = message.map_err(|e| Error::from_etcd(e, &self.endpoints))? else {
                return Err(Error::WatchEnded("stream closed by etcd".into()));
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
                let changes = resp
                    .events()
                    .iter()
                    .filter_map(|event| {
                        Some(Change {
                            kv: event.kv()?.clone(),
                            deleted: event.event_type() == EventType::Delete,
                        })
                    })
                    .collect();
                return Ok((revision, changes));
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
