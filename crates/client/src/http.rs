//! A small HTTP/1.1 JSON client on `hyper-util` (already part of the gRPC stack), with the
//! cluster token on every request, a connect timeout and a per-request timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_tls::{Alpn, Connector, Identity};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Other(String),
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, Full<Bytes>>,
    auth: Option<HeaderValue>,
}

impl HttpClient {
    /// `token`: the cluster token, sent as `Authorization: Bearer …`. `identity`: TLS with the
    /// cluster CA (and this member's certificate, if it has one); `None`: plain text.
    pub fn new(token: Option<&str>, identity: Option<Arc<Identity>>) -> Result<Self, String> {
        Self::with_connector(token, Connector::new(identity, Alpn::Http1))
    }

    /// Like [`HttpClient::new`], with connections made by `connector`.
    pub fn with_connector(token: Option<&str>, connector: Connector) -> Result<Self, String> {
        let auth = match token {
            Some(t) => Some(
                HeaderValue::from_str(&flotilla_proto::bearer(t.trim()))
                    .map_err(|_| "the token contains characters not allowed in an HTTP header".to_string())?,
            ),
            None => None,
        };
        let connector = connector.connect_timeout(Duration::from_millis(800));
        let inner = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(HttpClient { inner, auth })
    }

    /// A request to `http://{address}{path}` with the token, and a JSON body if given.
    fn request(
        &self,
        method: Method,
        address: &str,
        path: &str,
        json_body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let mut builder = Request::builder().method(method).uri(format!("http://{address}{path}"));
        if let Some(auth) = &self.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        if json_body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::from(json_body.unwrap_or_default())))
            .map_err(|e| HttpError::Other(format!("bad request for {address}{path}: {e}")))
    }

    /// Sends a request; a refused or unreachable connection is [`HttpError::Connect`].
    async fn respond(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, HttpError> {
        self.inner.request(request).await.map_err(|e| {
            if e.is_connect() {
                HttpError::Connect(error_chain(&e))
            } else {
                HttpError::Other(e.to_string())
            }
        })
    }

    /// `GET http://{address}{path}` with the body streamed into `dest` when the answer is a
    /// success (any other answer's body is returned, for its error). `timeout` bounds the
    /// whole transfer.
    pub async fn download(
        &self,
        address: &str,
        path: &str,
        dest: &std::path::Path,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        use tokio::io::AsyncWriteExt;
        let request = self.request(Method::GET, address, path, None)?;
        let exchange = async {
            let response = self.respond(request).await?;
            let status = response.status();
            let mut body = response.into_body();
            if !status.is_success() {
                let bytes = body.collect().await.map_err(|e| HttpError::Other(e.to_string()))?.to_bytes();
                return Ok((status, bytes));
            }
            let other = |e: std::io::Error| HttpError::Other(format!("{}: {e}", dest.display()));
            let mut file = tokio::fs::File::create(dest).await.map_err(other)?;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| HttpError::Other(e.to_string()))?;
                if let Some(data) = frame.data_ref() {
                    file.write_all(data).await.map_err(other)?;
                }
            }
            file.sync_all().await.map_err(other)?;
            Ok((status, Bytes::new()))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }

    /// Sends one request to `http://{address}{path}`; returns the status and the whole body.
    pub async fn send(
        &self,
        method: Method,
        address: &str,
        path: &str,
        json_body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        self.exchange(method, address, path, json_body, timeout).await.map(|a| (a.status, a.body))
    }

    /// Like [`HttpClient::send`], with the masters the answer named
    /// ([`flotilla_proto::api::MASTERS_HEADER`]).
    pub async fn exchange(
        &self,
        method: Method,
        address: &str,
        path: &str,
        json_body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        let request = self.request(method, address, path, json_body)?;
        let exchange = async {
            let response = self.respond(request).await?;
            let status = response.status();
            let masters = response
                .headers()
                .get(flotilla_proto::api::MASTERS_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect())
                .unwrap_or_default();
            let body = response.into_body().collect().await.map_err(|e| HttpError::Other(e.to_string()))?;
            Ok(Answer { status, masters, body: body.to_bytes() })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }
}

/// One HTTP answer: its status, the group's masters it named, and its body.
pub struct Answer {
    pub status: StatusCode,
    pub masters: Vec<String>,
    pub body: Bytes,
}

/// An error and its causes, one after another (hyper's own message alone says only "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
