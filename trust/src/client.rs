//! The client side: a TLS configuration trusting the cluster's CA and presenting the holder's
//! certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;

use crate::files::{load_ca, load_holder, provider, Purpose};
use crate::server::ALPN_HTTP1;
use crate::TrustError;

/// A TLS client configuration that trusts the CA in `ca` and, given `identity` (certificate,
/// key), presents that certificate, checked at once as a server would check it (valid now,
/// signed by the CA, meant for clients, carrying a role). For
/// `reqwest::ClientBuilder::use_preconfigured_tls`.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TrustError> {
    let roots = Arc::new(load_ca(ca)?);
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
