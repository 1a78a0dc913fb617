//! The HTTP face of a worker's store: `GET`/`HEAD /v1/blobs/{sha256}` reads a blob,
//! `PUT /v1/blobs/{sha256}` stores a copy (refused unless its bytes match the name), and
//! `GET /v1/live/{job}/{task}?stream=&offset=` reads a running attempt's stream so far.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use flotilla_core::workflow::Digest;
use flotilla_tls::{Connection, Peer, Role};
use tokio_stream::StreamExt;

use crate::live::LiveLogs;
use crate::store::{Store, StoreError};

/// Headers of a live read: the stream's length so far, and the attempt's fence.
pub const LIVE_TOTAL_HEADER: &str = "x-flotilla-log-total";
pub const LIVE_ATTEMPT_HEADER: &str = "x-flotilla-attempt";

/// The routes, for [`serve`] (and tests).
pub fn router(store: Arc<Store>, live: Arc<LiveLogs>) -> Router {
    Router::new()
        .route("/v1/blobs/{digest}", get(read).put(write))
        .with_state(store)
        .merge(Router::new().route("/v1/live/{job}/{task}", get(read_live)).with_state(live))
}

/// Serves `store` and the running attempts' streams on `listener` until `stop` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    transport: flotilla_tls::Transport,
    store: Arc<Store>,
    live: Arc<LiveLogs>,
    stop: impl std::future::Future<Output = ()>,
) {
    let app = router(store, live);
    let service_for = move |conn: Connection| {
        let app = app.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(conn);
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, request.map(Body::new)).await }
        })
    };
    flotilla_tls::listener::serve(listener, transport, flotilla_tls::listener::Limits::default(), service_for, stop)
        .await;
}

/// Masters and workers of the cluster (shown by their certificates) may read and write; over
/// plain text there is nothing to tell callers apart by.
fn admitted(conn: Option<&Connection>) -> bool {
    match conn.map(|c| c.peer) {
        Some(Peer::Tls(Some(Role::Master | Role::Worker))) | Some(Peer::Plain) | None => true,
        Some(Peer::Tls(_)) => false,
    }
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    (status, why.into()).into_response()
}

/// A running attempt's stream from `offset` (up to [`crate::live::MAX_READ`] bytes); `404`
/// when no attempt of the task runs here.
async fn read_live(
    State(live): State<Arc<LiveLogs>>,
    Path((job, task)): Path<(u64, String)>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    conn: Option<Extension<Connection>>,
) -> Response {
    use flotilla_core::model::{TaskId, TaskSlot};
    use flotilla_core::workflow::LogStream;
    if !admitted(conn.as_deref()) {
        return refuse(StatusCode::FORBIDDEN, "only the cluster's masters and workers read logs here");
    }
    let slot = match task.as_str() {
        "reduce" => TaskSlot::Reduce,
        i => match i.parse() {
            Ok(i) => TaskSlot::Array(i),
            Err(_) => return refuse(StatusCode::BAD_REQUEST, "task must be an index or 'reduce'"),
        },
    };
    let stream = match q.get("stream").map(String::as_str) {
        None | Some("stdout") => LogStream::Stdout,
        Some("stderr") => LogStream::Stderr,
        Some(_) => return refuse(StatusCode::BAD_REQUEST, "stream must be stdout or stderr"),
    };
    let offset = match q.get("offset").map(|o| o.parse::<u64>()) {
        None => 0,
        Some(Ok(o)) => o,
        Some(Err(_)) => return refuse(StatusCode::BAD_REQUEST, "offset must be a byte count"),
    };
    let Some(attempt) = live.get(TaskId { job, slot }) else {
        return refuse(StatusCode::NOT_FOUND, "no attempt of that task runs here");
    };
    let read = tokio::task::spawn_blocking(move || {
        let fence = attempt.fence;
        attempt.read(stream, offset).map(|r| (r, fence))
    })
    .await;
    match read {
        Ok(Ok(((bytes, total), fence))) => (
            [
                (axum::http::HeaderName::from_static(LIVE_TOTAL_HEADER), total.to_string()),
                (axum::http::HeaderName::from_static(LIVE_ATTEMPT_HEADER), format!("{}.{}", fence.term, fence.attempt)),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn read(
    State(store): State<Arc<Store>>,
    Path(digest): Path<String>,
    method: axum::http::Method,
    conn: Option<Extension<Connection>>,
) -> Response {
    if !admitted(conn.as_deref()) {
        return refuse(StatusCode::FORBIDDEN, "only the cluster's masters and workers read outputs here");
    }
    let Some(digest) = Digest::parse(&digest) else {
        return refuse(StatusCode::BAD_REQUEST, "not a SHA-256 digest");
    };
    let file = match tokio::fs::File::open(store.path(&digest)).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A read (not a sender's HEAD asking whether to send it) is of a copy someone
            // thinks is here: it is not, and the leader should stop counting it.
            if method == axum::http::Method::GET {
                store.report_missing(&digest);
            }
            return refuse(StatusCode::NOT_FOUND, "not held here");
        }
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(checked(store, digest, file));
    ([(header::CONTENT_LENGTH, len.to_string())], body).into_response()
}

/// A stored blob's bytes, hashed as they go: if they do not match the blob's name the
/// stream ends with an error in place of its last chunk (the reader sees a cut-off body,
/// never a whole one: the length was announced), and the blob is discarded and reported
/// ([`Store::discard_corrupt`]).
fn checked(
    store: Arc<Store>,
    digest: Digest,
    file: tokio::fs::File,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<bytes::Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        let mut held: Option<bytes::Bytes> = None;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => {
                    hasher.update(&chunk);
                    if let Some(previous) = held.replace(chunk) {
                        if tx.send(Ok(previous)).await.is_err() {
                            return; // the reader went away
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        if Digest(hasher.finalize().into()) == digest {
            if let Some(last) = held {
                let _ = tx.send(Ok(last)).await;
            }
            return;
        }
        store.discard_corrupt(&digest);
        let damaged = std::io::Error::new(std::io::ErrorKind::InvalidData, "the stored copy is damaged");
        let _ = tx.send(Err(damaged)).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
async fn write(
    State(store): State<Arc<Store>>,
    Path(digest): Path<String>,
    conn: Option<Extension<Connection>>,
    body: Body,
) -> Response {
    if !admitted(conn.as_deref()) {
        return refuse(StatusCode::FORBIDDEN, "only the cluster's masters and workers store outputs here");
    }
    let Some(digest) = Digest::parse(&digest) else {
        return refuse(StatusCode::BAD_REQUEST, "not a SHA-256 digest");
    };
    if store.contains(&digest) {
        store.touch(&digest);
        return StatusCode::OK.into_response();
    }
    let mut writer = match store.writer() {
        Ok(w) => w,
        Err(e) => return stored_error(e),
    };
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("the copy was cut off: {e}")),
        };
        if let Err(e) = writer.write(&chunk) {
            return stored_error(e);
        }
    }
    match writer.finish(Some(digest)) {
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(e) => stored_error(e),
    }
}

fn stored_error(e: StoreError) -> Response {
    match e {
        StoreError::DiskFull => refuse(StatusCode::INSUFFICIENT_STORAGE, "this worker's disk is full"),
        StoreError::Mismatch { .. } => refuse(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        other => refuse(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}
