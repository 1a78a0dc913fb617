//! A worker's own Prometheus metrics, served at `--metrics HOST:PORT` when given; the key
//! figures also travel to the leader with each heartbeat (`WorkerMsg::Stats`), so they show on
//! the masters' `/metrics` per worker as well.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

type Labels = Vec<(String, String)>;

pub struct WorkerMetrics {
    registry: Registry,
    started: Counter,
    finished: Family<Labels, Counter>,
    spawn_seconds: Histogram,
    rtt_seconds: Histogram,
    pub running: Gauge,
    pub queued: Gauge,
    pub cpus: Gauge,
    pub queue_depth: Gauge,
    pub connected: Gauge,
    pub sessions: Counter,
    spawn_micros_sum: AtomicU64,
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("flotilla_worker");
        let spawn_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 14));
        let rtt_seconds = Histogram::new(exponential_buckets(0.000_05, 3.0, 11));
        let m = WorkerMetrics {
            registry: Registry::default(),
            started: Counter::default(),
            finished: Family::default(),
            spawn_seconds: spawn_seconds.clone(),
            rtt_seconds: rtt_seconds.clone(),
            running: Gauge::default(),
            queued: Gauge::default(),
            cpus: Gauge::default(),
            queue_depth: Gauge::default(),
            connected: Gauge::default(),
            sessions: Counter::default(),
            spawn_micros_sum: AtomicU64::new(0),
        };
        r.register("tasks_started", "Task processes started", m.started.clone());
        r.register(
            "tasks_finished",
            "Task attempts ended, by outcome (succeeded, failed, spawn_error, stopped)",
            m.finished.clone(),
        );
        r.register_with_unit("spawn", "Time to start a task's process", Unit::Seconds, spawn_seconds);
        r.register_with_unit(
            "heartbeat_rtt",
            "Round trip of the session with the leader (heartbeat echo)",
            Unit::Seconds,
            rtt_seconds,
        );
        r.register("running_tasks", "Task processes running now", m.running.clone());
        r.register("queued_tasks", "Assigned tasks waiting for a free cpu", m.queued.clone());
        r.register("cpus", "Cpus this worker offers", m.cpus.clone());
        r.register("queue_depth", "Queue depth this worker asks the masters for", m.queue_depth.clone());
        r.register("connected", "1 while a leader has welcomed this worker", m.connected.clone());
        r.register("sessions", "Sessions opened with a leader", m.sessions.clone());
        WorkerMetrics { registry: root, ..m }
    }

    pub fn observe_spawn(&self, took: Duration) {
        self.started.inc();
        self.spawn_seconds.observe(took.as_secs_f64());
        self.spawn_micros_sum.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn observe_rtt(&self, rtt: Duration) {
        self.rtt_seconds.observe(rtt.as_secs_f64());
    }

    pub fn observe_end(&self, outcome: &str) {
        self.finished.get_or_create(&vec![("outcome".to_string(), outcome.to_string())]).inc();
    }

    /// (processes started, total microseconds spent starting them): reported to the leader.
    pub fn spawn_totals(&self) -> (u64, u64) {
        (self.started.get(), self.spawn_micros_sum.load(Ordering::Relaxed))
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        flotilla_proto::exposition::to_prometheus_text(&out)
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<WorkerMetrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app =
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    ([(axum::http::header::CONTENT_TYPE, flotilla_proto::exposition::CONTENT_TYPE)], metrics.render())
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Binds the metrics address early so a bad one is reported at start-up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
