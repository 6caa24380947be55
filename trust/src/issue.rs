//! Issuing the cluster's certificates: its CA, and certificates signed by it whose subject
//! organization (O) is the holder's role and common name (CN) the holder's name.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;

use crate::{Role, TrustError};

/// How far back a new certificate's validity begins, so that a machine whose clock is a little
/// behind the issuer's accepts it at once.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From [`BACKDATE`] ago until `lifetime` from now.
    pub fn starting_now(lifetime: Duration) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now.checked_sub(BACKDATE).unwrap_or(SystemTime::UNIX_EPOCH),
            not_after: now + lifetime,
        }
    }
}

/// A name a machine answers to (subjectAltName): its clients check that the address or name
/// they connected to is one of these.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum San {
    Ip(IpAddr),
    Dns(String),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Ip(ip) => ip.fmt(f),
            San::Dns(name) => f.write_str(name),
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem")
            .field("cert", &self.cert)
            .field("key", &"<private>")
            .finish()
    }
}

/// A new self-signed CA, which signs every certificate of the cluster (and no intermediate).
pub fn new_ca(common_name: &str, validity: Validity) -> Result<Pem, TrustError> {
    let mut params = params(common_name, None, validity)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What a certificate is for.
///
/// Issue etcd's certificates from a CA of etcd's own: etcd lets in every client its CA signed,
/// whatever the client's role, so with the cluster's CA every operator and viewer could read
/// and write etcd directly, around the API and its roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A holder of a fleet role, which is its subject organization (O).
    Fleet(Role),
    /// An etcd member's certificate (etcd's `--cert-file`, and `--peer-cert-file`): it serves,
    /// answering to its subjectAltNames, and is a client (of its peers, and of itself: etcd's
    /// gateway connects with it). It names no fleet role, so a fleetd refuses it.
    EtcdServer,
    /// A client of etcd (a fleetd's `etcd_certfile`, for etcd's `--client-cert-auth`): no fleet
    /// role; etcd takes its common name as the user name when it authenticates by certificate.
    EtcdClient,
}

impl Kind {
    /// Whether the certificate serves (carries serverAuth, and subjectAltNames clients check).
    pub fn serves(self) -> bool {
        matches!(self, Kind::Fleet(Role::Machine) | Kind::EtcdServer)
    }
}

/// A certificate for `name` in `role`, signed by `ca`. A machine's certificate serves (its
/// API and peer endpoint, answering to `sans`) and is a client (of its peers); the others are
/// clients only. `sans` are written into any certificate, but only a server's are checked.
pub fn issue(
    ca: &Pem,
    role: Role,
    name: &str,
    sans: &[San],
    validity: Validity,
) -> Result<Pem, TrustError> {
    issue_for(ca, Kind::Fleet(role), name, sans, validity)
}

/// A certificate of `kind` for `name`, signed by `ca`: [`issue`], for etcd's certificates too.
pub fn issue_for(
    ca: &Pem,
    kind: Kind,
    name: &str,
    sans: &[San],
    validity: Validity,
) -> Result<Pem, TrustError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| TrustError::BadIssuer(e.to_string()))?;
    check_ca_key(&ca.cert, &ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)
        .map_err(|e| TrustError::BadIssuer(e.to_string()))?;
    let role = match kind {
        Kind::Fleet(role) => Some(role),
        Kind::EtcdServer | Kind::EtcdClient => None,
    };
    let mut params = params(name, role, validity)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if kind.serves() {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san {
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            San::Dns(dns) => rustls_pki_types::DnsName::try_from(dns.as_str())
                .ok()
                .and_then(|_| dns.as_str().try_into().ok())
                .map(SanType::DnsName)
                .ok_or_else(|| TrustError::BadDnsName { name: dns.clone() }),
        })
        .collect::<Result<_, _>>()?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The CA's key must be its certificate's: signed with another key, certificates would name
/// the CA as their issuer and fail every verification.
fn check_ca_key(cert: &str, key: &KeyPair) -> Result<(), TrustError> {
    let der = crate::files::certificates_from_pem(cert.as_bytes())
        .map_err(|e| TrustError::BadIssuer(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| TrustError::BadIssuer("no certificate in it".into()))?;
    let parsed = crate::identity::parse(&der).map_err(|e| TrustError::BadIssuer(e.to_string()))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(TrustError::BadIssuer(
            "its private key is not its certificate's".into(),
        ));
    }
    Ok(())
}

