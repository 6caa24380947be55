//! What fleetd takes from the machine it runs on: its id, its address, the sockets systemd
//! passes it, and the readiness notification.

use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The machine id from `/etc/machine-id`.
pub fn machine_id(path: &Path) -> Result<fleet_registry::MachineId> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the machine id from {}", path.display()))?;
    fleet_registry::MachineId::parse(&text).with_context(|| format!("in {}", path.display()))
}

/// The IPv4 address of the interface that carries the default route.
pub fn default_route_address() -> Option<IpAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 2 && fields[1] == "00000000").then(|| fields[0].to_string())
    })?;
    interface_addresses()
        .into_iter()
        .find(|(name, addr)| *name == iface && addr.is_ipv4())
        .map(|(_, addr)| addr)
}

fn interface_addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                    .to_string_lossy()
                    .into_owned();
                out.push((name, IpAddr::V4(ip)));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// A listening socket handed over by systemd.
pub enum Inherited {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// Takes the sockets of systemd socket activation (`LISTEN_PID`, `LISTEN_FDS`), if any are
/// meant for this process, and clears the variables so children do not see them.
pub fn inherited_sockets() -> Result<Vec<Inherited>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let count: i32 = fds.parse().context("invalid LISTEN_FDS")?;
    let mut out = Vec::new();
    for fd in 3..3 + count {
        // SAFETY: systemd passed us these descriptors (LISTEN_PID is ours); we own them now.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let socket = socket2::Socket::from(owned);
        socket.set_nonblocking(true)?;
        let local = socket
            .local_addr()
            .with_context(|| format!("inherited fd {fd} is not a socket"))?;
        let owned = OwnedFd::from(socket);
        if local.is_unix() {
            out.push(Inherited::Unix(owned.into()));
        } else if local.as_socket().is_some() {
            out.push(Inherited::Tcp(owned.into()));
        } else {
            bail!("inherited fd {fd} is neither a unix nor a TCP socket");
        }
    }
    Ok(out)
}

/// Tells systemd (`Type=notify`) that fleetd is ready, if it runs under systemd.
pub fn notify_ready() {
    if let Err(e) = notify(b"READY=1") {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
}

/// Tells systemd (`Type=notify`) that fleetd is still starting: what it waits for (`status`),
/// and that it will say more within `within` (`EXTEND_TIMEOUT_USEC`), so that a wait longer
/// than the unit's start timeout is not taken for a start that hangs.
pub fn notify_waiting(status: &str, within: std::time::Duration) {
    let message = format!(
        "STATUS={status}\nEXTEND_TIMEOUT_USEC={}",
        within.as_micros()
    );
    if let Err(e) = notify(message.as_bytes()) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Sends `message` to systemd's notification socket, if fleetd runs under systemd.
fn notify(message: &[u8]) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message, &addr)?;
    } else {
        socket.send_to(message, &path)?;
    }
    Ok(())
}
