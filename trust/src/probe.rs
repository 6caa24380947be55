//! Whether a TLS server accepts this client, asked before anything else is sent: fleetd asks
//! etcd so at start-up, because over TLS 1.3 a server judges the client's certificate after the
//! handshake, and its refusal then reaches a gRPC client as whatever broke first (an alert, a
//! broken pipe, a closed connection), too unreliable to tell a refusal from an outage by.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::explain;

/// What a server made of this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The handshake completed and the server kept the connection (it sent data, or waited
    /// for a request).
    Accepted,
    /// The server is not reachable or did not answer in time: an outage, not a refusal.
    Unreachable(String),
    /// The handshake failed or the server dropped the connection at once: one line saying why.
    Refused(String),
}

/// Connects to `address` (`host:port`) as `server_name`, completes the handshake with `config`
/// and waits up to `patience` for the server's verdict on the client's certificate.
pub async fn probe(
    address: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
    patience: Duration,
) -> Probe {
    let name = match ServerName::try_from(server_name.to_string()) {
        Ok(n) => n,
        Err(e) => return Probe::Refused(format!("{server_name:?} is no server name: {e}")),
    };
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Probe::Unreachable(format!("cannot connect to {address}: {e}")),
        Err(_) => {
            return Probe::Unreachable(format!("{address} did not answer within {timeout:?}"))
        }
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => tls,
        // A verdict is TLS's (an alert, a certificate judged); a reset or an end of stream
        // mid-handshake is a server going away, an outage.
        Ok(Err(e)) => {
            return match explain(&e) {
                Some(said) => Probe::Refused(said),
                None if tls_error(&e) => Probe::Refused(format!("TLS handshake failed: {e}")),
                None => Probe::Unreachable(format!("{address} broke off the TLS handshake: {e}")),
            };
        }
        Err(_) => {
            return Probe::Unreachable(format!(
                "{address} did not complete a TLS handshake within {timeout:?}"
            ))
        }
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(patience, tls.read(&mut byte)).await {
        Ok(Ok(0)) => Probe::Refused(format!(
            "{address} closed the connection after the handshake: it does not accept this client's certificate"
        )),
        Ok(Ok(_)) | Err(_) => Probe::Accepted,
        Ok(Err(e)) => match explain(&e) {
            Some(said) => Probe::Refused(said),
            None if tls_error(&e) => Probe::Refused(format!("{address} refused this client: {e}")),
            None => Probe::Unreachable(format!("{address} broke off the connection: {e}")),
        },
    }
}

/// Whether `e` carries rustls's own error (not a bare I/O failure).
fn tls_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}
