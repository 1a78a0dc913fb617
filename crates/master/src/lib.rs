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
pub mod autoscale;
pub mod config;
pub mod dashboard;
pub mod leader;
pub mod links;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod outputs;
pub mod proposer;
pub mod raft_service;
pub mod releases;
pub mod schedules;
pub mod sessions;
pub mod tokens;
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
    #[error("cannot join the group: {0}")]
    Join(String),
    #[error("{0}")]
    Incompatible(String),
}

/// Runs a master until `shutdown` is cancelled.
pub async fn run(config: MasterConfig, shutdown: CancellationToken) -> Result<(), MasterError> {
    config.validate().map_err(MasterError::Config)?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| MasterError::DataDir { path: config.data_dir.clone(), source })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| MasterError::Bind { addr: config.listen, source })?;

    let identity = match &config.tls {
        Some(tls) => {
            let identity = flotilla_tls::Identity::load(&tls.certs, flotilla_tls::Role::Master)
                .map_err(|e| MasterError::Config(format!("--certs: {e}")))?;
            identity.watch();
            Some(identity)
        }
        None => None,
    };
    let (mut log_store, state_machine) = match open_stores(&config.data_dir) {
        Ok(stores) => stores,
        Err(StoreProblem::Other(e)) => return Err(e),
        Err(StoreProblem::Corrupt(reason)) => {
            // Never serve damaged data. If the group is running, move the damaged files aside
            // and start empty: the leader then catches this master up (log or snapshot).
            tracing::error!(dir = %config.data_dir.display(), %reason, "stored data is corrupt");
            if !peers_run_a_group(&config, identity.as_ref()).await {
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
    let peer_connector = config.peer_connector(identity.as_ref(), flotilla_tls::Alpn::H2);
    let network = GrpcNetwork::new(config.id, config.token.as_deref().map(Arc::from), peer_connector, &config.raft);
    let rtts = network.rtts.clone();
    let cluster = network.cluster.clone();
    let (incompatible, mut incompatible_rx) = tokio::sync::mpsc::channel::<String>(1);
    cluster.set(state_machine.shared().read().state.cluster_id());
    let raft = Raft::new(config.id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|e| MasterError::Raft(e.to_string()))?;
    let master = Arc::new(
        Master::new(config.clone(), raft.clone(), shared, log_bytes, metrics, rtts, identity.clone())
            .map_err(MasterError::Config)?,
    );

    let grpc = tonic::service::Routes::new(
        RaftServiceServer::new(raft_service::RaftSvc {
            raft: raft.clone(),
            contact: master.leader_contact.clone(),
            cluster: cluster.clone(),
            incompatible,
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(WorkerServiceServer::new(sessions::WorkerSvc { sessions: master.sessions.clone() }))
    .into_axum_router();
    let app = api::router(master.clone())
        .merge(dashboard::public_router())
        .merge(dashboard::router(master.clone()))
        .merge(grpc)
        .fallback(api::fallback)
        .layer(axum::middleware::from_fn_with_state(master.clone(), name_the_masters))
        .layer(axum::middleware::from_fn_with_state(master.clone(), auth::authenticate));
    // The server outlives `shutdown` by the leadership hand-over: the new leader needs this
    // master's vote.
    let server_stop = CancellationToken::new();
    let server_stopped = server_stop.clone();
    let transport = match (&config.tls, identity) {
        (Some(tls), Some(id)) if tls.accept_plaintext => flotilla_tls::Transport::Both(id),
        (Some(_), Some(id)) => flotilla_tls::Transport::Tls(id),
        _ => {
            tracing::warn!(
                listen = %config.listen,
                "INSECURE: serving plain text (--insecure-plaintext): tokens and task commands cross the \
                 network readable by anyone on the path"
            );
            flotilla_tls::Transport::Plain
        }
    };
    let security = match &transport {
        flotilla_tls::Transport::Tls(_) => "tls",
        flotilla_tls::Transport::Both(_) => "tls and plain text (moving to TLS)",
        flotilla_tls::Transport::Plain => "plain text",
    };
    // Every connection's service is the one router, told how the caller connected.
    let service_for = move |conn: flotilla_tls::Connection| {
        let app = app.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(conn);
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, request.map(axum::body::Body::new)).await }
        })
    };
    let server = tokio::spawn(flotilla_tls::listener::serve(
        listener,
        transport,
        config.limits.clone(),
        service_for,
        server_stopped.cancelled_owned(),
    ));
    tracing::info!(id = config.id, listen = %config.listen, pristine, security, "master started");

    let (join_failed, mut join_failure) = tokio::sync::mpsc::channel::<String>(1);
    match &config.bootstrap {
        config::Bootstrap::Peers if pristine => initialize_if_new(&master).await,
        config::Bootstrap::Peers => {}
        config::Bootstrap::Join(through) => {
            tokio::spawn(join(master.clone(), through.clone(), join_failed, shutdown.clone()));
        }
        config::Bootstrap::AwaitAdd if pristine => tracing::info!(
            id = config.id,
            "waiting to be added to a group (flotilla cluster add-master {}={})",
            config.id,
            master.address_of(config.id).unwrap_or_default()
        ),
        config::Bootstrap::AwaitAdd => {}
    }
    tokio::spawn(master.sessions.clone().run(shutdown.clone()));
    tokio::spawn(leader::watch_leadership(master.clone(), shutdown.clone()));
    tokio::spawn(follow_identity(master.clone(), cluster, shutdown.clone()));
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
            server_stop.cancel();
            return Err(MasterError::Raft(reason));
        }
        Some(reason) = incompatible_rx.recv() => {
            tracing::error!(%reason, "stopping");
            shutdown.cancel();
            server_stop.cancel();
            let _ = raft.shutdown().await;
            return Err(MasterError::Incompatible(reason));
        }
        Some(reason) = join_failure.recv() => {
            shutdown.cancel();
            server_stop.cancel();
            return Err(MasterError::Join(reason));
        }
    }
    hand_over_leadership(&master).await;
    server_stop.cancel();
    tracing::info!("shutting down");
    let _ = raft.shutdown().await;
    // The server lets open requests finish for a few seconds; a stuck one is not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(6), server).await;
    Ok(())
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

