//! A TCP fault proxy between two parts of the platform (the gateway and its database, or the
//! gateway and its broker): it passes bytes, holds them (a stalled peer or a network that drops
//! everything: connections stay up, nothing arrives), cuts every connection, or refuses new
//! ones. No `tc netem` here: the proxy is the network.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow both ways.
    Pass,
    /// Connections stay open; no byte goes through until the mode changes.
    Hold,
    /// Every connection is closed and new ones are closed as they come.
    Cut,
    /// Nobody listens: connecting is refused.
    Refuse,
}

/// A running proxy; dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, watching) = watch::channel(Mode::Pass);
        let task = tokio::spawn(serve(Some(listener), addr, target, watching));
        Ok(Self { addr, mode, task })
    }

    /// Where the part behind the proxy is reached.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
) {
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Refuse {
            listener = None;
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(open) = &listener else {
            // Listening again on the same port (SO_REUSEADDR: closed connections may linger).
            match TcpListener::bind(addr).await {
                Ok(bound) => listener = Some(bound),
                Err(error) => {
                    tracing::warn!(%error, "fault proxy cannot listen again yet");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        let accepted = tokio::select! {
            accepted = open.accept() => accepted,
            changed = mode.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        if current == Mode::Cut {
            drop(client);
            continue;
        }
        let mode = mode.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            // Either direction ending ends the connection (MQTT and PostgreSQL close both ways).
            tokio::select! {
                _ = pump(client_read, server_write, mode.clone()) => {}
                _ = pump(server_read, client_write, mode) => {}
            }
        });
    }
}

/// Copies `from` to `to` while the mode lets it; returns when either side closes or the
/// connection is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) -> io::Result<()> {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        if !flowing(&mut mode).await {
            return Ok(());
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read?,
            changed = mode.changed() => {
                if changed.is_err() { return Ok(()); }
                continue;
            }
        };
        if read == 0 {
            return Ok(());
        }
        // Bytes read just as the traffic was held wait with it.
        if !flowing(&mut mode).await {
            return Ok(());
        }
        to.write_all(&buffer[..read]).await?;
    }
}

/// Waits while the traffic is held; `false` once the connection is to be closed.
async fn flowing(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Pass => return true,
            Mode::Cut | Mode::Refuse => return false,
            Mode::Hold => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server behind the proxy, and a client talking through it.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0_u8; 64];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(client: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        client.write_all(b"ping").await.ok()?;
        let mut buffer = [0_u8; 4];
        tokio::time::timeout(within, client.read_exact(&mut buffer))
            .await
            .ok()?
            .ok()?;
        Some(buffer.to_vec())
    }

    #[tokio::test]
    async fn passes_holds_cuts_and_refuses() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let second = Duration::from_secs(1);
        assert_eq!(
            round_trip(&mut client, second).await.as_deref(),
            Some(&b"ping"[..])
        );

        // Held: nothing comes back, yet the connection lives and delivers once released.
        proxy.set(Mode::Hold);
        assert_eq!(
            round_trip(&mut client, Duration::from_millis(300)).await,
            None
        );
        proxy.set(Mode::Pass);
        let mut late = [0_u8; 4];
        tokio::time::timeout(second, client.read_exact(&mut late))
            .await
            .expect("the held bytes arrive")
            .unwrap();
        assert_eq!(&late, b"ping");

        // Cut: the connection is closed.
        proxy.set(Mode::Cut);
        let mut buffer = [0_u8; 4];
        let closed = tokio::time::timeout(second, client.read(&mut buffer)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

        // Refused: nobody listens; then the port serves again.
        proxy.set(Mode::Refuse);
        let mut refused = false;
        for _ in 0..40 {
            if TcpStream::connect(proxy.addr()).await.is_err() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(refused, "the proxy still listens");
        proxy.set(Mode::Pass);
        let mut again = None;
        for _ in 0..20 {
            if let Ok(stream) = TcpStream::connect(proxy.addr()).await {
                again = Some(stream);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut again = again.expect("the proxy listens again");
        assert_eq!(
            round_trip(&mut again, second).await.as_deref(),
            Some(&b"ping"[..])
        );
    }
}
