//! The cluster's keys: only holders of a certificate signed by the cluster's CA can talk to a
//! fleetd, and what they may do is their certificate's role.
//!
//! - One CA per cluster signs every certificate ([`new_ca`], [`issue`], [`write_pem`]).
//! - A certificate's subject organization (O) is its holder's [`Role`] (`fleet-operator`,
//!   `fleet-viewer`, `fleet-machine`) and its common name (CN) the holder's name (a machine's
//!   is its machine id): together its [`Identity`].
//! - A fleetd's machine certificate is its servers' certificate (API and peer endpoint, with the
//!   machine's addresses and names as subjectAltNames) and its client certificate towards its
//!   peers.
//!
//! Crypto is ring's (no aws-lc, which needs cmake and nasm to build).

mod error;
mod identity;
mod issue;

pub use error::TrustError;
pub use identity::{Identity, Role, UnknownRole};
pub use issue::{issue, new_ca, write_pem, Pem, PemFiles, San, Validity, BACKDATE};
