//! Caps on journals and events followed at once. A follow holds a `journalctl --follow` child
//! (here or on the unit's machine), or an etcd watch, and a connection for as long as its
//! reader wants: without a cap, one client could hold every process slot of a machine. Each client (a certificate's holder, else
//! an address) may follow [`PER_CLIENT`] journals at once through one fleetd's API, and the API
//! serves [`OVERALL`] in all; its peer endpoint serves its peers [`OVERALL`] more, at most
//! [`PER_PEER`] to one peer machine (which caps its own clients). Beyond, 429 with the envelope.
//! Root on the unix socket counts towards the overall cap only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use fleet_trust::Caller;
use futures_util::StreamExt;

use crate::inspect::ByteStream;
use crate::server::ApiError;

/// Journals one client may follow at once through one fleetd.
pub const PER_CLIENT: usize = 8;
/// Journals one fleetd's API follows at once for all its clients; its peer endpoint as many
/// for its peers.
pub const OVERALL: usize = 64;
/// Journals one peer machine may follow at once through another's peer endpoint.
pub const PER_PEER: usize = 16;

/// Who follows: what the per-client cap counts by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A certificate's holder, by role and name.
    Holder(String),
    /// A caller without a certificate, by address (plain HTTP).
    Address(std::net::IpAddr),
    /// The unix socket: root on this machine.
    Local,
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Client, Self::Rejection> {
        if let Some(Caller::Certificate(id)) = parts.extensions.get::<Caller>() {
            return Ok(Client::Holder(id.to_string()));
        }
        Ok(match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(address)) => Client::Address(address.ip()),
            None => Client::Local,
        })
    }
}

/// The follows under way. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Follows {
    caps: (usize, usize),
    held: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_client: HashMap<Client, usize>,
}

/// One follow, counted until dropped (with the response's body).
#[derive(Debug)]
pub struct Permit {
    follows: Follows,
    client: Client,
}

impl Follows {
    pub fn new(overall: usize, per_client: usize) -> Follows {
        Follows {
            caps: (overall, per_client),
            held: Arc::new(Mutex::new(Held::default())),
        }
    }

    /// Counts a follow by `client`, or refuses it with 429 when a cap is reached.
    pub fn admit(&self, client: Client) -> Result<Permit, ApiError> {
        let (overall, per_client) = self.caps;
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.total >= overall {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("this fleetd already follows {overall} journals or event streams, its most; try again when one ends"),
            ));
        }
        let mine = held.by_client.get(&client).copied().unwrap_or(0);
        if client != Client::Local && mine >= per_client {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("you already follow {per_client} journals or event streams through this fleetd, the most one client may; end one first"),
            ));
        }
        held.total += 1;
        *held.by_client.entry(client.clone()).or_insert(0) += 1;
        Ok(Permit {
            follows: self.clone(),
            client,
        })
    }
}

/// `body`, holding `permit` (if any) until the body is dropped: a follow counts for as long as
/// its reader reads.
pub(crate) fn held(body: ByteStream, permit: Option<Permit>) -> ByteStream {
    body.map(move |chunk| {
        let _counted = &permit;
        chunk
    })
    .boxed()
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = self
            .follows
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(name: &str) -> Client {
        Client::Holder(name.to_string())
    }

    #[test]
    fn each_client_and_the_whole_are_capped_and_a_dropped_follow_frees_its_place() {
        let follows = Follows::new(5, 2);
        let a1 = follows.admit(holder("a")).expect("a's first");
        let _a2 = follows.admit(holder("a")).expect("a's second");
        let refused = follows.admit(holder("a")).expect_err("a's third");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let _b1 = follows.admit(holder("b")).expect("b is another client");
        drop(a1);
        let _a3 = follows.admit(holder("a")).expect("a's first ended");
        // Root on the unix socket is capped only by the whole.
        let _l1 = follows.admit(Client::Local).expect("local");
        let _l2 = follows
            .admit(Client::Local)
            .expect("local again, past the per-client cap");
        let full = follows.admit(Client::Local).expect_err("five under way");
        assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(full.message().contains("5 journals"), "{}", full.message());
    }
}
