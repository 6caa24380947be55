//! The client side: a TLS configuration trusting the cluster's CA and presenting the holder's
//! certificate, and [`explain`], which turns a failed handshake, however deeply wrapped, into
//! one line an operator can act on.

use std::error::Error;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

use crate::files::{load_bundle, load_ca, load_holder, load_pair, provider, utc, Purpose};
use crate::{TrustError, ALPN_HTTP1};

/// A TLS client configuration that trusts the CA in `ca` and, given `identity` (certificate,
/// key), presents that certificate, checked at once as a server would check it (valid now,
/// signed by the CA, meant for clients, carrying a role). For
/// `reqwest::ClientBuilder::use_preconfigured_tls`.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TrustError> {
    with_roots(ca, Arc::new(load_ca(ca)?), identity)
}

/// As [`client_config`], but trusting a bundle of CAs such as the system's
/// (`/etc/ssl/certs/ca-certificates.crt`, where a cluster's CA can be installed): certificates
/// in it that have expired or cannot be used are left out (a system's bundle holds a few), as
/// long as one is left.
pub fn client_config_with_bundle(
    bundle: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TrustError> {
    with_roots(bundle, Arc::new(load_bundle(bundle)?), identity)
}

/// A TLS client configuration for etcd, which is not fleet: it trusts `ca` (or the system's
/// bundle, `None`) and presents `identity`, checked as [`client_config`] checks but for a fleet
/// role, which an etcd client certificate has none of. TLS 1.3 or 1.2, as etcd's own clients
/// (an etcd may be limited to 1.2); set the ALPN protocols for the server (etcd speaks `h2`).
pub fn etcd_client_config(
    ca: Option<&Path>,
    bundle: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TrustError> {
    let (path, roots) = match ca {
        Some(ca) => (ca, Arc::new(load_ca(ca)?)),
        None => (bundle, Arc::new(load_bundle(bundle)?)),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots.clone());
    Ok(match identity {
        Some((cert, key)) => {
            let (chain, key) = load_pair(path, &roots, cert, key, Purpose::Client)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    })
}

fn with_roots(
    ca: &Path,
    roots: Arc<RootCertStore>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TrustError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots.clone());
    let mut config = match identity {
        Some((cert, key)) => {
            let holder = load_holder(ca, &roots, cert, key, Purpose::Client)?;
            builder.with_client_auth_cert(holder.chain, holder.key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// One line saying why a TLS connection failed, if `err` (or an error it wraps, as reqwest's and
/// hyper's errors wrap io errors that wrap rustls') is one an operator can act on: the
/// server's certificate is not signed by the CA we trust, expired, or for another name; the
/// server refused our certificate, or wanted one and we sent none. None for anything else.
pub fn explain(err: &(dyn Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return describe(tls);
        }
        // An io::Error's source() skips the error it wraps: look at that one directly.
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|e| e.get_ref()) {
            if let Some(line) = explain(inner) {
                return Some(line);
            }
        }
        next = e.source();
    }
    None
}

fn describe(e: &rustls::Error) -> Option<String> {
    use CertificateError as C;
    let line = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => {
                "the server's certificate is not signed by the CA this client trusts \
                 (a server of another cluster, or the wrong CA file)"
                    .to_owned()
            }
            C::ExpiredContext { not_after, .. } => format!(
                "the server's certificate expired on {}",
                utc(unix(not_after))
            ),
            C::Expired => "the server's certificate has expired".to_owned(),
            C::NotValidYetContext { not_before, .. } => format!(
                "the server's certificate is not valid before {} (is the clock right?)",
                utc(unix(not_before))
            ),
            C::NotValidYet => {
                "the server's certificate is not valid yet (is the clock right?)".to_owned()
            }
            C::NotValidForNameContext {
                expected,
                presented,
            } => {
                let names = presented.iter().map(|n| san(n)).collect::<Vec<_>>();
                let names = match names.as_slice() {
                    [] => "no names".to_owned(),
                    _ => names.join(", "),
                };
                format!(
                    "the server's certificate is not valid for {:?}, the name this client asked \
                     for (it is valid for {names})",
                    expected.to_str()
                )
            }
            C::NotValidForName => {
                "the server's certificate is not valid for the name this client asked for"
                    .to_owned()
            }
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the server's certificate is not meant for TLS servers".to_owned()
            }
            _ => return None,
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => {
                "the server requires a client certificate signed by the cluster's CA, and this \
                 client sent none"
                    .to_owned()
            }
            AlertDescription::UnknownCA => {
                "the server refused this client's certificate: it is not signed by the \
                 cluster's CA"
                    .to_owned()
            }
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown => {
                "the server refused this client's certificate".to_owned()
            }
            AlertDescription::CertificateExpired => {
                "the server refused this client's certificate: expired or not yet valid".to_owned()
            }
            AlertDescription::CertificateRevoked => {
                "the server refused this client's certificate: revoked".to_owned()
            }
            AlertDescription::AccessDenied => {
                "the server refused this client's certificate: it names no fleet role".to_owned()
            }
            _ => return None,
        },
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            "the server did not answer in TLS (does it serve plain HTTP?)".to_owned()
        }
        _ => return None,
    };
    Some(line)
}

