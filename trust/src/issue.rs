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
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| TrustError::BadIssuer(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)
        .map_err(|e| TrustError::BadIssuer(e.to_string()))?;
    let mut params = params(name, Some(role), validity)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Machine => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Operator | Role::Viewer => vec![ExtendedKeyUsagePurpose::ClientAuth],
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
    fn serials_differ() {
        let a = serial().expect("serial").to_bytes();
        let b = serial().expect("serial").to_bytes();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0);
    }
}
