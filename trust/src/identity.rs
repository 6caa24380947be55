//! Who holds a certificate: its role (the subject's organization, O) and its name (the common
//! name, CN).

use std::fmt;
use std::str::FromStr;

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::TrustError;

/// What the holder of a certificate may do, as its subject's organization (O) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `fleet-operator`: everything.
    Operator,
    /// `fleet-viewer`: reads only (lists, unit files, journals, statuses).
    Viewer,
    /// `fleet-machine`: a fleetd, whose certificate's common name is its machine id. It serves
    /// the API and the peer endpoint, and is the client of its peers.
    Machine,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Operator, Role::Viewer, Role::Machine];

    /// The organizations of [`Role::ALL`], for messages.
    pub(crate) const ALL_NAMES: &'static str = "fleet-operator, fleet-viewer or fleet-machine";

    /// The subject organization (O) that carries this role.
    pub fn organization(self) -> &'static str {
        match self {
            Role::Operator => "fleet-operator",
            Role::Viewer => "fleet-viewer",
            Role::Machine => "fleet-machine",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.organization())
    }
}

/// An organization that is none of the roles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is no fleet role ({ALL})", ALL = Role::ALL_NAMES)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.organization() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// The holder of a verified certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    /// The common name (CN): a person's or a program's name, or a machine's id.
    pub name: String,
}

impl Identity {
    /// The identity a certificate (DER) states. It does not verify the certificate: that is the
    /// TLS handshake's business, before this is asked.
    pub fn from_der(der: &[u8]) -> Result<Identity, TrustError> {
        let cert = parse(der)?;
        Identity::of(&cert)
    }

    pub(crate) fn of(cert: &X509Certificate<'_>) -> Result<Identity, TrustError> {
        let subject = || cert.subject().to_string();
        let organizations = cert
            .subject()
            .iter_organization()
            .map(|o| match o.as_str() {
                Ok(s) => s.to_owned(),
                Err(_) => format!("{:?}", o.as_slice()),
            })
            .collect::<Vec<_>>();
        let role = match organizations.as_slice() {
            [] => return Err(TrustError::NoRole { subject: subject() }),
            [one] => one.parse::<Role>().map_err(|_| TrustError::UnknownRole {
                subject: subject(),
                organization: one.clone(),
            })?,
            _ => {
                return Err(TrustError::SeveralRoles {
                    subject: subject(),
                    organizations,
                })
            }
        };
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())
            .ok_or_else(|| TrustError::NoName { subject: subject() })?;
        Ok(Identity {
            role,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, TrustError> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(TrustError::NotACertificate {
            reason: e.to_string(),
        }),
    }
}

/// A certificate's subject, for messages: its common name if it has one, else the whole
/// distinguished name.
pub(crate) fn subject_of(cert: &X509Certificate<'_>) -> String {
    match cert
        .subject()
        .iter_common_name()
        .next()
        .map(|cn| cn.as_str())
    {
        Some(Ok(cn)) if !cn.is_empty() => format!("{cn:?}"),
        _ => format!("\"{}\"", cert.subject()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{issue, new_ca, San, Validity};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use std::time::Duration;

    fn leaf_der(dn: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in dn {
            params.distinguished_name.push(ty.clone(), *value);
        }
        params
            .self_signed(&key)
            .expect("self-signed")
            .der()
            .to_vec()
    }

    #[test]
    fn roles_are_named_by_their_organization() {
        for role in Role::ALL {
            assert_eq!(role.organization().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.organization());
        }
        assert_eq!(
            "fleet-admin".parse::<Role>(),
            Err(UnknownRole("fleet-admin".into()))
        );
        assert!("Fleet-Operator".parse::<Role>().is_err());
    }

    #[test]
    fn identity_comes_from_organization_and_common_name() {
        use rcgen::DnType::{CommonName as CN, OrganizationName as O};
        type Subject<'a> = &'a [(rcgen::DnType, &'a str)];
        type Expected<'a> = Result<(Role, &'a str), &'a str>;
        let cases: &[(Subject, Expected)] = &[
            (
                &[(CN, "alice"), (O, "fleet-operator")],
                Ok((Role::Operator, "alice")),
            ),
            (
                &[(O, "fleet-viewer"), (CN, "bob")],
                Ok((Role::Viewer, "bob")),
            ),
            (
                &[(CN, "0123abcd"), (O, "fleet-machine")],
                Ok((Role::Machine, "0123abcd")),
            ),
            (
                &[(CN, "mallory")],
                Err("the certificate of CN=mallory names no organization (O), which must be its fleet role (fleet-operator, fleet-viewer or fleet-machine)"),
            ),
            (
                &[(CN, "eve"), (O, "acme")],
                Err("the certificate of CN=eve, O=acme has organization \"acme\", which is no fleet role (fleet-operator, fleet-viewer or fleet-machine)"),
            ),
            (
                // rcgen keeps one value per type: the second O under its bare OID.
                &[(CN, "eve"), (O, "fleet-viewer"), (rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]), "fleet-operator")],
                Err("the certificate of CN=eve, O=fleet-viewer, O=fleet-operator names several organizations (fleet-viewer, fleet-operator); it must name one, its fleet role"),
            ),
            (
                &[(O, "fleet-operator")],
                Err("the certificate of O=fleet-operator has no common name (CN), which must name its holder"),
            ),
        ];
        for (dn, expected) in cases {
            let got = Identity::from_der(&leaf_der(dn));
            match expected {
                Ok((role, name)) => {
                    let id = got.unwrap_or_else(|e| panic!("{dn:?}: {e}"));
                    assert_eq!((id.role, id.name.as_str()), (*role, *name), "{dn:?}");
                }
                Err(message) => {
                    let e = got.expect_err("no identity");
                    assert_eq!(e.to_string(), *message, "{dn:?}");
                }
            }
        }
    }

    #[test]
    fn issued_certificates_carry_their_identity() {
        let ca = new_ca("test CA", Validity::starting_now(Duration::from_secs(3600))).expect("ca");
        for role in Role::ALL {
            let sans = [San::Dns("node1.example".into())];
            let pem = issue(
                &ca,
                role,
                "holder",
                &sans,
                Validity::starting_now(Duration::from_secs(60)),
            )
            .expect("issue");
            let der = CertificateDer::from_pem_slice(pem.cert.as_bytes()).expect("pem");
            assert_eq!(
                Identity::from_der(&der).expect("identity"),
                Identity {
                    role,
                    name: "holder".into()
                }
            );
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let e = Identity::from_der(b"hello").expect_err("garbage");
        assert!(e.to_string().starts_with("not a certificate: "), "{e}");
    }
}
