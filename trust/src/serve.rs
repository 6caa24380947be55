//! Serving an axum router over TLS (or, opted into, plain TCP) with hyper's HTTP/1.1, each
//! request carrying its [`Caller`], and with limits that keep one client from starving the
//! others: a handshake timeout, a header read timeout, and caps on connections overall and per
//! client address.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::{Identity, ServerTls};

/// Who sent a request: a request extension that [`serve`] inserts in every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The holder of a client certificate signed by the cluster's CA.
    Certificate(Identity),
    /// Anyone: the server was started without TLS, by explicit choice.
    Insecure,
}

/// What one client may take of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A TLS handshake not done by then is abandoned.
    pub handshake_timeout: Duration,
    /// A request's headers not read by then end the connection. It also bounds how long a
    /// kept-alive connection may sit idle between requests.
    pub header_read_timeout: Duration,
    /// Connections beyond this many are closed at once.
    pub max_connections: usize,
    /// Connections from one address beyond this many are closed at once.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_ip: 256,
        }
    }
}

/// How long a connection refused in the handshake is kept so that the client reads the alert
/// saying why, instead of a reset.
const LINGER: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until the future is dropped: over TLS with `tls`, whose
/// configuration is taken afresh for each connection (see [`ServerTls::reload`]); over plain
/// TCP without (every request's caller is then [`Caller::Insecure`]). A failing connection
/// only ever ends itself.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    app: Router,
    limits: Limits,
) {
    let slots = Slots::new(limits);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to be closed.
                tracing::error!(error = %e, "cannot accept connections");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(peer.ip()) else {
            tracing::debug!(%peer, "refused a connection: too many connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let config = tls.as_ref().map(|tls| tls.config());
        let app = app.clone();
        tokio::spawn(async move {
            connection(stream, peer, config, app, limits).await;
            drop(slot);
        });
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
) {
    let Some(config) = tls else {
        return http(stream, peer, Caller::Insecure, app, limits).await;
    };
    let handshake = TlsAcceptor::from(config).accept(stream).into_fallible();
    let stream = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err((e, tcp))) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            linger(tcp).await;
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = match stream.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => Identity::from_der(leaf),
        // The verifier requires a certificate: this is not reached.
        _ => {
            tracing::warn!(%peer, "TLS client without a certificate");
            return;
        }
    };
    match identity {
        Ok(identity) => http(stream, peer, Caller::Certificate(identity), app, limits).await,
        // The verifier refused it already: this is not reached either.
        Err(e) => tracing::warn!(%peer, error = %e, "TLS client without an identity"),
    }
}

async fn http<I>(io: I, peer: SocketAddr, caller: Caller, app: Router, limits: Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(caller.clone());
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            let response = tower_service::Service::call(&mut app, request).await;
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Closes our side and reads what the client still sends for a while: closing a socket with
/// unread data makes the kernel reset the connection, which can destroy the alert we sent
/// before the client reads it.
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buffer = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match tcp.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The connections open, overall and per client address.
#[derive(Clone)]
struct Slots(Arc<Mutex<Counts>>);

struct Counts {
    limits: Limits,
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection's place among the [`Slots`], given back when dropped.
struct Slot {
    slots: Slots,
    ip: IpAddr,
}

impl Slots {
    fn new(limits: Limits) -> Slots {
        Slots(Arc::new(Mutex::new(Counts {
            limits,
            total: 0,
            per_ip: HashMap::new(),
        })))
    }

    fn take(&self, ip: IpAddr) -> Option<Slot> {
        let ip = ip.to_canonical();
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let limits = counts.limits;
        if counts.total >= limits.max_connections {
            return None;
        }
        let mine = counts.per_ip.entry(ip).or_insert(0);
        if *mine >= limits.max_connections_per_ip {
            return None;
        }
        *mine += 1;
        counts.total += 1;
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(mine) = counts.per_ip.get_mut(&self.ip) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_connections_overall_and_per_address() {
        let slots = Slots::new(Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let a6: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = slots.take(a).expect("first");
        let second = slots.take(a6).expect("second, the same address");
        assert!(slots.take(a).is_none(), "a third from one address");
        let third = slots.take(b).expect("another address");
        assert!(
            slots.take("10.0.0.3".parse().expect("ip")).is_none(),
            "a fourth overall"
        );
        drop(first);
        assert!(slots.take(b).is_some(), "room again");
        drop((second, third));
        let counts = slots.0.lock().expect("lock");
        assert_eq!(counts.total, 0);
        assert!(counts.per_ip.is_empty());
    }
}
