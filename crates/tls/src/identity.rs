//! A member's TLS identity: the cluster CA it trusts and its own certificate, loaded from a
//! certificates directory into rustls configs. The files are looked at every few seconds and
//! on SIGHUP; new connections use new files at once, and a bad file leaves the old identity
//! in place (with an error in the log), so a botched rotation never cuts a member off.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::authority::CA_CERT;
use crate::{Role, TlsError};

/// How often the files are looked at for a rotation (SIGHUP looks at once).
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The application protocol a client connection asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: worker sessions and Raft.
    H2,
    /// The JSON API.
    Http1,
}

pub struct Identity {
    dir: PathBuf,
    role: Role,
    current: RwLock<Arc<Loaded>>,
}

struct Loaded {
    stamp: Stamp,
    server: Option<Arc<ServerConfig>>,
    h2: Arc<ClientConfig>,
    http1: Arc<ClientConfig>,
}

/// What the files looked like when loaded: a change of any means a reload.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64)>>);

impl Identity {
    /// Loads `role`'s identity from `dir`. A client without its own certificate (only the
    /// CA, say) connects without one: its token is what it is allowed by.
    pub fn load(dir: &Path, role: Role) -> Result<Arc<Identity>, TlsError> {
        let loaded = build(dir, role)?;
        Ok(Arc::new(Identity { dir: dir.to_path_buf(), role, current: RwLock::new(Arc::new(loaded)) }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn role(&self) -> Role {
        self.role
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The config a master (or a worker, for the outputs it holds) serves with (`None` for
    /// clients).
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.loaded().server.clone()
    }

    pub fn client_config(&self, alpn: Alpn) -> Arc<ClientConfig> {
        let loaded = self.loaded();
        match alpn {
            Alpn::H2 => loaded.h2.clone(),
            Alpn::Http1 => loaded.http1.clone(),
        }
    }

    /// Reloads if a file changed; `Ok(true)` when it did. On an error the old identity stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        if stamp(&self.dir, self.role) == self.loaded().stamp {
            return Ok(false);
        }
        let loaded = build(&self.dir, self.role)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(true)
    }

    /// Reloads whenever the files change, and on SIGHUP, until the runtime ends.
    pub fn watch(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut failing = false;
            loop {
                let hangup = async {
                    match hangups.as_mut() {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(RELOAD_EVERY) => {}
                    _ = hangup => tracing::info!(dir = %me.dir.display(), "SIGHUP: looking at the certificates again"),
                }
                match me.reload() {
                    Ok(true) => {
                        failing = false;
                        tracing::info!(dir = %me.dir.display(), role = me.role.label(), "certificates reloaded");
                    }
                    Ok(false) => {}
                    // Said once per bad state, not every look.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!(error = %e, "new certificates not loaded; the previous ones stay in use");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

/// The name Flotilla's own clients verify a master by, whatever address they dialled.
pub fn master_name() -> ServerName<'static> {
    role_name(Role::Master)
}

/// The name a member of `role` is verified by when it serves.
pub fn role_name(role: Role) -> ServerName<'static> {
    ServerName::DnsName(rustls::pki_types::DnsName::try_from(role.name()).expect("a valid DNS name").to_owned())
}

/// The role a peer's certificate (already verified against the cluster CA) gives it.
pub fn role_of(chain: Option<&[CertificateDer<'_>]>) -> Option<Role> {
    let leaf = chain?.first()?;
    let parsed = ParsedCertificate::try_from(leaf).ok()?;
    Role::ALL.into_iter().find(|role| {
        let name = rustls::pki_types::DnsName::try_from(role.name()).expect("a valid DNS name");
        rustls::client::verify_server_name(&parsed, &ServerName::DnsName(name)).is_ok()
    })
}

fn files(dir: &Path, role: Role) -> [PathBuf; 3] {
    let (cert, key) = role.files();
    [dir.join(CA_CERT), dir.join(cert), dir.join(key)]
}

fn stamp(dir: &Path, role: Role) -> Stamp {
    Stamp(
        files(dir, role)
            .iter()
            .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect(),
    )
}

fn build(dir: &Path, role: Role) -> Result<Loaded, TlsError> {
    let stamp = stamp(dir, role);
    let [ca_path, cert_path, key_path] = files(dir, role);
    let parse = |path: &Path, why: String| TlsError::Parse { path: path.to_path_buf(), why };
    if !ca_path.exists() {
        return Err(parse(&ca_path, "no cluster CA here (create one with `flotilla certs init`)".into()));
    }
    let mut roots = RootCertStore::empty();
    // Every certificate in the file is trusted: during a CA rotation it holds the old and the new.
    for cert in CertificateDer::pem_file_iter(&ca_path).map_err(|e| parse(&ca_path, e.to_string()))? {
        let cert = cert.map_err(|e| parse(&ca_path, e.to_string()))?;
        roots.add(cert).map_err(|e| parse(&ca_path, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(parse(&ca_path, "holds no certificate".into()));
    }
    let own = if role == Role::Client && !cert_path.exists() {
        None
    } else {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .map_err(|e| parse(&cert_path, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| parse(&cert_path, e.to_string()))?;
        if chain.is_empty() {
            return Err(parse(&cert_path, "holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| parse(&key_path, e.to_string()))?;
        Some((chain, key))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = |e: rustls::Error| TlsError::Config(e.to_string());
    let roots = Arc::new(roots);
    let server = match (&own, role) {
        (Some((chain, key)), Role::Master | Role::Worker) => {
            // A master admits callers without a certificate (curl, the CLI with only a
            // token); one that shows a certificate must show one of this cluster's. A worker
            // serves the outputs it holds to other workers and masters only: a certificate of
            // this cluster is required.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            let verifier = if matches!(role, Role::Master) { verifier.allow_unauthenticated() } else { verifier };
            let verifier = verifier.build().map_err(|e| TlsError::Config(e.to_string()))?;
            let mut server = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(config)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| parse(&cert_path, format!("does not pair with {}: {e}", key_path.display())))?;
            server.alpn_protocols = match role {
                Role::Master => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                _ => vec![b"http/1.1".to_vec()],
            };
            Some(Arc::new(server))
        }
        _ => None,
    };
    let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(roots.clone());
        let mut client = match &own {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| parse(&cert_path, format!("does not pair with {}: {e}", key_path.display())))?,
            None => builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(client))
    };
    Ok(Loaded { stamp, server, h2: client(b"h2")?, http1: client(b"http/1.1")? })
}
