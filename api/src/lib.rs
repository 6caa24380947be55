//! fleet-api
