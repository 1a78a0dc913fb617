//! The master's accept loop. Each connection is TLS (the caller's role read from the
//! certificate it showed, if any) or plain text, told apart by its first byte, and served by
//! hyper (HTTP/1.1 or HTTP/2: the JSON API, the dashboard and gRPC share the port).
//! A TLS-only master answers plain text with a one-line HTTP 400 that says what to do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
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
    service_for: F,
    stop: impl std::future::Future<Output = ()>,
) where
    F: Fn(Connection) -> S + Clone + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
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
        // No Nagle delay: small Raft and session messages must leave at once.
        let _ = tcp.set_nodelay(true);
        let transport = transport.clone();
        let service_for = service_for.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            match admit(tcp, remote, &transport).await {
                Some(Admitted::Tls(stream, role)) => {
                    let service = service_for(Connection { remote, peer: Peer::Tls(role) });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let _ = watcher.watch(conn).await;
                }
                Some(Admitted::Plain(tcp)) => {
                    let service = service_for(Connection { remote, peer: Peer::Plain });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned();
                    let _ = watcher.watch(conn).await;
                }
                None => {}
            }
        });
    }
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
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
