//! The `kubernetes` provider's client: the replica count of a worker StatefulSet, set through
//! the API server's `scale` subresource with the pod's service account (its token and CA), or
//! a token and CA named by `FLOTILLA_KUBE_TOKEN_FILE` and `FLOTILLA_KUBE_CA`.
//!
//! A StatefulSet's pods are `NAME-0`, `NAME-1`, …; scaling to N keeps ordinals `0..N` and
//! removes the highest first. So the pool names its workers after the pods (the worker's name
//! is its pod's, `--name $HOSTNAME`), grows by raising the count, and shrinks only from the
//! highest ordinals, each drained before the count is lowered.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::ProviderError;

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The path of a StatefulSet's scale subresource.
pub fn scale_path(namespace: &str, statefulset: &str) -> String {
    format!("/apis/apps/v1/namespaces/{namespace}/statefulsets/{statefulset}/scale")
}

/// The JSON merge patch that sets the replica count.
pub fn scale_patch(replicas: u32) -> String {
    format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#)
}

/// A StatefulSet pod's ordinal, from its name (`flotilla-worker-3` → 3).
pub fn ordinal(statefulset: &str, pod: &str) -> Option<u32> {
    pod.strip_prefix(statefulset)?.strip_prefix('-')?.parse().ok()
}

pub struct ApiServer {
    host: String,
    port: u16,
    token: String,
    tls: Arc<rustls::ClientConfig>,
}

fn files(what: &str, path: &std::path::Path, source: std::io::Error) -> ProviderError {
    ProviderError::Files {
        path: path.to_path_buf(),
        source: std::io::Error::new(source.kind(), format!("{what}: {source}")),
    }
}

impl ApiServer {
    /// `api`: `https://host:port`; none: the in-cluster server (`KUBERNETES_SERVICE_HOST`).
    pub fn connect_to(api: Option<&str>) -> Result<ApiServer, ProviderError> {
        let (host, port) = match api {
            Some(url) => {
                let rest = url.strip_prefix("https://").ok_or_else(|| {
                    ProviderError::Unsupported(format!("the API server must be https://HOST:PORT, not {url}"))
                })?;
                let rest = rest.trim_end_matches('/');
                match rest.rsplit_once(':') {
                    Some((h, p)) => (
                        h.trim_matches(['[', ']']).to_string(),
                        p.parse().map_err(|_| ProviderError::Unsupported(format!("bad port in {url}")))?,
                    ),
                    None => (rest.to_string(), 443),
                }
            }
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                    ProviderError::Unsupported("not in a pod (no KUBERNETES_SERVICE_HOST) and no --api given".into())
                })?;
                let port = std::env::var("KUBERNETES_SERVICE_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(443);
                (host, port)
            }
        };
        let token_path = std::env::var_os("FLOTILLA_KUBE_TOKEN_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT).join("token"));
        let ca_path = std::env::var_os("FLOTILLA_KUBE_CA")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT).join("ca.crt"));
        let token =
            std::fs::read_to_string(&token_path).map_err(|e| files("the service account token", &token_path, e))?;
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&ca_path).map_err(|e| {
            ProviderError::Unsupported(format!("cannot read the API server's CA {}: {e}", ca_path.display()))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| ProviderError::Unsupported(format!("bad CA {}: {e}", ca_path.display())))?;
            roots.add(cert).map_err(|e| ProviderError::Unsupported(format!("bad CA {}: {e}", ca_path.display())))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ProviderError::Unsupported(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ApiServer { host, port, token: token.trim().to_string(), tls: Arc::new(tls) })
    }

    /// Sets the StatefulSet's replica count.
    pub async fn scale(&self, namespace: &str, statefulset: &str, replicas: u32) -> Result<(), ProviderError> {
        let path = scale_path(namespace, statefulset);
        let (status, body) = self.call("PATCH", &path, scale_patch(replicas)).await?;
        if !(200..300).contains(&status) {
            return Err(ProviderError::Failed {
                what: format!("PATCH {path}"),
                status: format!("HTTP {status}"),
                output: body.chars().take(500).collect(),
            });
        }
        Ok(())
    }

    async fn call(&self, method: &str, path: &str, body: String) -> Result<(u16, String), ProviderError> {
        let what = || format!("{method} {path}");
        let io = |e: std::io::Error| ProviderError::Spawn { what: what(), source: e };
        let stream = tokio::time::timeout(
            crate::COMMAND_TIMEOUT,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| ProviderError::Timeout { what: what() })?
        .map_err(io)?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| ProviderError::Unsupported(format!("API server name {}: {e}", self.host)))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, stream).await.map_err(io)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| io(std::io::Error::other(e)))?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/merge-patch+json")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProviderError::Unsupported(e.to_string()))?;
        let answer = tokio::time::timeout(crate::COMMAND_TIMEOUT, async {
            let response = sender.send_request(request).await.map_err(|e| io(std::io::Error::other(e)))?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map_err(|e| io(std::io::Error::other(e)))?.to_bytes();
            Ok::<_, ProviderError>((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await
        .map_err(|_| ProviderError::Timeout { what: what() })??;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_call_names_the_statefulset_and_the_count() {
        assert_eq!(
            scale_path("batch", "flotilla-worker"),
            "/apis/apps/v1/namespaces/batch/statefulsets/flotilla-worker/scale"
        );
        assert_eq!(scale_patch(3), r#"{"spec":{"replicas":3}}"#);
        assert_eq!(ordinal("flotilla-worker", "flotilla-worker-12"), Some(12));
        assert_eq!(ordinal("flotilla-worker", "flotilla-worker"), None);
        assert_eq!(ordinal("flotilla-worker", "other-1"), None);
    }

    #[test]
    fn a_bad_api_address_is_refused_with_the_reason() {
        let e = ApiServer::connect_to(Some("http://k8s:6443")).err().expect("refused");
        assert!(e.to_string().contains("https://HOST:PORT"), "{e}");
    }
}