/// Whether another master of `--peers` (or `--join`) reports an initialised group.
async fn peers_run_a_group(config: &MasterConfig, identity: Option<&Arc<flotilla_tls::Identity>>) -> bool {
    let connector = config.peer_connector(identity, flotilla_tls::Alpn::Http1);
    let Ok(http) = flotilla_client::http::HttpClient::with_connector(config.token.as_deref(), connector) else {
        return false;
    };
    let mut addresses: Vec<&String> =
        config.peers.iter().filter(|(id, _)| **id != config.id).map(|(_, address)| address).collect();
    if let config::Bootstrap::Join(through) = &config.bootstrap {
        addresses.extend(through);
    }
    for address in addresses {
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

/// Names every master of the group in each answer ([`flotilla_proto::api::MASTERS_HEADER`]).
async fn name_the_masters(
    axum::extract::State(master): axum::extract::State<Arc<Master>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    let addresses: Vec<String> = master.members().into_iter().map(|(_, address)| address).collect();
    if let Ok(value) = axum::http::HeaderValue::from_str(&addresses.join(",")) {
        response.headers_mut().insert(flotilla_proto::api::MASTERS_HEADER, value);
    }
    response
}

/// `--join`: asks the group (through any of `through`) to add this master, until it votes.
/// Runs on every start, so a master restarted before it was promoted asks again. A refusal
/// (a reused id, a taken address) stops the master with the reason.
async fn join(
    master: Arc<Master>,
    through: Vec<String>,
    failed: tokio::sync::mpsc::Sender<String>,
    stop: CancellationToken,
) {
    let me = master.config.id;
    let address = master.address_of(me).unwrap_or_default();
    let client = match flotilla_client::Client::with_identity(
        through.clone(),
        master.config.token.as_deref(),
        master.identity.clone(),
    ) {
        Ok(c) => c.with_retry_for(Duration::from_secs(5)),
        Err(e) => {
            let _ = failed.send(e.to_string()).await;
            return;
        }
    };
    let mut asked = false;
    loop {
        let voter = master.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == me);
        if voter {
            if asked {
                tracing::info!(id = me, "joined the group; this master votes");
            }
            return;
        }
        if !asked {
            tracing::info!(id = me, %address, through = %through.join(","), "asking the group to add this master");
        }
        asked = true;
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = client.add_master(me, &address) => a,
        };
        match answer {
            Ok(_) => {}
            Err(flotilla_client::ClientError::Api { status, error }) if status == 400 || status == 409 => {
                if error.code == flotilla_proto::api::ApiErrorCode::Conflict && error.error.contains("in progress") {
                    tracing::info!("another membership change is in progress; asking again shortly");
                } else {
                    tracing::error!(error = %error.error, "the group refused to add this master");
                    let _ = failed.send(error.error).await;
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not ask the group to add this master; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// On a planned stop, a leader hands leadership to an up-to-date voter first, so the group
/// commits on without waiting out an election timeout.
async fn hand_over_leadership(master: &Master) {
    let leading = master.leader_id() == Some(master.config.id);
    let others =
        master.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v != master.config.id);
    if !leading || !others {
        return;
    }
    match tokio::time::timeout(Duration::from_secs(5), membership::transfer(master, None)).await {
        Ok(Ok(moved)) => {
            tracing::info!(to = moved.to, took_ms = moved.took_ms, "handed leadership over before stopping")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "could not hand leadership over before stopping"),
        Err(_) => tracing::warn!("handing leadership over took more than 5 s; stopping anyway"),
    }
}

/// Keeps the identity this master's RPCs carry and check in step with the replicated state.
async fn follow_identity(
    master: Arc<Master>,
    cluster: flotilla_raft::network::ClusterIdentity,
    stop: CancellationToken,
) {
    let mut applied = master.shared.subscribe();
    loop {
        let id = master.shared.read().state.cluster_id();
        if id != cluster.get() {
            tracing::info!(cluster = %format!("{id:016x}"), "cluster identity");
            cluster.set(id);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
        }
    }
}
