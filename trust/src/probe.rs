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

/// [`probe`] of the server of an `https://host[:port][/...]` URL (port 443 unless given; an
/// IPv6 host in brackets), asked for by its host's name. A URL that is not `https://` names no
/// server to ask: [`Probe::Unreachable`].
pub async fn probe_url(
    url: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
    patience: Duration,
) -> Probe {
    match https_authority(url) {
        Some((address, host)) => probe(&address, &host, config, timeout, patience).await,
        None => Probe::Unreachable(format!("{url:?} is not an https:// URL")),
    }
}

/// The `host:port` to connect to and the host's name, of an `https://` URL.
fn https_authority(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return None;
    }
    let port: u16 = port.map_or(Some(443), |p| p.parse().ok())?;
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some((address, host.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_https_url_names_the_address_and_the_name_to_ask_for() {
        let of = |url| https_authority(url);
        let pair = |a: &str, h: &str| Some((a.to_string(), h.to_string()));
        assert_eq!(
            of("https://10.0.0.1:2379"),
            pair("10.0.0.1:2379", "10.0.0.1")
        );
        assert_eq!(
            of("https://etcd.example"),
            pair("etcd.example:443", "etcd.example")
        );
        assert_eq!(
            of("https://etcd.example:2379/v3?x#y"),
            pair("etcd.example:2379", "etcd.example")
        );
        assert_eq!(of("https://[::1]:2379"), pair("[::1]:2379", "::1"));
        assert_eq!(of("https://[::1]"), pair("[::1]:443", "::1"));
        for bad in [
            "http://10.0.0.1:2379",
            "https://",
            "https://:2379",
            "https://h:port",
            "https://[::1",
        ] {
            assert_eq!(of(bad), None, "{bad}");
        }
    }
}
