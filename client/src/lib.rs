//! fleetd's HTTP API v1 as its clients see it: the JSON shapes ([`schema`]), which the server
//! (`fleet-api`) serves, and the client fleetctl uses ([`Client`]).
//!
//! Nothing here knows etcd or serves anything, so a client builds without the server's
//! dependencies.

mod client;
pub mod schema;

pub use client::{
    Client, ClientError, Endpoint, EventQuery, EventStream, Journal, Tls, SYSTEM_CA_BUNDLE,
};
