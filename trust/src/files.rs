//! Reading the cluster's keys from PEM files, checking at load time what the TLS handshake
//! would find wrong later: a missing file, a file without a certificate or key, a key that is
//! not the certificate's, a certificate out of its validity or not signed by the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, InconsistentKeys, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::certificate::X509Certificate;

use crate::identity::{parse, subject_of};
use crate::{Identity, TrustError};

/// Where a holder's keys are: the cluster's CA certificate(s), its own certificate (chain) and
/// its private key, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The crypto provider of every configuration here: ring, which builds without cmake or nasm.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn certificates_from_pem(
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, rustls_pki_types::pem::Error> {
    CertificateDer::pem_slice_iter(pem).collect()
}

/// The certificates in a PEM file, in order (a holder's own first, then any intermediates).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certs = certificates_from_pem(&read(path)?).map_err(|e| TrustError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TrustError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TrustError> {
    match PrivateKeyDer::from_pem_slice(&read(path)?) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(TrustError::NoPrivateKey {
            path: path.to_owned(),
        }),
        Err(e) => Err(TrustError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The CA certificates in a PEM file, each within its validity.
pub fn load_ca(path: &Path) -> Result<RootCertStore, TrustError> {
    let mut roots = RootCertStore::empty();
    for der in load_certificates(path)? {
        check_validity(path, &der, SystemTime::now())?;
        roots.add(der).map_err(|e| TrustError::BadCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The CA certificates in a bundle such as the system's, leaving out those that have expired or
/// cannot be used; an error if none is left.
pub(crate) fn load_bundle(path: &Path) -> Result<RootCertStore, TrustError> {
    let mut roots = RootCertStore::empty();
    let now = SystemTime::now();
    for der in load_certificates(path)? {
        if check_validity(path, &der, now).is_ok() {
            let _ = roots.add(der);
        }
    }
    if roots.is_empty() {
        return Err(TrustError::NoUsableCa {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

fn described<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, TrustError> {
    parse(der).map_err(|e| TrustError::BadCertificate {
        path: path.to_owned(),
        reason: match e {
            TrustError::NotACertificate { reason } => reason,
            other => other.to_string(),
        },
    })
}

/// Whether the certificate is valid at `now`.
pub(crate) fn check_validity(path: &Path, der: &[u8], now: SystemTime) -> Result<(), TrustError> {
    let cert = described(path, der)?;
    let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        return Err(TrustError::Expired {
            path: path.to_owned(),
            subject: subject_of(&cert),
            not_after: utc(validity.not_after.timestamp()),
        });
    }
    if now < validity.not_before.timestamp() {
        return Err(TrustError::NotYetValid {
            path: path.to_owned(),
            subject: subject_of(&cert),
            not_before: utc(validity.not_before.timestamp()),
        });
    }
    Ok(())
}

/// A time as "2024-05-01 12:00:00 UTC".
pub(crate) fn utc(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{unix} (UNIX time)"),
    }
}

/// What a holder's certificate is used for: it is checked for that purpose at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    Server,
    Client,
}

/// A holder's certificate and key, checked: the key is the certificate's, the certificate is
/// valid now, signed by the CA and meant for `purpose`, and names a role.
pub(crate) struct Holder {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) identity: Identity,
}

pub(crate) fn load_holder(
    ca: &Path,
    roots: &Arc<RootCertStore>,
    cert: &Path,
    key: &Path,
    purpose: Purpose,
) -> Result<Holder, TrustError> {
    let (chain, private) = load_pair(ca, roots, cert, key, purpose)?;
    let identity = match chain.first() {
        Some(first) => Identity::of(&described(cert, first)?)?,
        None => {
            return Err(TrustError::NoCertificate {
                path: cert.to_owned(),
            })
        }
    };
    Ok(Holder {
        chain,
        key: private,
        identity,
    })
}

/// A certificate and its key, checked as for [`load_holder`] but for a role: what a client of
/// a server outside fleet (etcd) presents.
pub(crate) fn load_pair(
    ca: &Path,
    roots: &Arc<RootCertStore>,
    cert: &Path,
    key: &Path,
    purpose: Purpose,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TrustError> {
    let chain = load_certificates(cert)?;
    let private = load_private_key(key)?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(private.clone_key())
        .map_err(|e| TrustError::BadPrivateKey {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TrustError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
        }
        Err(e) => {
            return Err(TrustError::BadCertificate {
                path: cert.to_owned(),
                reason: e.to_string(),
            })
        }
    }
    let now = SystemTime::now();
    for der in &chain {
        check_validity(cert, der, now)?;
    }
    let Some(first) = chain.first() else {
        return Err(TrustError::NoCertificate {
            path: cert.to_owned(),
        });
    };
    let leaf = described(cert, first)?;
    let subject = subject_of(&leaf);
    verify_chain(roots, &chain, purpose, provider).map_err(|e| match e {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => TrustError::NotSignedByCa {
            cert: cert.to_owned(),
            ca: ca.to_owned(),
            subject: subject.clone(),
        },
        rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => TrustError::Unusable {
            path: cert.to_owned(),
            subject: subject.clone(),
            reason: match purpose {
                Purpose::Server => {
                    "it is not meant for TLS servers (no serverAuth extended key usage)"
                }
                Purpose::Client => {
                    "it is not meant for TLS clients (no clientAuth extended key usage)"
                }
            }
            .to_owned(),
        },
        other => TrustError::Unusable {
            path: cert.to_owned(),
            subject: subject.clone(),
            reason: other.to_string(),
        },
    })?;
    Ok((chain, private))
}

/// Verifies `chain` against `roots` as the other side of a handshake would.
fn verify_chain(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    purpose: Purpose,
    provider: Arc<CryptoProvider>,
) -> Result<(), rustls::Error> {
    let now = UnixTime::now();
    let (leaf, intermediates) = match chain.split_first() {
        Some(split) => split,
        None => return Err(rustls::Error::NoCertificatesPresented),
    };
    let builder_error =
        |e: rustls::server::VerifierBuilderError| rustls::Error::General(e.to_string());
    match purpose {
        Purpose::Client => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(builder_error)?;
            verifier.verify_client_cert(leaf, intermediates, now)?;
        }
        Purpose::Server => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(builder_error)?;
            // The chain is verified before the name, and any name will do here: a machine
            // answers to several, which its clients check.
            let name = ServerName::try_from("fleet.invalid")
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            match verifier.verify_server_cert(leaf, intermediates, &name, &[], now) {
                Ok(_)
                | Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{issue, new_ca, write_pem, Pem, San, Validity};
    use crate::Role;
    use std::time::Duration;

    struct Dir {
        dir: tempfile::TempDir,
        ca: Pem,
    }

    impl Dir {
        fn new() -> Dir {
            let dir = tempfile::tempdir().expect("tempdir");
            let ca =
                new_ca("test CA", Validity::starting_now(Duration::from_secs(3600))).expect("ca");
            write_pem(dir.path(), "ca", &ca).expect("write ca");
            Dir { dir, ca }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, content: &str) -> PathBuf {
            let path = self.path(name);
            std::fs::write(&path, content).expect("write");
            path
        }

        fn issue(&self, stem: &str, role: Role, validity: Validity) -> (PathBuf, PathBuf) {
            let pem =
                issue(&self.ca, role, stem, &[San::Dns("node".into())], validity).expect("issue");
            let files = write_pem(self.dir.path(), stem, &pem).expect("write");
            (files.cert, files.key)
        }

        fn load(&self, cert: &Path, key: &Path, purpose: Purpose) -> Result<Holder, TrustError> {
            let ca = self.path("ca.pem");
            let roots = Arc::new(load_ca(&ca)?);
            load_holder(&ca, &roots, cert, key, purpose)
        }
    }

    fn hour() -> Validity {
        Validity::starting_now(Duration::from_secs(3600))
    }

    #[test]
    fn a_good_holder_loads_with_its_identity() {
        let d = Dir::new();
        let (cert, key) = d.issue("m1", Role::Machine, hour());
        for purpose in [Purpose::Server, Purpose::Client] {
            let holder = d.load(&cert, &key, purpose).expect("load");
            assert_eq!(holder.identity.role, Role::Machine);
            assert_eq!(holder.identity.name, "m1");
            assert_eq!(holder.chain.len(), 1);
        }
    }

    #[test]
    fn loaders_say_which_file_and_what_is_wrong() {
        let d = Dir::new();
        let (cert, key) = d.issue("alice", Role::Operator, hour());
        let (_, other_key) = d.issue("bob", Role::Operator, hour());
        let now = SystemTime::now();
        let (expired, expired_key) = d.issue(
            "old",
            Role::Operator,
            Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            },
        );
        let (future, future_key) = d.issue(
            "new",
            Role::Operator,
            Validity {
                not_before: now + Duration::from_secs(3600),
                not_after: now + Duration::from_secs(7200),
            },
        );
        let stranger_ca = new_ca("other CA", hour()).expect("ca");
        let stranger = issue(&stranger_ca, Role::Operator, "stranger", &[], hour()).expect("issue");
        let stranger = write_pem(d.dir.path(), "stranger", &stranger).expect("write");
        let empty = d.write("empty.pem", "");
        let garbage = d.write("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
        let missing = d.path("missing.pem");
        let p = |p: &Path| p.display().to_string();

        let cases: Vec<(&Path, &Path, Purpose, String)> = vec![
            (&missing, &key, Purpose::Client, format!("cannot read {}: No such file or directory (os error 2)", p(&missing))),
            (&empty, &key, Purpose::Client, format!("{}: no certificate in it (expected a PEM \"CERTIFICATE\" block)", p(&empty))),
            (&key, &key, Purpose::Client, format!("{}: no certificate in it (expected a PEM \"CERTIFICATE\" block)", p(&key))),
            (&cert, &cert, Purpose::Client, format!("{}: no private key in it (expected a PEM \"PRIVATE KEY\" block)", p(&cert))),
            (&cert, &other_key, Purpose::Client, format!("{}: this private key does not match the certificate in {}", p(&other_key), p(&cert))),
            (&expired, &expired_key, Purpose::Client, format!("{}: the certificate of \"old\" expired on ", p(&expired))),
            (&future, &future_key, Purpose::Client, format!("{}: the certificate of \"new\" is not valid before ", p(&future))),
            (&stranger.cert, &stranger.key, Purpose::Client, format!("{}: the certificate of \"stranger\" is not signed by the CA in {}", p(&stranger.cert), p(&d.path("ca.pem")))),
            (&cert, &key, Purpose::Server, format!("{}: the certificate of \"alice\" cannot serve here: it is not meant for TLS servers (no serverAuth extended key usage)", p(&cert))),
        ];
        for (cert, key, purpose, expected) in cases {
            let e = d.load(cert, key, purpose).err().expect("an error");
            let message = e.to_string();
            assert!(
                message.starts_with(&expected),
                "{message:?} does not start with {expected:?}"
            );
            assert!(!message.contains('\n'), "{message:?}");
        }
        let e = d
            .load(&garbage, &key, Purpose::Client)
            .err()
            .expect("an error");
        assert!(
            e.to_string()
                .starts_with(&format!("{}: not valid PEM: ", p(&garbage))),
            "{e}"
        );
    }

    #[test]
    fn an_expired_ca_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let ca = new_ca(
            "old CA",
            Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            },
        )
        .expect("ca");
        let files = write_pem(dir.path(), "ca", &ca).expect("write");
        let e = load_ca(&files.cert).expect_err("expired");
        assert!(
            e.to_string().starts_with(&format!(
                "{}: the certificate of \"old CA\" expired on ",
                files.cert.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_bundle_keeps_its_usable_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let old = new_ca(
            "old CA",
            Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            },
        )
        .expect("ca");
        let good = new_ca("good CA", hour()).expect("ca");
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{}{}", old.cert, good.cert)).expect("write");
        assert_eq!(load_bundle(&bundle).expect("bundle").len(), 1);
        assert!(
            load_ca(&bundle).is_err(),
            "a cluster's CA file is checked whole"
        );

        let stale = dir.path().join("stale.pem");
        std::fs::write(&stale, &old.cert).expect("write");
        let e = load_bundle(&stale).expect_err("nothing usable");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: every CA certificate in it has expired or cannot be used",
                stale.display()
            )
        );
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_714_564_800), "2024-05-01 12:00:00 UTC");
    }
}

/// What identifies some files' contents without reading them: each one's modification time,
/// size and inode (a file replaced by a rename is a new inode), or its absence. Two stamps
/// differ when a file changed: what a watch of renewed keys compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilesStamp(Vec<Option<FileStamp>>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: (i64, i64),
    size: u64,
    inode: (u64, u64),
}

impl FilesStamp {
    pub fn of(paths: &[&Path]) -> FilesStamp {
        use std::os::unix::fs::MetadataExt;
        FilesStamp(
            paths
                .iter()
                .map(|path| {
                    std::fs::metadata(path).ok().map(|m| FileStamp {
                        modified: (m.mtime(), m.mtime_nsec()),
                        size: m.size(),
                        inode: (m.dev(), m.ino()),
                    })
                })
                .collect(),
        )
    }

    /// Of a server's CA, certificate and key.
    pub fn of_tls(files: &TlsFiles) -> FilesStamp {
        FilesStamp::of(&[&files.ca, &files.cert, &files.key])
    }
}
