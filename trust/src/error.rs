//! What can go wrong with the cluster's keys, each in one line that names the file and says
//! what is wrong with it.

use std::io;
use std::path::PathBuf;

/// An error of this crate. Its text is one line, meant for an operator.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
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

    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}
