//! The master's accept loop. Each connection is TLS (the caller's role read from the
//! certificate it showed, if any) or plain text, told apart by its first byte, and served by
//! hyper (HTTP/1.1 or HTTP/2: the JSON API, the dashboard and gRPC share the port).
//! A TLS-only master answers plain text with a one-line HTTP 400 that says what to do.
//!
//! Hostile or broken clients are bounded here ([`Limits`]): connections per client address,
//! HTTP/2 streams per connection, header sizes, how long headers and handshakes may take, and
//! how long a connection may sit idle (no request in flight) before it is closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::identity::{role_of, Identity};
use crate::Role;

/// The first byte of a TLS handshake record.
const HANDSHAKE: u8 = 0x16;
/// A connection that sends nothing, or does not finish its handshake, in this long is dropped
/// (slow clients cannot hold connections open for free).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping server lets open requests finish.
const DRAIN: Duration = Duration::from_secs(5);

/// What one client may hold of a server. The defaults suit a master: its peers, its workers
/// and its clients.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections from one address; more are closed at once. Workers, peers and
    /// clients all count, so a machine running many workers behind one address needs more.
    pub connections_per_client: usize,
    /// Concurrent HTTP/2 streams on one connection (a worker session is one; Raft sends a
    /// few at a time).
    pub streams_per_connection: u32,
    /// Bytes of request headers.
    pub header_bytes: u32,
    /// How long a client may take to send a request's headers (HTTP/1.1).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed (the client reconnects
    /// when it needs to).
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged, and how long the answer may take: a peer that
    /// vanished without closing is noticed.
    pub keep_alive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_client: 512,
            streams_per_connection: 256,
            header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keep_alive: Duration::from_secs(30),
        }
    }
}

/// What a master accepts.
#[derive(Clone)]
pub enum Transport {
    /// TLS only: the default once a master has certificates.
    Tls(Arc<Identity>),
    /// TLS and plain text both: while a running cluster moves to TLS.
    Both(Arc<Identity>),
    /// Plain text only (`--insecure-plaintext`).
    Plain,
}

/// How a caller reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Plain,
    /// Over TLS; `Some` when it showed a certificate of the cluster CA naming a role.
    Tls(Option<Role>),
}

/// One accepted connection, as the service for it sees it.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    pub remote: SocketAddr,
    pub peer: Peer,
}

/// Serves connections from `listener` until `stop` completes, then lets open requests finish
/// for a few seconds. `service_for` makes the service of one connection.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    transport: Transport,
    limits: Limits,
    service_for: F,
    stop: impl std::future::Future<Output = ()>,
) where
    F: Fn(Connection) -> S + Clone + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (stopping, _) = tokio::sync::watch::channel(false);
    let open = Arc::new(OpenConnections::default());
    let limits = Arc::new(limits);
    tokio::pin!(stop);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = open.take(remote.ip(), limits.connections_per_client) else {
            now_and_then(|| {
                tracing::warn!(
                    %remote,
                    limit = limits.connections_per_client,
                    "refused a connection: this client already holds the most connections allowed"
                )
            });
            continue;
        };
        // No Nagle delay: small Raft and session messages must leave at once.
        let _ = tcp.set_nodelay(true);
        let transport = transport.clone();
        let service_for = service_for.clone();
        let limits = limits.clone();
        let mut stopping = stopping.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size((limits.header_bytes as usize).max(8192));
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.streams_per_connection)
                .max_header_list_size(limits.header_bytes)
                .keep_alive_interval(limits.keep_alive)
                .keep_alive_timeout(limits.keep_alive);
            let activity = Arc::new(Activity::new());
            let (io, peer) = match admit(tcp, remote, &transport).await {
                Some(Admitted::Tls(stream, role)) => (Io::Tls(stream), Peer::Tls(role)),
                Some(Admitted::Plain(tcp)) => (Io::Plain(tcp), Peer::Plain),
                None => return,
            };
            let service = Tracked { inner: service_for(Connection { remote, peer }), activity: activity.clone() };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            // When the connection was asked to close gracefully, if it was.
            let mut closing: Option<tokio::time::Instant> = None;
            let opened = tokio::time::Instant::now();
            let tick = limits.idle_timeout.min(limits.header_timeout).min(Duration::from_secs(1));
            let mut check = tokio::time::interval(tick.max(Duration::from_millis(10)));
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    // Stopping: finish what is in flight; once the server gave up waiting
                    // (it dropped the sender), the connection goes at once.
                    changed = stopping.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if closing.is_none() {
                            closing = Some(tokio::time::Instant::now());
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    _ = check.tick() => {
                        // A client that never completes a first request (a stalled HTTP/2
                        // preface, a few bytes and silence) is cut off like slow headers.
                        if activity.requests() == 0 && opened.elapsed() >= limits.header_timeout {
                            return;
                        }
                        match closing {
                            None if activity.idle_for() >= limits.idle_timeout => {
                                closing = Some(tokio::time::Instant::now());
                                conn.as_mut().graceful_shutdown();
                            }
                            // An HTTP/2 goodbye waits for the client's answer to a ping: one
                            // that never answers, with nothing in flight, is cut off.
                            Some(at) if at.elapsed() >= limits.header_timeout && activity.idle_for() > Duration::ZERO => {
                                return;
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
    }
    let _ = stopping.send(true);
    let deadline = tokio::time::Instant::now() + DRAIN;
    while open.total() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Dropping the sender ends every connection still open (a worker session, a long poll).
}

/// Open connections per client address.
#[derive(Default)]
struct OpenConnections {
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

impl OpenConnections {
    /// A slot for one more connection from `ip`, or `None` if it holds `limit` already.
    fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<Slot> {
        let mut by_client = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        let count = by_client.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Slot { open: self.clone(), ip })
    }

    fn total(&self) -> usize {
        self.by_client.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }
}

/// One open connection, given back when dropped.
struct Slot {
    open: Arc<OpenConnections>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_client = self.open.by_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = by_client.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_client.remove(&self.ip);
            }
        }
    }
}

