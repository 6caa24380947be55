//! fleetd's HTTP API v1 server ([`server`]), its discovery document ([`discovery`]), the local
//! journal and status readers ([`inspect`]) and the peer endpoint ([`peer`]). The JSON shapes
//! and the client are in `fleet-client`.

mod access;
pub mod discovery;
pub mod follows;
pub mod inspect;
pub mod peer;
pub mod server;
