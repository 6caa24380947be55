//! fleetd's HTTP API v1: the JSON shapes ([`schema`]), the server ([`server`]) and the client
//! fleetctl uses ([`client`]).

pub mod client;
pub mod discovery;
pub mod inspect;
pub mod peer;
pub mod schema;
pub mod server;

pub use client::{Client, ClientError, Endpoint};
