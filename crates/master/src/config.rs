//! A master's configuration, as the CLI builds it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_raft::config::RaftTiming;

#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// This master's Raft id; must appear in `peers`.
    pub id: u64,
    /// Address to bind (peers, workers and clients all use it).
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Every master of the group: id -> address others reach it at.
    pub peers: BTreeMap<u64, String>,
    /// Cluster token every request must carry; required to listen beyond loopback.
    pub token: Option<String>,
    /// A worker silent for this long is declared lost and its tasks re-queued.
    pub worker_timeout: Duration,
    pub raft: RaftTiming,
    /// Where this master runs (e.g. zone=a, region=eu): shown in status, and checked so that
    /// no one zone holds a majority of the voting masters.
    pub labels: BTreeMap<String, String>,
    /// How this master finds its group on a first start.
    pub bootstrap: Bootstrap,
    /// TLS, with the cluster's certificates; `None`: plain text, which needs
    /// `insecure_plaintext` and a loopback address.
    pub tls: Option<TlsConfig>,
    /// Plain text was asked for explicitly (`--insecure-plaintext`).
    pub insecure_plaintext: bool,
    /// What one client may hold of this master's port (connections, streams, idle time).
    pub limits: flotilla_tls::listener::Limits,
}

/// TLS on the master's port and its connections to peers.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// The certificates directory (`flotilla certs init`).
    pub certs: PathBuf,
    /// Accept plain text too, and fall back to it towards peers that speak only plain text:
    /// while a running cluster moves to TLS.
    pub accept_plaintext: bool,
}

/// How a master with an empty data directory finds its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// A new group: `peers` lists every master, and each initialises it with the same list.
    Peers,
    /// A running group: ask these masters to add this one (it joins as a learner).
    Join(Vec<String>),
    /// A running group whose operator adds this master (`flotilla cluster add-master`).
    AwaitAdd,
}

impl MasterConfig {
    pub fn new(id: u64, listen: SocketAddr, data_dir: PathBuf, peers: BTreeMap<u64, String>) -> Self {
        MasterConfig {
            id,
            listen,
            data_dir,
            peers,
            token: None,
            worker_timeout: Duration::from_secs(3),
            raft: RaftTiming::default(),
            labels: BTreeMap::new(),
            bootstrap: Bootstrap::Peers,
            tls: None,
            insecure_plaintext: false,
            limits: flotilla_tls::listener::Limits::default(),
        }
    }

    /// How this master connects to its peers (`alpn`: gRPC or the JSON API): TLS with its
    /// `identity` (falling back to plain text while the cluster moves to TLS), or plain text.
    pub fn peer_connector(
        &self,
        identity: Option<&std::sync::Arc<flotilla_tls::Identity>>,
        alpn: flotilla_tls::Alpn,
    ) -> flotilla_tls::Connector {
        let fallback = self.tls.as_ref().is_some_and(|t| t.accept_plaintext);
        flotilla_tls::Connector::new(identity.cloned(), alpn).with_plain_fallback(fallback)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.peers.contains_key(&self.id) {
            return Err(format!(
                "--peers does not list this master's id {} (it lists {})",
                self.id,
                self.peers.keys().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        if self.tls.is_none() && !self.insecure_plaintext {
            return Err("this master has no certificates: give it --certs DIR (or FLOTILLA_CERTS=DIR; create them \
                 with `flotilla certs init --dir DIR`), or --insecure-plaintext for an experiment on a loopback \
                 address"
                .to_string());
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "refusing to serve plain text on {}: tokens and task commands would cross the network readable \
                 by anyone on the path. Give this master --certs DIR (`flotilla certs init`); --insecure-plaintext \
                 is for loopback addresses only",
                self.listen
            ));
        }
        if !self.listen.ip().is_loopback() && self.token.is_none() {
            return Err(format!(
                "refusing to listen on {} without a cluster token: anyone who reaches an open port of a \
                 job cluster can run code on every worker. Set --token-file FILE or FLOTILLA_TOKEN, or \
                 listen on a loopback address",
                self.listen
            ));
        }
        if self.token.as_ref().is_some_and(|t| t.trim().is_empty()) {
            return Err("the cluster token is empty".to_string());
        }
        if self.worker_timeout < Duration::from_millis(200) {
            return Err("--worker-timeout must be at least 200ms".to_string());
        }
        Ok(())
    }

    /// Interval at which workers are asked to heartbeat: three beats per timeout, so one
    /// delayed beat does not lose a worker.
    pub fn heartbeat_interval(&self) -> Duration {
        self.worker_timeout / 3
    }
}

/// Parses `1=host:port,2=host:port,3=host:port`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) =
            item.split_once('=').ok_or_else(|| format!("peer '{item}' is not of the form ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("peer id '{id}' is not a number"))?;
        let addr = addr.trim();
        if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(format!("peer address '{addr}' is not HOST:PORT"));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("peer id {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("--peers is empty".to_string());
    }
    if peers.len() % 2 == 0 {
        tracing::warn!(masters = peers.len(), "an even number of masters tolerates no more failures than one fewer");
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_garbage() {
        let p = parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002,3=localhost:7003").unwrap();
        assert_eq!(p.len(), 3);
        assert!(parse_peers("1=127.0.0.1").is_err());
        assert!(parse_peers("x=127.0.0.1:1").is_err());
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        assert!(parse_peers("").is_err());
    }

    #[test]
    fn open_ports_need_tls_and_a_token() {
        let peers = parse_peers("1=10.0.0.1:7001").unwrap();
        let mut c = MasterConfig::new(1, "0.0.0.0:7001".parse().unwrap(), "/tmp/x".into(), peers);
        assert!(c.validate().unwrap_err().contains("no certificates"));
        c.insecure_plaintext = true;
        assert!(c.validate().unwrap_err().contains("refusing to serve plain text"));
        c.insecure_plaintext = false;
        c.tls = Some(TlsConfig { certs: "/tmp/certs".into(), accept_plaintext: false });
        assert!(c.validate().unwrap_err().contains("token"));
        c.token = Some("secret".into());
        assert!(c.validate().is_ok());
        // On loopback, plain text is an explicit choice.
        let peers = parse_peers("1=127.0.0.1:7001").unwrap();
        let mut c = MasterConfig::new(1, "127.0.0.1:7001".parse().unwrap(), "/tmp/x".into(), peers);
        assert!(c.validate().is_err());
        c.insecure_plaintext = true;
        assert!(c.validate().is_ok());
    }
}
