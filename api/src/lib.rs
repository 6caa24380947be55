//! fleetd's HTTP API v1 server ([`server`]), with units' history and rollback (`history`) and
//! events (`events`), its discovery document ([`discovery`]), the local journal and status
//! readers ([`inspect`]) and the peer endpoint ([`peer`]). The JSON shapes and the client are in `fleet-client`.

mod access;
pub mod discovery;
mod drain;
mod events;
pub mod follows;
mod history;
pub mod inspect;
pub mod peer;
mod removal;
mod rolling;
pub mod server;
