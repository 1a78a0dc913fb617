//! A TCP relay on loopback that delays every byte, standing in for a long link (this
//! kernel has no `netem`).
//!
//! Each chunk read from one side is written to the other side a one-way delay later, drawn
//! anew for each chunk from a range. Order is kept: a chunk never leaves before the one read
//! before it (its deadline is at least the previous one). Throughput is not limited: reading
//! goes on while earlier chunks wait, as on a long fat pipe. Connection set-up is not delayed
//! (the relay answers it itself), which only makes a new connection one round trip cheaper
//! than over a real long link.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A running relay: accepts on `port`, forwards to the target. Stops (with every connection)
/// when dropped.
pub struct Relay {
    pub port: u16,
    stop: CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a relay to `127.0.0.1:target` with a one-way delay drawn from `one_way` per chunk.
pub async fn start(target: u16, one_way: RangeInclusive<Duration>) -> std::io::Result<Relay> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let stop = CancellationToken::new();
    let delays = Arc::new(Delays::new(u64::from(port) << 16 | u64::from(target), one_way));
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = token.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((client, _)) = accepted else { continue };
            tokio::spawn(connection(client, target, delays.clone(), token.clone()));
        }
    });
    Ok(Relay { port, stop })
}

/// One relayed connection; a target that refuses closes the client's side at once, as a
/// dead master's refused connection would.
async fn connection(client: TcpStream, target: u16, delays: Arc<Delays>, stop: CancellationToken) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = direction(client_read, server_write, delays.clone(), stop.clone());
    let down = direction(server_read, client_write, delays, stop);
    tokio::join!(up, down);
}

async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delays: Arc<Delays>, stop: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            last = last.max(Instant::now() + delays.next());
            if tx.send((last, buf[..n].to_vec())).is_err() {
                return;
            }
        }
        // Dropping `tx` lets the writer finish what is queued, then close its side.
    };
    let writer = async move {
        while let Some((deadline, chunk)) = rx.recv().await {
            tokio::time::sleep_until(deadline).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = async { tokio::join!(reader, writer) } => {}
    }
}

/// Delays drawn uniformly from a range with a small xorshift generator (the tests need
/// spread, not cryptographic randomness).
struct Delays {
    state: AtomicU64,
    min_us: u64,
    span_us: u64,
}

impl Delays {
    fn new(seed: u64, range: RangeInclusive<Duration>) -> Self {
        let min_us = range.start().as_micros() as u64;
        let span_us = (range.end().as_micros() as u64).saturating_sub(min_us) + 1;
        Delays { state: AtomicU64::new(seed | 1), min_us, span_us }
    }

    fn next(&self) -> Duration {
        let mut x = self.state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.store(x, Ordering::Relaxed);
        Duration::from_micros(self.min_us + x % self.span_us)
    }
}
