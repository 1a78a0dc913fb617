//! Outgoing connections to masters, for hyper's HTTP client and tonic's channels: TCP, then
//! TLS when the member has an identity. A master is verified by the name in its certificate
//! (`master.flotilla`) and the cluster CA, not by the address dialled. Each connection takes
//! the identity as it is now, so a rotated certificate is used from the next connection on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::identity::{role_name, Alpn, Identity};
use crate::Role;

#[derive(Clone)]
pub struct Connector {
    identity: Option<Arc<Identity>>,
    alpn: Alpn,
    connect_timeout: Duration,
    /// Try plain text when a TLS handshake fails (a running cluster moving to TLS: peers
    /// not restarted with certificates yet speak only plain text).
    fallback_plain: bool,
    /// Whom it connects to: the name the server's certificate must carry.
    server: Role,
}

impl Connector {
    /// `identity`: `None` connects in plain text.
    pub fn new(identity: Option<Arc<Identity>>, alpn: Alpn) -> Self {
        Connector {
            identity,
            alpn,
            connect_timeout: Duration::from_secs(1),
            fallback_plain: false,
            server: Role::Master,
        }
    }

    /// Connects to workers (the outputs they serve) instead of masters.
    pub fn to_workers(mut self) -> Self {
        self.server = Role::Worker;
        self
    }

    /// See `fallback_plain`: only while a cluster moves to TLS.
    pub fn with_plain_fallback(mut self, on: bool) -> Self {
        self.fallback_plain = on;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn is_tls(&self) -> bool {
        self.identity.is_some()
    }

    /// Connects to `host:port`.
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<Stream> {
        let tcp = self.tcp(host, port).await?;
        let Some(identity) = &self.identity else { return Ok(Stream::Plain(tcp)) };
        match self.handshake(identity, tcp, host, port).await {
            Err(e) if self.fallback_plain => {
                tracing::debug!(%host, port, error = %e, "TLS failed; trying plain text (moving to TLS)");
                Ok(Stream::Plain(self.tcp(host, port).await?))
            }
            other => other,
        }
    }

    async fn tcp(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {host}:{port} timed out")))??;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn handshake(&self, identity: &Identity, tcp: TcpStream, host: &str, port: u16) -> io::Result<Stream> {
        let config = identity.client_config(self.alpn);
        let handshake = tokio_rustls::TlsConnector::from(config).connect(role_name(self.server), tcp);
        match tokio::time::timeout(self.connect_timeout * 5, handshake).await {
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
            Ok(Err(e)) => Err(io::Error::new(
                e.kind(),
                format!(
                    "TLS with {host}:{port} failed: {e} (is it a {} of the cluster whose CA is in {}?)",
                    self.server.label(),
                    identity.dir().display()
                ),
            )),
            Err(_) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, format!("TLS handshake with {host}:{port} timed out")))
            }
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let host =
                uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
            // An IPv6 literal comes bracketed in a URI.
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(80);
            me.connect(&host, port).await.map(TokioIo::new)
        })
    }
}

/// A connection to a master, in plain text or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
