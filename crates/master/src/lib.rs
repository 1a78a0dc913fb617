//! A Flotilla master: one member of the Raft group that coordinates the cluster.
//!
//! ```text
//!            one listen address (HTTP/1.1 + h2c)
//!   ┌───────────────┬──────────────────────┬───────────────────┐
//!   │ /v1/* JSON    │ gRPC WorkerService   │ gRPC RaftService   │   auth: cluster token
//!   │ (api)         │ (sessions)           │ (raft_service)     │
//!   │ / and /ui/*   │                      │                    │
//!   │ (dashboard)   │                      │                    │
//!   └──────┬────────┴──────────┬───────────┴─────────┬─────────┘
//!          │ commands          │ commands            │ entries
//!          ▼                   ▼                     ▼
//!       proposer ──batches──▶ openraft ──applies──▶ ClusterState (flotilla-core)
//!          ▲                      │                      │ reads
//!          │ Propose      role    ▼                      ▼
//!       sessions (shell) ⇄ LeaderCore (flotilla-session): admission, reconcile, reports,
//!                                  liveness, scheduling rounds
//! ```
//!
//! Modules: [`config`], [`node`] (shared context), [`proposer`] (batching), [`api`] (client
//! API), [`sessions`] (the worker streams' shell around `LeaderCore`), [`leader`] (Raft role
//! changes, master reachability, Raft heartbeats), [`links`] (round trips to the other
//! masters), [`raft_service`] (peer RPC server), [`watchdog`] (quick
//! elections after a leader dies), [`auth`] (token check), [`metrics`] (Prometheus
//! exposition), [`dashboard`] (the live web dashboard).

pub mod api;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod leader;
pub mod links;
pub mod metrics;
pub mod node;
pub mod proposer;
pub mod raft_service;
pub mod sessions;
pub mod watchdog;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use flotilla_proto::grpc::raft_service_server::RaftServiceServer;
use flotilla_proto::grpc::worker_service_server::WorkerServiceServer;
use flotilla_raft::log_store::LogStore;
use flotilla_raft::network::{GrpcNetwork, MAX_MESSAGE_BYTES};
use flotilla_raft::state_machine::StateMachineStore;
use flotilla_raft::Raft;

pub use config::MasterConfig;
pub use node::Master;

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("{0}")]
    Config(String),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    LogStore(#[from] flotilla_raft::log_store::OpenError),
    #[error(transparent)]
    StateMachine(#[from] flotilla_raft::state_machine::OpenError),
    #[error("data in {dir} is corrupt: {reason}")]
    Corrupt { dir: std::path::PathBuf, reason: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// Runs a master until `shutdown` is cancelled.
pub async fn run(config: MasterConfig, shutdown: CancellationToken) -> Result<(), MasterError> {
    config.validate().map_err(MasterError::Config)?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| MasterError::DataDir { path: config.data_dir.clone(), source })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| MasterError::Bind { addr: config.listen, source })?;

    let (mut log_store, state_machine) = match open_stores(&config.data_dir) {
        Ok(stores) => stores,
        Err(StoreProblem::Other(e)) => return Err(e),
        Err(StoreProblem::Corrupt(reason)) => {
            // Never serve damaged data. If the group is running, move the damaged files aside
            // and start empty: the leader then catches this master up (log or snapshot).
            tracing::error!(dir = %config.data_dir.display(), %reason, "stored data is corrupt");
            if !peers_run_a_group(&config).await {
                return Err(MasterError::Corrupt {
                    dir: config.data_dir.clone(),
                    reason: format!("{reason}; no peer is running a group to rebuild from"),
                });
            }
            let aside = quarantine(&config.data_dir)
                .map_err(|source| MasterError::DataDir { path: config.data_dir.clone(), source })?;
            tracing::warn!(moved_to = %aside.display(), "damaged files moved aside; rebuilding from the peers");
            match open_stores(&config.data_dir) {
                Ok(stores) => stores,
                Err(StoreProblem::Other(e)) => return Err(e),
                Err(StoreProblem::Corrupt(reason)) => {
                    return Err(MasterError::Corrupt { dir: config.data_dir.clone(), reason })
                }
            }
        }
    };
    let pristine = log_store.is_pristine().await.map_err(|e| MasterError::Raft(e.to_string()))?;
    let log_bytes = log_store.bytes_written();
    let metrics = Arc::new(metrics::Metrics::new());
    {
        let metrics = metrics.clone();
        log_store.observe_writes(Box::new(move |took| metrics.observe_log_write(took)));
    }
    let shared = state_machine.shared();
    let raft_config = Arc::new(config.raft.to_config().map_err(|e| MasterError::Raft(e.to_string()))?);
    let network = GrpcNetwork::new(config.id, config.token.as_deref().map(Arc::from), &config.raft);
    let rtts = network.rtts.clone();
    let raft = Raft::new(config.id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| MasterError::Raft(e.to_string()))?;
    let master = Arc::new(
        Master::new(config.clone(), raft.clone(), shared, log_bytes, metrics, rtts).map_err(MasterError::Config)?,
    );

    let grpc = tonic::service::Routes::new(
        RaftServiceServer::new(raft_service::RaftSvc { raft: raft.clone(), contact: master.leader_contact.clone() })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(WorkerServiceServer::new(sessions::WorkerSvc { sessions: master.sessions.clone() }))
    .into_axum_router();
    let token: Option<Arc<str>> = config.token.as_deref().map(Arc::from);
    let app = api::router(master.clone())
        .merge(dashboard::public_router())
        .merge(dashboard::router(master.clone()))
        .merge(grpc)
        .fallback(api::fallback)
        .layer(axum::middleware::from_fn_with_state(token, auth::require_token));
    let server_stop = shutdown.clone();
    // No Nagle delay: small Raft and session messages must leave at once (a delayed ACK
    // otherwise costs up to 40 ms per exchange).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server =
        tokio::spawn(
            async move { axum::serve(listener, app).with_graceful_shutdown(server_stop.cancelled_owned()).await },
        );
    tracing::info!(id = config.id, listen = %config.listen, pristine, "master started");

    if pristine {
        initialize_if_new(&master).await;
    }
    tokio::spawn(master.sessions.clone().run(shutdown.clone()));
    tokio::spawn(leader::watch_leadership(master.clone(), shutdown.clone()));
    tokio::spawn(leader::beat(raft.clone(), config.raft.heartbeat, shutdown.clone()));
    tokio::spawn(links::probe(master.clone(), shutdown.clone()));
    tokio::spawn(watchdog::run(
        raft.clone(),
        config.id,
        config.raft.election_max,
        master.leader_contact.clone(),
        master.rtts.clone(),
        shutdown.clone(),
    ));

    tokio::select! {
        _ = shutdown.cancelled() => {}
        reason = raft_failure(&raft) => {
            // Raft stops by itself only on a fatal error, such as a failing disk.
            shutdown.cancel();
            return Err(MasterError::Raft(reason));
        }
    }
    tracing::info!("shutting down");
    let _ = raft.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(Err(e))) => Err(MasterError::Serve(e)),
        _ => Ok(()),
    }
}