fn params(
    common_name: &str,
    role: Option<Role>,
    validity: Validity,
) -> Result<CertificateParams, TrustError> {
    if common_name.is_empty() || common_name.chars().any(char::is_control) {
        return Err(TrustError::BadName {
            name: common_name.to_owned(),
            reason: "it must be printable and not empty".into(),
        });
    }
    if validity.not_after <= validity.not_before {
        return Err(TrustError::EmptyValidity);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(role) = role {
        params
            .distinguished_name
            .push(DnType::OrganizationName, role.organization());
    }
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(serial()?);
    Ok(params)
}

/// A random serial number (RFC 5280: positive, at most 20 octets), so that certificates
/// issued again for the same holder are told apart.
fn serial() -> Result<SerialNumber, TrustError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TrustError::Issue(rcgen::Error::RingUnspecified))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40; // no leading zero octet, so the DER length is always 16
    Ok(SerialNumber::from_slice(&bytes))
}

/// Where [`write_pem`] put a certificate and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `<dir>/<stem>.pem` (mode 0644) and `<dir>/<stem>-key.pem` (mode 0600). Each file is
/// replaced at once (written aside, then renamed), so a server watching them never reads half
/// a file.
pub fn write_pem(dir: &Path, stem: &str, pem: &Pem) -> Result<PemFiles, TrustError> {
    let files = PemFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    };
    // The key first: a watcher that sees the new certificate then finds its key in place.
    replace(&files.key, pem.key.as_bytes(), 0o600)?;
    replace(&files.cert, pem.cert.as_bytes(), 0o644)?;
    Ok(files)
}

/// Writes `<dir>/<stem>.pem` (mode 0644) and `<dir>/<stem>-key.pem` (mode 0600) as new files:
/// if either exists, it writes nothing and says which. For issuing, where overwriting a key
/// would lose it; [`write_pem`] is for replacing.
pub fn create_pem(dir: &Path, stem: &str, pem: &Pem) -> Result<PemFiles, TrustError> {
    let files = PemFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    };
    for path in [&files.cert, &files.key] {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(TrustError::Exists { path: path.clone() });
        }
    }
    create(&files.key, pem.key.as_bytes(), 0o600)?;
    if let Err(e) = create(&files.cert, pem.cert.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&files.key);
        return Err(e);
    }
    Ok(files)
}

