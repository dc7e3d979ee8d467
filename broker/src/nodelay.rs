//! Sets TCP_NODELAY on the listening socket rumqttd opened.
//!
//! rumqttd leaves Nagle's algorithm on for accepted sockets: a command published right after a
//! PUBACK then waits for the camera's delayed ACK (~40 ms a round trip). On Linux an accepted
//! socket inherits TCP_NODELAY from its listener, and rumqttd binds the listener itself and does
//! not hand it out, so we find it among this process's own file descriptors by its address.

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use socket2::SockRef;

/// Finds the listening TCP socket bound to `addr` in this process and sets TCP_NODELAY on it.
/// Returns `Ok(false)` while no such socket exists yet.
pub fn set_on_listener(addr: SocketAddr) -> io::Result<bool> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(found) = nodelay_if_listener(fd, addr) {
            return found.map(|()| true);
        }
    }
    Ok(false)
}

#[allow(unsafe_code)]
fn nodelay_if_listener(fd: i32, addr: SocketAddr) -> Option<io::Result<()>> {
    // SAFETY: `fd` was listed in /proc/self/fd a moment ago. The borrow lives only for the two
    // socket calls below; if the descriptor was closed (or reused) meanwhile, the calls fail or
    // act on a socket of ours whose address we check first, and nothing is closed by us.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let socket = SockRef::from(&fd);
    let local = socket.local_addr().ok()?.as_socket()?;
    if local != addr || !socket.is_listener().unwrap_or(false) {
        return None;
    }
    Some(socket.set_nodelay(true))
}
