//! What can go wrong with the cluster's keys, each in one line that names the file and says
//! what is wrong with it.

use std::io;
use std::path::PathBuf;

/// An error of this crate. Its text is one line, meant for an operator.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("{}: not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },

    #[error("{}: no certificate in it (expected a PEM \"CERTIFICATE\" block)", path.display())]
    NoCertificate { path: PathBuf },

    #[error("{}: every CA certificate in it has expired or cannot be used", path.display())]
    NoUsableCa { path: PathBuf },

    #[error("{}: no private key in it (expected a PEM \"PRIVATE KEY\" block)", path.display())]
    NoPrivateKey { path: PathBuf },

    #[error("{}: unusable private key: {reason}", path.display())]
    BadPrivateKey { path: PathBuf, reason: String },

    #[error("{}: unreadable certificate: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },

    #[error("{}: this private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    #[error("{}: the certificate of {subject} expired on {not_after}", path.display())]
    Expired {
        path: PathBuf,
        subject: String,
        not_after: String,
    },

    #[error("{}: the certificate of {subject} is not valid before {not_before} (is the clock right?)", path.display())]
    NotYetValid {
        path: PathBuf,
        subject: String,
        not_before: String,
    },

    #[error("{}: the certificate of {subject} is not signed by the CA in {}", cert.display(), ca.display())]
    NotSignedByCa {
        cert: PathBuf,
        ca: PathBuf,
        subject: String,
    },

    #[error("{}: the certificate of {subject} cannot serve here: {reason}", path.display())]
    Unusable {
        path: PathBuf,
        subject: String,
        reason: String,
    },

    #[error(
        "the certificate of {subject} names no organization (O), which must be its fleet role ({})",
        crate::Role::ALL_NAMES
    )]
    NoRole { subject: String },

    #[error("the certificate of {subject} has organization {organization:?}, which is no fleet role ({})", crate::Role::ALL_NAMES)]
    UnknownRole {
        subject: String,
        organization: String,
    },

    #[error("the certificate of {subject} names several organizations ({}); it must name one, its fleet role", organizations.join(", "))]
    SeveralRoles {
        subject: String,
        organizations: Vec<String>,
    },

    #[error("the certificate of {subject} has no common name (CN), which must name its holder")]
    NoName { subject: String },

    #[error("not a certificate: {reason}")]
    NotACertificate { reason: String },

    #[error("{name:?} is not a DNS name a certificate can carry")]
    BadDnsName { name: String },

    #[error("{name:?} cannot be a certificate's common name: {reason}")]
    BadName { name: String, reason: String },

    #[error("the validity ends before it begins")]
    EmptyValidity,

    #[error("cannot issue the certificate: {0}")]
    Issue(#[from] rcgen::Error),

    #[error("cannot read the CA to issue with: {0}")]
    BadIssuer(String),

    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),

    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },

    #[error("{} exists already: not overwriting it", path.display())]
    Exists { path: PathBuf },
}
