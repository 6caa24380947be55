//! The cluster's keys: only holders of a certificate signed by the cluster's CA can talk to a
//! fleetd, and what they may do is their certificate's role.
//!
//! - One CA per cluster signs every certificate ([`new_ca`], [`issue`], [`write_pem`],
//!   [`create_pem`]). [`issue_for`] also issues etcd's certificates ([`Kind`]), which carry no
//!   fleet role.
//! - A certificate's subject organization (O) is its holder's [`Role`] (`fleet-operator`,
//!   `fleet-viewer`, `fleet-machine`) and its common name (CN) the holder's name (a machine's
//!   is its machine id): together its [`Identity`].
//! - A fleetd's machine certificate is its servers' certificate (API and peer endpoint, with the
//!   machine's addresses and names as subjectAltNames) and its client certificate towards its
//!   peers.
//! - Servers ([`ServerTls`], [`serve`]) require a client certificate signed by the CA and hand
//!   each request its [`Caller`]; clients ([`client_config`]) trust the CA only. [`explain`]
//!   says in one line why a handshake failed.
//!
//! Files are checked when loaded (a missing or empty file, a key not the certificate's, a
//! certificate expired, not yet valid or signed by another CA), so that an operator hears of a
//! mistake when starting a program, not at its first connection.
//!
//! The servers' side ([`ServerTls`], [`serve`]) is the `server` feature (on by default); a
//! client turns it off and builds without axum, hyper or tokio.
//!
//! Crypto is rustls with the ring provider only (no aws-lc, which needs cmake and nasm to
//! build), and TLS 1.3 only.

mod client;
mod error;
mod files;
mod identity;
mod issue;
#[cfg(feature = "probe")]
mod probe;
#[cfg(feature = "server")]
mod serve;
#[cfg(feature = "server")]
mod server;

pub use client::{client_config, client_config_with_bundle, etcd_client_config, explain};
pub use error::TrustError;
pub use files::{load_ca, load_certificates, load_private_key, FilesStamp, TlsFiles};
pub use identity::{Identity, Role, UnknownRole};
pub use issue::{
    create_pem, issue, issue_for, new_ca, write_pem, Kind, Pem, PemFiles, San, Validity, BACKDATE,
};
#[cfg(feature = "probe")]
pub use probe::{probe, probe_url, Probe};
#[cfg(feature = "server")]
pub use serve::{serve, Caller, Limits};
#[cfg(feature = "server")]
pub use server::ServerTls;

/// rustls, whose configurations this crate's functions return.
pub use rustls;

/// The protocol servers and clients speak inside TLS.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";
