//! A loopback TCP proxy for fault injection. It forwards 127.0.0.1:`port` to one target and can:
//! - delay every chunk by a fixed time in each direction (a slow link);
//! - blackhole: stop forwarding silently while keeping every socket open, so neither end sees
//!   an error, and hold new connections before they reach the target (a silent partition). The
//!   held bytes are delivered in order when the blackhole lifts, as TCP retransmission would;
//! - reset: abort every open connection with an RST on both sides.
//!
//! Bounded: at most 256 connections at once, 256 chunks of 16 KiB queued per direction; it stops
//! when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Ctl {
    delay: Mutex<Duration>,
    hole: watch::Sender<bool>,
    resets: watch::Sender<u64>,
}

impl Ctl {
    fn delay(&self) -> Duration {
        *self.delay.lock().unwrap()
    }

    /// Waits while the blackhole is on.
    async fn open(&self) {
        let mut rx = self.hole.subscribe();
        let _ = rx.wait_for(|on| !on).await;
    }
}

pub struct Proxy {
    pub port: u16,
    ctl: Arc<Ctl>,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ctl = Arc::new(Ctl {
            delay: Mutex::new(Duration::ZERO),
            hole: watch::channel(false).0,
            resets: watch::channel(0).0,
        });
        let stop = CancellationToken::new();
        let (ctl2, stop2) = (ctl.clone(), stop.clone());
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(256));
            loop {
                let permit = tokio::select! {
                    p = slots.clone().acquire_owned() => p.unwrap(),
                    _ = stop2.cancelled() => return,
                };
                let (client, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = stop2.cancelled() => return,
                };
                let (ctl, stop) = (ctl2.clone(), stop2.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut resets = ctl.resets.subscribe();
                    tokio::select! {
                        _ = connection(client, target, ctl.clone()) => {}
                        _ = resets.changed() => {}
                        _ = stop.cancelled() => {}
                    }
                    // Dropping the sockets here (SO_LINGER 0) sends an RST both ways.
                });
            }
        });
        Proxy { port, ctl, stop }
    }

    /// Delays every chunk by `d` in each direction from now on.
    pub fn delay(&self, d: Duration) {
        *self.ctl.delay.lock().unwrap() = d;
    }

    /// Turns the silent partition on or off.
    pub fn blackhole(&self, on: bool) {
        self.ctl.hole.send_replace(on);
    }

    /// Aborts every open connection with an RST.
    pub fn reset(&self) {
        self.ctl.resets.send_modify(|n| *n += 1);
    }
}

#[allow(deprecated)] // SO_LINGER 0 never blocks: it makes close send an RST.
fn linger_zero(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

async fn connection(client: TcpStream, target: SocketAddr, ctl: Arc<Ctl>) {
    linger_zero(&client);
    ctl.open().await; // a partition holds new connections too
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    linger_zero(&server);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(pump(cr, sw, ctl.clone()), pump(sr, cw, ctl));
}

/// Copies one direction: chunks are stamped when read and written `delay` later, in order, once
/// no blackhole is on. EOF is forwarded as a FIN the same way.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    ctl: Arc<Ctl>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(256);
    let read_ctl = ctl.clone();
    let reader = async move {
        loop {
            let mut buf = vec![0u8; 16 * 1024];
            let n = from.read(&mut buf).await.unwrap_or(0);
            let due = Instant::now() + read_ctl.delay();
            if n == 0 {
                let _ = tx.send((due, None)).await;
                return;
            }
            buf.truncate(n);
            if tx.send((due, Some(buf))).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            ctl.open().await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::join!(reader, writer);
}
