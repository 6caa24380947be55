//! The TLS configuration of a fleetd's servers: its machine certificate, and a client
//! certificate signed by the cluster's CA required of every client. Reloadable, so that
//! certificates can be rotated without a restart.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::files::{load_ca, load_holder, provider, FilesStamp, Purpose, TlsFiles};
use crate::{Identity, TrustError, ALPN_HTTP1};

/// A server's TLS configuration, loaded from its [`TlsFiles`] and swapped whole by
/// [`ServerTls::reload`]: connections accepted after a reload use the new certificates, those
/// already open keep theirs.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Loaded>,
    /// The files as last read (or tried), so that [`ServerTls::watch`] reloads on a change only.
    seen: Mutex<FilesStamp>,
    /// One reload at a time, so that an older reading never replaces a newer one.
    reloading: Mutex<()>,
}

#[derive(Clone)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// The same certificate as a client's (a fleetd towards its peers).
    client: Arc<rustls::ClientConfig>,
    identity: Identity,
    /// How many times good files were loaded.
    generation: u64,
}

impl ServerTls {
    /// Loads the files, checking them as [`crate::client_config`] does (the certificate must be
    /// valid now, signed by the CA, meant for servers, and carry a role).
    pub fn load(files: TlsFiles) -> Result<ServerTls, TrustError> {
        let stamp = FilesStamp::of_tls(&files);
        let loaded = load(&files)?;
        Ok(ServerTls {
            files,
            current: RwLock::new(loaded),
            seen: Mutex::new(stamp),
            reloading: Mutex::new(()),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for a connection accepted now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.read().config.clone()
    }

    /// The same files as a client's configuration: a fleetd's machine certificate is also its
    /// client certificate towards its peers. Loaded and swapped with the server's, so it is
    /// meant for servers and clients both.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.read().client.clone()
    }

    /// Counts the good loads: a change means new certificates (for clients built from
    /// [`ServerTls::client_config`] to rebuild).
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Whom the server's own certificate names.
    pub fn identity(&self) -> Identity {
        self.read().identity.clone()
    }

    /// Reads the files again and, if they are good, uses them for new connections. If they are
    /// not, the configuration in use stays and the error says what is wrong.
    pub fn reload(&self) -> Result<Identity, TrustError> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stamp = FilesStamp::of_tls(&self.files);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = stamp;
        let mut loaded = load(&self.files)?;
        let identity = loaded.identity.clone();
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        loaded.generation = current.generation + 1;
        *current = loaded;
        Ok(identity)
    }

    /// Reloads whenever one of the files changes (its modification time, size or inode), looking
    /// every `every`. Runs until dropped; log lines say what happened.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let this = self.clone();
            let outcome = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            match outcome {
                Ok(None) => {}
                Ok(Some(Ok(identity))) => {
                    tracing::info!(certificate = %identity, "reloaded TLS certificates");
                }
                Ok(Some(Err(e))) => {
                    tracing::error!(error = %e, "cannot reload TLS certificates; keeping those in use");
                }
                Err(e) => tracing::error!(error = %e, "reloading TLS certificates failed"),
            }
        }
    }

    fn reload_if_changed(&self) -> Option<Result<Identity, TrustError>> {
        let stamp = FilesStamp::of_tls(&self.files);
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (seen != stamp).then(|| self.reload())
    }

    fn read(&self) -> Loaded {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

fn load(files: &TlsFiles) -> Result<Loaded, TrustError> {
    let roots = Arc::new(load_ca(&files.ca)?);
    let holder = load_holder(&files.ca, &roots, &files.cert, &files.key, Purpose::Server)?;
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TrustError::BadCertificate {
            path: files.ca.clone(),
            reason: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(RoleVerifier(verifier)))
        .with_single_cert(holder.chain, holder.key)?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    let client = crate::client_config(&files.ca, Some((&files.cert, &files.key)))?;
    Ok(Loaded {
        config: Arc::new(config),
        client: Arc::new(client),
        identity: holder.identity,
        generation: 0,
    })
}

/// The CA's verdict, and then the role: a certificate of the cluster that names no role is
/// refused in the handshake (alert "access denied"), not later.
#[derive(Debug)]
struct RoleVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for RoleVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        match Identity::from_der(end_entity) {
            Ok(_) => Ok(verified),
            Err(e) => {
                tracing::debug!(error = %e, "refused a client certificate");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