/// Requests in flight on one connection, and when the last one ended. A request is in flight
/// until its response body is done: a worker session's stream keeps its connection busy.
struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// Requests begun on the connection so far.
    begun: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            begun: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn requests(&self) -> u64 {
        self.begun.load(Ordering::Relaxed)
    }

    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// One request in flight; it ends when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's service that counts its requests in flight.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| TrackedBody { body, _in_flight: in_flight }))
        })
    }
}

/// A response body that keeps its request in flight until it is done or dropped.
struct TrackedBody<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's stream, TLS or plain.
enum Io {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tls(s) => s.is_write_vectored(),
            Io::Plain(s) => s.is_write_vectored(),
        }
    }
}

enum Admitted {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Option<Role>),
    Plain(TcpStream),
}

/// Tells TLS from plain text by the first byte, and lets in what the transport accepts.
async fn admit(tcp: TcpStream, remote: SocketAddr, transport: &Transport) -> Option<Admitted> {
    let mut first = [0u8; 1];
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == HANDSHAKE,
        _ => return None,
    };
    match (tls, transport) {
        (true, Transport::Tls(identity) | Transport::Both(identity)) => {
            let config = identity.server_config()?;
            let accepted =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_rustls::TlsAcceptor::from(config).accept(tcp)).await;
            match accepted {
                Ok(Ok(stream)) => {
                    let role = role_of(stream.get_ref().1.peer_certificates());
                    Some(Admitted::Tls(Box::new(stream), role))
                }
                Ok(Err(e)) => {
                    // A certificate of another CA, say: the handshake is the refusal.
                    now_and_then(|| tracing::warn!(%remote, error = %e, "TLS handshake refused"));
                    None
                }
                Err(_) => None,
            }
        }
        (false, Transport::Plain | Transport::Both(_)) => Some(Admitted::Plain(tcp)),
        (false, Transport::Tls(_)) => {
            refuse_plain(tcp, remote).await;
            None
        }
        (true, Transport::Plain) => {
            now_and_then(
                || tracing::warn!(%remote, "a TLS connection to a plain-text master (start it with --certs to accept TLS)"),
            );
            None
        }
    }
}

/// Answers a plain-text caller of a TLS-only master with what to do, then closes.
async fn refuse_plain(mut tcp: TcpStream, remote: SocketAddr) {
    now_and_then(|| tracing::warn!(%remote, "refused a plain-text connection (this master accepts TLS only)"));
    let body = "this master accepts TLS only: use https:// and trust the cluster CA \
                (--certs DIR or FLOTILLA_CERTS, from `flotilla certs init`)\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Read the request first, so that closing does not reset the connection before the
    // caller reads the answer.
    let mut request = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut request)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(answer.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// Runs `log` at most once every ten seconds (per process): a misconfigured client retrying in
/// a loop must not flood the log.
fn now_and_then(log: impl FnOnce()) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10 && LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        log();
    }
}
