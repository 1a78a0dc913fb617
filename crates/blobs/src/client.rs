//! Copies blobs between stores over HTTP: to a peer ([`BlobClient::put`]), from a holder into
//! the local store ([`BlobClient::fetch`], checked), or as a stream ([`BlobClient::open`],
//! for a master handing a blob to `job fetch`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use flotilla_core::workflow::{Digest, OutputFile};
use flotilla_tls::{Alpn, Connector, Identity};
use http_body_util::BodyExt;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{address}: {why}")]
    Remote { address: String, why: String },
    #[error("{address}: not held there")]
    NotHeld { address: String },
    #[error("{address}: timed out")]
    Timeout { address: String },
    #[error("{0}")]
    Local(#[from] StoreError),
}

/// Part of a running attempt's stream.
pub struct LiveRead {
    pub bytes: bytes::Bytes,
    /// The stream's length so far.
    pub total: u64,
    /// The attempt's fence, `TERM.ATTEMPT`.
    pub attempt: String,
}

#[derive(Clone)]
pub struct BlobClient {
    inner: Client<Connector, Body>,
}

/// How long moving `size` bytes may take: a floor for the round trips, then 5 MB/s.
pub fn allowance(size: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(size / 5_000)
}

impl BlobClient {
    /// `identity`: this member's certificates (TLS, verifying the worker it reaches by the
    /// cluster CA); `None`: plain text.
    pub fn new(identity: Option<Arc<Identity>>) -> Self {
        let connector = Connector::new(identity, Alpn::Http1).to_workers().connect_timeout(Duration::from_secs(2));
        let inner = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        BlobClient { inner }
    }

    fn uri(address: &str, digest: &Digest) -> String {
        format!("http://{address}/v1/blobs/{}", digest.to_hex())
    }

