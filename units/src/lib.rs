//! systemd unit files as fleet sees them.