enum StoreProblem {
    Corrupt(String),
    Other(MasterError),
}

fn open_stores(dir: &std::path::Path) -> Result<(LogStore, StateMachineStore), StoreProblem> {
    let log = LogStore::open(dir).map_err(|e| {
        if e.is_corruption() {
            StoreProblem::Corrupt(e.to_string())
        } else {
            StoreProblem::Other(e.into())
        }
    })?;
    let sm = StateMachineStore::open(dir).map_err(|e| {
        if e.is_corruption() {
            StoreProblem::Corrupt(e.to_string())
        } else {
            StoreProblem::Other(e.into())
        }
    })?;
    Ok((log, sm))
}

/// Whether another master of `--peers` reports an initialised group.
async fn peers_run_a_group(config: &MasterConfig) -> bool {
    let Ok(http) = flotilla_client::http::HttpClient::new(config.token.as_deref()) else { return false };
    for (id, address) in &config.peers {
        if *id == config.id {
            continue;
        }
        let answer = http.send(hyper::Method::GET, address, "/v1/node", None, Duration::from_secs(1)).await;
        if let Ok((status, body)) = answer {
            let info: Result<flotilla_proto::api::NodeInfo, _> = serde_json::from_slice(&body);
            if status.is_success() && info.is_ok_and(|i| i.term > 0) {
                return true;
            }
        }
    }
    false
}

/// Moves the store files into `DIR/corrupt-<millis>/` (the data dir itself may be a mount
/// point, so it is not renamed).
fn quarantine(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let aside = dir.join(format!("corrupt-{}", flotilla_proto::time::now_ms()));
    std::fs::create_dir_all(&aside)?;
    let files = std::iter::once("raft-log.redb").chain(flotilla_raft::state_machine::STATE_FILES);
    for name in files {
        let from = dir.join(name);
        if from.exists() {
            std::fs::rename(&from, aside.join(name))?;
        }
    }
    Ok(aside)
}

/// Resolves when the Raft node stops by itself, with the reason.
async fn raft_failure(raft: &Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "raft task ended".to_string();
        }
    }
}

/// A master with an empty store joins the group it finds; only when no peer reports an
/// existing group does it initialise one from `--peers`. Every fresh master of a new group
/// initialises with the same membership, which openraft allows; a master whose data was
/// wiped finds its peers running and waits to be caught up instead.
async fn initialize_if_new(master: &Master) {
    for (id, address) in &master.config.peers {
        if *id == master.config.id {
            continue;
        }
        if let Ok(info) = master.fetch_node_info(address, Duration::from_millis(300)).await {
            if info.term > 0 || info.last_log_index.is_some() {
                tracing::info!(peer = id, "joining the existing group");
                return;
            }
        }
    }
    let members: BTreeMap<u64, openraft::BasicNode> =
        master.config.peers.iter().map(|(id, addr)| (*id, openraft::BasicNode { addr: addr.clone() })).collect();
    match master.raft.initialize(members).await {
        Ok(()) => tracing::info!("initialised a new group from --peers"),
        Err(e) => tracing::info!(error = %e, "group already initialised"),
    }
}