fn unix(t: &rustls_pki_types::UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

/// A name as webpki presents it (`DnsName("a.example")`, `IpAddress(10.0.0.1)`), bare.
fn san(presented: &str) -> String {
    let bare = presented
        .strip_prefix("DnsName(\"")
        .and_then(|s| s.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|s| s.strip_suffix(')'))
        });
    bare.unwrap_or(presented).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::{ServerName, UnixTime};
    use std::fmt;
    use std::time::Duration;

    /// An error wrapping another, as reqwest's and hyper's do.
    #[derive(Debug)]
    struct Wrapper(Box<dyn Error + Send + Sync>);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("error sending request")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    fn wrapped(e: rustls::Error) -> Wrapper {
        Wrapper(Box::new(Wrapper(Box::new(io::Error::new(
            io::ErrorKind::InvalidData,
            e,
        )))))
    }

    #[test]
    fn tls_failures_are_explained_in_one_line() {
        let time = |secs| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let cases: Vec<(rustls::Error, Option<&str>)> = vec![
            (
                CertificateError::UnknownIssuer.into(),
                Some("the server's certificate is not signed by the CA this client trusts (a server of another cluster, or the wrong CA file)"),
            ),
            (
                CertificateError::ExpiredContext { time: time(1_714_600_000), not_after: time(1_714_564_800) }.into(),
                Some("the server's certificate expired on 2024-05-01 12:00:00 UTC"),
            ),
            (
                CertificateError::NotValidForNameContext {
                    expected: ServerName::try_from("localhost").expect("name").to_owned(),
                    presented: vec!["IpAddress(127.0.0.1)".into(), "DnsName(\"node1\")".into()],
                }
                .into(),
                Some("the server's certificate is not valid for \"localhost\", the name this client asked for (it is valid for 127.0.0.1, node1)"),
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                Some("the server requires a client certificate signed by the cluster's CA, and this client sent none"),
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                Some("the server refused this client's certificate: it is not signed by the cluster's CA"),
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::BadCertificate),
                Some("the server refused this client's certificate"),
            ),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                Some("the server did not answer in TLS (does it serve plain HTTP?)"),
            ),
            (rustls::Error::AlertReceived(AlertDescription::HandshakeFailure), None),
            (rustls::Error::DecryptError, None),
        ];
        for (error, expected) in cases {
            let debug = format!("{error:?}");
            assert_eq!(explain(&wrapped(error)).as_deref(), expected, "{debug}");
        }
    }

    #[test]
    fn other_errors_are_not_explained() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(explain(&Wrapper(Box::new(refused))), None);
        assert_eq!(explain(&io::Error::other("plain")), None);
    }
}