    async fn send(
        &self,
        address: &str,
        request: Request<Body>,
        allowance: Duration,
    ) -> Result<hyper::Response<hyper::body::Incoming>, TransferError> {
        let remote = |why: String| TransferError::Remote { address: address.to_string(), why };
        match tokio::time::timeout(allowance, self.inner.request(request)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    why = format!("{why}: {cause}");
                    source = cause.source();
                }
                Err(remote(why))
            }
            Err(_) => Err(TransferError::Timeout { address: address.to_string() }),
        }
    }

    /// Copies a stored blob to the worker at `address` (nothing moves if it has it already).
    pub async fn put(&self, address: &str, store: &Store, file: &OutputFile) -> Result<(), TransferError> {
        let head = Request::builder()
            .method(Method::HEAD)
            .uri(Self::uri(address, &file.sha256))
            .body(Body::empty())
            .map_err(|e| TransferError::Remote { address: address.to_string(), why: e.to_string() })?;
        if self.send(address, head, allowance(0)).await?.status() == StatusCode::OK {
            return Ok(());
        }
        let source = tokio::fs::File::open(store.path(&file.sha256)).await.map_err(StoreError::from)?;
        let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(source, 256 * 1024));
        let put = Request::builder()
            .method(Method::PUT)
            .uri(Self::uri(address, &file.sha256))
            .header(hyper::header::CONTENT_LENGTH, file.size)
            .body(body)
            .map_err(|e| TransferError::Remote { address: address.to_string(), why: e.to_string() })?;
        let response = self.send(address, put, allowance(file.size)).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Err(TransferError::Remote {
            address: address.to_string(),
            why: format!("{status}: {}", String::from_utf8_lossy(&text).trim()),
        })
    }

    /// A running attempt's stream from `offset`, as the worker at `address` has it so far;
    /// `NotHeld` when no attempt of the task runs there.
    pub async fn live(
        &self,
        address: &str,
        task: flotilla_core::model::TaskId,
        stream: flotilla_core::workflow::LogStream,
        offset: u64,
    ) -> Result<LiveRead, TransferError> {
        let remote = |why: String| TransferError::Remote { address: address.to_string(), why };
        let slot = match task.slot {
            flotilla_core::model::TaskSlot::Array(i) => i.to_string(),
            flotilla_core::model::TaskSlot::Reduce => "reduce".to_string(),
        };
        let get = Request::builder()
            .method(Method::GET)
            .uri(format!("http://{address}/v1/live/{}/{slot}?stream={}&offset={offset}", task.job, stream.name()))
            .body(Body::empty())
            .map_err(|e| remote(e.to_string()))?;
        let response = self.send(address, get, allowance(crate::live::MAX_READ as u64)).await?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (total, attempt) = (header(crate::server::LIVE_TOTAL_HEADER), header(crate::server::LIVE_ATTEMPT_HEADER));
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(TransferError::NotHeld { address: address.to_string() }),
            status => return Err(remote(status.to_string())),
        }
        let bytes = response.into_body().collect().await.map_err(|e| remote(e.to_string()))?.to_bytes();
        let total = total.and_then(|t| t.parse().ok()).ok_or_else(|| remote("no stream length".to_string()))?;
        Ok(LiveRead { bytes, total, attempt: attempt.unwrap_or_default() })
    }

    /// A blob's bytes as the worker at `address` serves them (not checked: the caller hashes).
    pub async fn open(
        &self,
        address: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<hyper::Response<hyper::body::Incoming>, TransferError> {
        let get = Request::builder()
            .method(Method::GET)
            .uri(Self::uri(address, digest))
            .body(Body::empty())
            .map_err(|e| TransferError::Remote { address: address.to_string(), why: e.to_string() })?;
        let response = self.send(address, get, allowance(size)).await?;
        match response.status() {
            StatusCode::OK => Ok(response),
            StatusCode::NOT_FOUND => Err(TransferError::NotHeld { address: address.to_string() }),
            status => Err(TransferError::Remote { address: address.to_string(), why: status.to_string() }),
        }
    }

    /// A blob's bytes from the worker at `address`, hashed as they pass: a copy whose bytes
    /// do not match `digest` (or that ends short) ends the stream with an error instead of
    /// its last chunk, so whoever reads it never takes it for whole.
    pub async fn stream(
        &self,
        address: &str,
        digest: Digest,
        size: u64,
    ) -> Result<tokio_stream::wrappers::ReceiverStream<Result<bytes::Bytes, TransferError>>, TransferError> {
        let response = self.open(address, &digest, size).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let address = address.to_string();
        tokio::spawn(async move {
            use sha2::Digest as _;
            let mut hasher = sha2::Sha256::new();
            let mut body = response.into_body();
            let mut held: Option<bytes::Bytes> = None;
            let mut seen = 0u64;
            let remote = |why: String| TransferError::Remote { address: address.clone(), why };
            let end = loop {
                match tokio::time::timeout(allowance(size), body.frame()).await {
                    Err(_) => break Err(TransferError::Timeout { address: address.clone() }),
                    Ok(None) => break Ok(()),
                    Ok(Some(Err(e))) => break Err(remote(e.to_string())),
                    Ok(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else { continue };
                        hasher.update(&data);
                        seen += data.len() as u64;
                        // One chunk is held back until the next arrives: the last goes out
                        // only once the whole has been checked.
                        if let Some(previous) = held.replace(data) {
                            if tx.send(Ok(previous)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            let end = end.and_then(|()| {
                let got = Digest(hasher.finalize().into());
                if got == digest && seen == size {
                    Ok(())
                } else {
                    tracing::warn!(%address, blob = %digest.to_hex(), got = %got.to_hex(), bytes = seen, "a copy does not match its digest");
                    Err(remote(format!("copy of {} is corrupt ({seen} bytes, sha256 {})", digest.to_hex(), got.to_hex())))
                }
            });
            match end {
                Ok(()) => {
                    if let Some(last) = held {
                        let _ = tx.send(Ok(last)).await;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Copies a blob from the worker at `address` into `store`, refused unless its bytes
    /// match its digest.
    pub async fn fetch(&self, address: &str, store: &Store, file: &OutputFile) -> Result<(), TransferError> {
        let response = self.open(address, &file.sha256, file.size).await?;
        let mut writer = store.writer()?;
        let mut body = response.into_body();
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| TransferError::Remote { address: address.to_string(), why: e.to_string() })?;
                if let Ok(data) = frame.into_data() {
                    writer.write(&data)?;
                }
            }
            Ok::<(), TransferError>(())
        };
        match tokio::time::timeout(allowance(file.size), read).await {
            Ok(r) => r?,
            Err(_) => return Err(TransferError::Timeout { address: address.to_string() }),
        }
        writer.finish(Some(file.sha256))?;
        Ok(())
    }
}