/// Writes a new file: never replaces one (not even one created since it was looked for), and
/// leaves nothing behind when it fails.
fn create(path: &Path, content: &[u8], mode: u32) -> Result<(), TrustError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => TrustError::Exists {
                path: path.to_owned(),
            },
            _ => TrustError::Write {
                path: path.to_owned(),
                source,
            },
        })?;
    let written = file.write_all(content).and_then(|()| file.sync_all());
    if let Err(source) = written {
        let _ = std::fs::remove_file(path);
        return Err(TrustError::Write {
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}

fn replace(path: &Path, content: &[u8], mode: u32) -> Result<(), TrustError> {
    let error = |source| TrustError::Write {
        path: path.to_owned(),
        source,
    };
    let mut aside = path.as_os_str().to_owned();
    aside.push(".new");
    let aside = PathBuf::from(aside);
    let _ = std::fs::remove_file(&aside);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&aside)
        .map_err(error)?;
    file.write_all(content).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&aside, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_written_for_their_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = new_ca("CA", Validity::starting_now(Duration::from_secs(60))).expect("ca");
        let files = write_pem(dir.path(), "ca", &ca).expect("write");
        assert_eq!(files.cert, dir.path().join("ca.pem"));
        assert_eq!(files.key, dir.path().join("ca-key.pem"));
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&files.cert), 0o644 & !umask());
        assert_eq!(std::fs::read_to_string(&files.key).expect("read"), ca.key);
        // Written again (rotation), the files are replaced.
        let again = new_ca("CA", Validity::starting_now(Duration::from_secs(60))).expect("ca");
        write_pem(dir.path(), "ca", &again).expect("write");
        assert_eq!(
            std::fs::read_to_string(&files.cert).expect("read"),
            again.cert
        );
        assert_eq!(mode(&files.key), 0o600);
    }

    fn umask() -> u32 {
        let dir = tempfile::tempdir().expect("tempdir");
        let probe = dir.path().join("probe");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o777)
            .open(&probe)
            .expect("probe");
        0o777
            & !(std::fs::metadata(&probe)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777)
    }

    #[test]
    fn nonsense_is_not_issued() {
        let hour = Validity::starting_now(Duration::from_secs(3600));
        let ca = new_ca("CA", hour).expect("ca");
        let now = SystemTime::now();
        let backwards = Validity {
            not_before: now,
            not_after: now - Duration::from_secs(1),
        };
        let cases: Vec<(Result<Pem, TrustError>, &str)> = vec![
            (issue(&ca, Role::Operator, "", &[], hour), "\"\" cannot be a certificate's common name: it must be printable and not empty"),
            (issue(&ca, Role::Operator, "a\nb", &[], hour), "\"a\\nb\" cannot be a certificate's common name: it must be printable and not empty"),
            (issue(&ca, Role::Machine, "m", &[San::Dns("bad name".into())], hour), "\"bad name\" is not a DNS name a certificate can carry"),
            (issue(&ca, Role::Viewer, "v", &[], backwards), "the validity ends before it begins"),
            (issue(&Pem { cert: ca.cert.clone(), key: "nope".into() }, Role::Viewer, "v", &[], hour), "cannot read the CA to issue with: "),
        ];
        for (result, expected) in cases {
            let e = result.expect_err("an error");
            assert!(e.to_string().starts_with(expected), "{e} vs {expected}");
        }
    }

    #[test]
    fn new_files_are_created_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = Validity::starting_now(Duration::from_secs(3600));
        let ca = new_ca("CA", hour).expect("ca");
        let files = create_pem(dir.path(), "ca", &ca).expect("create");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(std::fs::read_to_string(&files.cert).expect("read"), ca.cert);

        let other = new_ca("CA", hour).expect("ca");
        let e = create_pem(dir.path(), "ca", &other).expect_err("exists");
        assert_eq!(
            e.to_string(),
            format!(
                "{} exists already: not overwriting it",
                files.cert.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&files.key).expect("read"), ca.key);

        // A key alone in the way: nothing is written, not even the certificate.
        std::fs::write(dir.path().join("lone-key.pem"), "mine").expect("write");
        let e = create_pem(dir.path(), "lone", &other).expect_err("exists");
        assert!(e.to_string().contains("lone-key.pem exists already"), "{e}");
        assert!(!dir.path().join("lone.pem").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("lone-key.pem")).expect("read"),
            "mine"
        );

        let e = create_pem(&dir.path().join("absent"), "x", &other).expect_err("no directory");
        assert!(e.to_string().starts_with("cannot write "), "{e}");
    }

    #[test]
    fn each_kind_gets_its_usages_and_role() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let hour = Validity::starting_now(Duration::from_secs(3600));
        let ca = new_ca("CA", hour).expect("ca");
        let sans = [San::Ip("10.0.0.1".parse().expect("ip"))];
        let cases = [
            (Kind::Fleet(Role::Operator), Some("fleet-operator"), false),
            (Kind::Fleet(Role::Viewer), Some("fleet-viewer"), false),
            (Kind::Fleet(Role::Machine), Some("fleet-machine"), true),
            (Kind::EtcdServer, None, true),
            (Kind::EtcdClient, None, false),
        ];
        for (kind, organization, serves) in cases {
            assert_eq!(kind.serves(), serves, "{kind:?}");
            let pem = issue_for(&ca, kind, "holder", &sans, hour).expect("issue");
            let der = crate::files::certificates_from_pem(pem.cert.as_bytes()).expect("pem");
            let (_, cert) = X509Certificate::from_der(&der[0]).expect("der");
            let o = cert
                .subject()
                .iter_organization()
                .next()
                .and_then(|o| o.as_str().ok());
            assert_eq!(o, organization, "{kind:?}");
            let eku = cert
                .extended_key_usage()
                .expect("eku")
                .expect("eku present")
                .value;
            assert!(eku.client_auth, "{kind:?}");
            assert_eq!(eku.server_auth, serves, "{kind:?}");
        }
    }

    #[test]
    fn a_ca_key_that_is_not_the_certificates_signs_nothing() {
        let hour = Validity::starting_now(Duration::from_secs(3600));
        let ca = new_ca("CA", hour).expect("ca");
        let other = new_ca("CA", hour).expect("ca");
        let mixed = Pem {
            cert: ca.cert.clone(),
            key: other.key.clone(),
        };
        let e = issue(&mixed, Role::Viewer, "v", &[], hour).expect_err("mismatch");
        assert_eq!(
            e.to_string(),
            "cannot read the CA to issue with: its private key is not its certificate's"
        );
    }

    #[test]
    fn serials_differ() {
        let a = serial().expect("serial").to_bytes();
        let b = serial().expect("serial").to_bytes();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0);
    }
}
