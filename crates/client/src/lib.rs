//! A client of the masters' HTTP/JSON API (`/v1/`), used by the CLI, the tests and the tools.
//!
//! It tries each master address, follows `421 not_leader` redirects to the leader, and while
//! no leader is elected (or the masters it tries are down) keeps retrying with backoff until
//! its deadline. Transport failures are kept apart from answers the cluster gave
//! ([`ClientError::Api`]), which are returned at once.

pub mod http;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use flotilla_proto::api::{
    ApiError, ApiErrorCode, Cancelled, Events, JobDetail, JobResult, JobSummary, NodeInfo, Retention, RetentionView,
    Status, SubmitRequest, Submitted, TaskResultView,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster answered with an error (bad input, unknown job, …).
    #[error("{}", .error.error)]
    Api { status: u16, error: ApiError },
    /// No master could answer before the deadline.
    #[error("no master answered ({tried}): {last}")]
    Unavailable { tried: String, last: String },
    #[error("unexpected answer from {address}: {detail}")]
    Protocol { address: String, detail: String },
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }

    /// The code of an answer the cluster gave; `None` for transport and client errors.
    pub fn code(&self) -> Option<ApiErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

pub struct Client {
    addresses: Vec<String>,
    /// Masters the answers named that were not given (the group changed since): tried after
    /// the given ones, so a client outlives the replacement of every master it was given.
    learned: Mutex<Vec<String>>,
    http: http::HttpClient,
    leader: Mutex<Option<String>>,
    /// How long to keep retrying while no master can answer.
    pub retry_for: Duration,
}

/// Per-attempt timeout of ordinary requests; a paused master must not stall the client long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Adding a master waits for it to catch up (the leader gives up after two minutes).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(130);

impl Client {
    /// `addresses`: `host:port` of one or more masters. `token`: the cluster token, if any.
    /// Plain text: see [`Client::with_identity`] for TLS.
    pub fn new(addresses: Vec<String>, token: Option<&str>) -> Result<Self, ClientError> {
        Self::with_identity(addresses, token, None)
    }

    /// Like [`Client::new`], over TLS when `identity` is given (the cluster CA, and a client
    /// certificate if the directory has one).
    pub fn with_identity(
        addresses: Vec<String>,
        token: Option<&str>,
        identity: Option<std::sync::Arc<flotilla_tls::Identity>>,
    ) -> Result<Self, ClientError> {
        let addresses: Vec<String> =
            addresses.into_iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
        if addresses.is_empty() {
            return Err(ClientError::Config("no master address given (--masters or FLOTILLA_MASTERS)".into()));
        }
        let http = http::HttpClient::new(token, identity).map_err(ClientError::Config)?;
        Ok(Client {
            addresses,
            learned: Mutex::new(Vec::new()),
            http,
            leader: Mutex::new(None),
            retry_for: Duration::from_secs(15),
        })
    }

    pub fn with_retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }

    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    fn leader_hint(&self) -> Option<String> {
        self.leader.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_leader_hint(&self, hint: Option<String>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = hint;
    }

    fn learn(&self, masters: Vec<String>) {
        if masters.is_empty() {
            return;
        }
        let fresh: Vec<String> = masters.into_iter().filter(|a| !self.addresses.contains(a)).collect();
        *self.learned.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// Every address to try, given ones first, then learned ones.
    pub fn known_addresses(&self) -> Vec<String> {
        let mut all = self.addresses.clone();
        all.extend(self.learned.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        all
    }

    /// Sends one request, following the leader and retrying until `retry_for` runs out.
    pub async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&B>,
        attempt_timeout: Duration,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(25);
        let mut last = String::from("no attempt made");
        loop {
            let hint = self.leader_hint();
            let mut order: Vec<String> = hint.iter().cloned().collect();
            order.extend(self.known_addresses().into_iter().filter(|a| hint.as_ref() != Some(a)));
            let mut redirects = 0;
            let mut i = 0;
            while i < order.len() {
                let address = order[i].clone();
                i += 1;
                let json = match body {
                    Some(b) => Some(serde_json::to_vec(b).map_err(|e| ClientError::Config(e.to_string()))?),
                    None => None,
                };
                let (status, bytes) =
                    match self.http.exchange(method.clone(), &address, path_and_query, json, attempt_timeout).await {
                        Ok(answer) => {
                            self.learn(answer.masters);
                            (answer.status, answer.body)
                        }
                        Err(e) => {
                            last = format!("{address}: {e}");
                            if self.leader_hint().as_deref() == Some(address.as_str()) {
                                self.set_leader_hint(None);
                            }
                            continue;
                        }
                    };
                if status.is_success() {
                    // Any master answers a read (followers ask the leader first), so only a
                    // write's answer, or the first answer at all, says where the leader is.
                    if method != Method::GET || self.leader_hint().is_none() {
                        self.set_leader_hint(Some(address.clone()));
                    }
                    return serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
                        address,
                        detail: format!("cannot decode the answer: {e}"),
                    });
                }
                let error: ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    let text = String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>();
                    ApiError::new(ApiErrorCode::Unknown, format!("HTTP {status}: {text}"))
                });
                match status {
                    StatusCode::MISDIRECTED_REQUEST => {
                        last = format!("{address}: {}", error.error);
                        if let Some(leader) = error.leader {
                            redirects += 1;
                            if redirects <= 3 {
                                // Ask the leader next.
                                order.insert(i, leader.clone());
                                self.set_leader_hint(Some(leader));
                            }
                        }
                    }
                    StatusCode::SERVICE_UNAVAILABLE => last = format!("{address}: {}", error.error),
                    _ => return Err(ClientError::Api { status: status.as_u16(), error }),
                }
            }
            if Instant::now() + backoff > deadline {
                return Err(ClientError::Unavailable { tried: self.known_addresses().join(","), last });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request::<(), T>(Method::GET, path, None, ATTEMPT_TIMEOUT).await
    }

    /// Submits a job; a `request_id` is added if absent, so a retry after a failover cannot
    /// create the job twice.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<Submitted, ClientError> {
        let mut request = request.clone();
        if request.request_id.is_none() {
            request.request_id = Some(new_request_id());
        }
        self.request(Method::POST, "/v1/jobs", Some(&request), ATTEMPT_TIMEOUT).await
    }

    /// One page of jobs, newest first.
    pub async fn jobs_page(
        &self,
        query: &flotilla_proto::api::JobQuery,
        stale: bool,
    ) -> Result<flotilla_proto::api::JobPage, ClientError> {
        self.get(&format!("/v1/jobs?{}{}", query.to_query(), stale_query(stale, '&'))).await
    }

    /// Every job the cluster keeps, newest first (all pages).
    pub async fn jobs(&self, stale: bool) -> Result<Vec<JobSummary>, ClientError> {
        let mut query = flotilla_proto::api::JobQuery::default();
        let mut all = Vec::new();
        loop {
            let page = self.jobs_page(&query, stale).await?;
            all.extend(page.jobs);
            match page.next {
                Some(next) => query.before = Some(next),
                None => return Ok(all),
            }
        }
    }

    pub async fn job(&self, id: u64, stale: bool) -> Result<JobDetail, ClientError> {
        self.get(&format!("/v1/jobs/{id}{}", stale_query(stale, '?'))).await
    }

    /// The job, once it has finished or after `wait` at the latest (a long poll).
    pub async fn job_when_finished(&self, id: u64, wait: Duration) -> Result<JobDetail, ClientError> {
        let path = format!("/v1/jobs/{id}?wait_ms={}", wait.as_millis());
        self.request::<(), _>(Method::GET, &path, None, wait + ATTEMPT_TIMEOUT).await
    }

    pub async fn results(
        &self,
        id: u64,
        offset: u64,
        limit: Option<u64>,
        stale: bool,
    ) -> Result<Vec<TaskResultView>, ClientError> {
        let mut q = format!("/v1/jobs/{id}/results?offset={offset}");
        if let Some(l) = limit {
            q.push_str(&format!("&limit={l}"));
        }
        q.push_str(&stale_query(stale, '&'));
        self.request::<(), _>(Method::GET, &q, None, Duration::from_secs(30)).await
    }

    pub async fn result(&self, id: u64, stale: bool) -> Result<JobResult, ClientError> {
        self.get(&format!("/v1/jobs/{id}/result{}", stale_query(stale, '?'))).await
    }

    pub async fn cancel(&self, id: u64) -> Result<Cancelled, ClientError> {
        self.request::<(), _>(Method::POST, &format!("/v1/jobs/{id}/cancel"), None, ATTEMPT_TIMEOUT).await
    }

    pub async fn status(&self, stale: bool) -> Result<Status, ClientError> {
        self.get(&format!("/v1/status{}", stale_query(stale, '?'))).await
    }

    /// Events after `after`; with `wait`, the master holds the request until one arrives.
    pub async fn events(&self, after: u64, limit: usize, wait: Duration, stale: bool) -> Result<Events, ClientError> {
        let path =
            format!("/v1/events?after={after}&limit={limit}&wait_ms={}{}", wait.as_millis(), stale_query(stale, '&'));
        self.request::<(), _>(Method::GET, &path, None, wait + ATTEMPT_TIMEOUT).await
    }

    /// The journal's retention setting and what it keeps now.
    pub async fn retention(&self, stale: bool) -> Result<RetentionView, ClientError> {
        self.get(&format!("/v1/events/retention{}", stale_query(stale, '?'))).await
    }

    /// Changes the journal's retention (committed through Raft; pruning is immediate).
    pub async fn set_retention(&self, retention: &Retention) -> Result<RetentionView, ClientError> {
        self.request(Method::PUT, "/v1/events/retention", Some(retention), ATTEMPT_TIMEOUT).await
    }

    /// Finished jobs' retention and what is kept now.
    pub async fn job_retention(&self, stale: bool) -> Result<flotilla_proto::api::JobRetentionView, ClientError> {
        self.get(&format!("/v1/jobs/retention{}", stale_query(stale, '?'))).await
    }

    /// Changes how long finished jobs stay (committed through Raft; removal is immediate).
    pub async fn set_job_retention(
        &self,
        retention: &flotilla_proto::api::JobRetention,
    ) -> Result<flotilla_proto::api::JobRetentionView, ClientError> {
        self.request(Method::PUT, "/v1/jobs/retention", Some(retention), ATTEMPT_TIMEOUT).await
    }

    /// Removes finished jobs now; safe to retry (a job removed already is reported as such).
    pub async fn purge(&self, jobs: &[u64]) -> Result<flotilla_proto::api::PurgeOutcome, ClientError> {
        let body = flotilla_proto::api::PurgeRequest { jobs: jobs.to_vec() };
        self.request(Method::POST, "/v1/jobs/purge", Some(&body), ATTEMPT_TIMEOUT).await
    }

    /// How jobs of the same priority share the workers.
    pub async fn scheduling(&self, stale: bool) -> Result<flotilla_proto::api::Scheduling, ClientError> {
        self.get(&format!("/v1/scheduling{}", stale_query(stale, '?'))).await
    }

    /// Changes how jobs of the same priority share the workers (committed through Raft).
    pub async fn set_scheduling(
        &self,
        scheduling: &flotilla_proto::api::Scheduling,
    ) -> Result<flotilla_proto::api::Scheduling, ClientError> {
        self.request(Method::PUT, "/v1/scheduling", Some(scheduling), ATTEMPT_TIMEOUT).await
    }

    pub async fn workers(&self, stale: bool) -> Result<Vec<flotilla_proto::api::WorkerView>, ClientError> {
        self.get(&format!("/v1/workers{}", stale_query(stale, '?'))).await
    }

    /// `action`: `cordon`, `uncordon`, or `drain` (with `deadline_ms`).
    pub async fn maintain_worker(
        &self,
        name: &str,
        action: &str,
        deadline_ms: Option<u64>,
    ) -> Result<flotilla_proto::api::WorkerView, ClientError> {
        let path = format!("/v1/workers/{name}/{action}");
        let body = flotilla_proto::api::DrainRequest { deadline_ms };
        self.request(Method::POST, &path, (action == "drain").then_some(&body), ATTEMPT_TIMEOUT).await
    }

    /// Saves a backup of the cluster's state, taken by the leader, to `dest` (the leader is
    /// found as for any request). The caller checks the file ([`flotilla_raft`'s `verify`]).
    pub async fn save_snapshot(&self, dest: &std::path::Path) -> Result<String, ClientError> {
        self.download("/v1/snapshot", dest, Duration::from_secs(600)).await
    }

    /// The outputs a job's tasks left: names, sizes, hashes and the workers holding them.
    pub async fn job_outputs(&self, id: u64) -> Result<flotilla_proto::api::JobOutputs, ClientError> {
        self.get(&format!("/v1/jobs/{id}/outputs")).await
    }

    /// One output file's bytes into `dest`, read by the leader from a worker holding a copy;
    /// `attempt` n starts at the n-th holder (ask again with the next after a copy failed the
    /// caller's check). Not checked here: the caller hashes the file.
    pub async fn fetch_output(
        &self,
        id: u64,
        sha256: &str,
        attempt: u32,
        dest: &std::path::Path,
        timeout: Duration,
    ) -> Result<String, ClientError> {
        self.download(&format!("/v1/jobs/{id}/outputs/{sha256}?attempt={attempt}"), dest, timeout).await
    }

    /// A `GET` whose answer is streamed into `dest`, from the leader (found as for any
    /// request); returns the address of the master that answered.
    /// A task's whole stdout or stderr (`stream`), into `dest`; 404 when it was not longer
    /// than the result keeps (the result has it all then).
    pub async fn task_log(
        &self,
        id: u64,
        task: &str,
        stream: &str,
        dest: &std::path::Path,
        timeout: Duration,
    ) -> Result<String, ClientError> {
        let task = percent_encode_segment(task);
        self.download(&format!("/v1/jobs/{id}/logs/{task}?stream={stream}"), dest, timeout).await
    }

    /// A running attempt's stream from `offset`, as its worker has it so far.
    pub async fn live_log(
        &self,
        id: u64,
        task: &str,
        stream: &str,
        offset: u64,
    ) -> Result<flotilla_proto::api::LiveLog, ClientError> {
        let task = percent_encode_segment(task);
        self.get(&format!("/v1/jobs/{id}/logs/{task}/live?stream={stream}&offset={offset}")).await
    }

    async fn download(&self, path: &str, dest: &std::path::Path, timeout: Duration) -> Result<String, ClientError> {
        let deadline = Instant::now() + self.retry_for;
        let mut last = String::from("no attempt made");
        loop {
            let hint = self.leader_hint();
            let mut order: Vec<String> = hint.iter().cloned().collect();
            order.extend(self.known_addresses().into_iter().filter(|a| hint.as_ref() != Some(a)));
            let (mut i, mut redirects) = (0, 0);
            while i < order.len() {
                let address = order[i].clone();
                i += 1;
                match self.http.download(&address, path, dest, timeout).await {
                    Ok((status, _)) if status.is_success() => return Ok(address),
                    Ok((status, bytes)) => {
                        let error: ApiError = serde_json::from_slice(&bytes)
                            .unwrap_or_else(|_| ApiError::new(ApiErrorCode::Unknown, format!("HTTP {status}")));
                        match (status, error.leader.clone()) {
                            (StatusCode::MISDIRECTED_REQUEST, Some(leader)) if redirects < 3 => {
                                redirects += 1;
                                order.insert(i, leader.clone());
                                self.set_leader_hint(Some(leader));
                                last = format!("{address}: {}", error.error);
                            }
                            (StatusCode::MISDIRECTED_REQUEST | StatusCode::SERVICE_UNAVAILABLE, _) => {
                                last = format!("{address}: {}", error.error)
                            }
                            _ => return Err(ClientError::Api { status: status.as_u16(), error }),
                        }
                    }
                    Err(e) => last = format!("{address}: {e}"),
                }
            }
            if Instant::now() > deadline {
                return Err(ClientError::Unavailable { tried: self.known_addresses().join(","), last });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The masters of the group, as the master that answers knows them.
    pub async fn members(&self) -> Result<Vec<flotilla_proto::api::MemberView>, ClientError> {
        self.get("/v1/cluster/members").await
    }

    /// Adds a master (it must be running); answers once it votes, which may take as long as
    /// it needs to catch up.
    pub async fn add_master(
        &self,
        id: u64,
        address: &str,
    ) -> Result<Vec<flotilla_proto::api::MemberView>, ClientError> {
        let request = flotilla_proto::api::AddMaster { id, address: address.to_string() };
        self.request(Method::POST, "/v1/cluster/members", Some(&request), MEMBERSHIP_TIMEOUT).await
    }

    pub async fn remove_master(&self, id: u64) -> Result<Vec<flotilla_proto::api::MemberView>, ClientError> {
        self.request::<(), _>(Method::DELETE, &format!("/v1/cluster/members/{id}"), None, MEMBERSHIP_TIMEOUT).await
    }

    pub async fn transfer_leadership(
        &self,
        to: Option<u64>,
    ) -> Result<flotilla_proto::api::LeadershipMoved, ClientError> {
        let request = flotilla_proto::api::TransferLeadership { to };
        self.request(Method::POST, "/v1/cluster/leader", Some(&request), Duration::from_secs(15)).await
    }

    /// Creates a named token; the answer holds the token, shown this once.
    pub async fn create_token(
        &self,
        name: &str,
        role: flotilla_proto::api::TokenRole,
    ) -> Result<flotilla_proto::api::TokenCreated, ClientError> {
        let request = flotilla_proto::api::CreateToken { name: name.to_string(), role };
        self.request(Method::POST, "/v1/tokens", Some(&request), Duration::from_secs(10)).await
    }

    pub async fn tokens(&self) -> Result<Vec<flotilla_proto::api::TokenView>, ClientError> {
        self.get("/v1/tokens").await
    }

    pub async fn revoke_token(&self, name: &str) -> Result<flotilla_proto::api::TokenRevoked, ClientError> {
        let path = format!("/v1/tokens/{}", percent_encode_segment(name));
        self.request::<(), _>(Method::DELETE, &path, None, Duration::from_secs(10)).await
    }

    pub async fn schedules(&self, stale: bool) -> Result<flotilla_proto::api::Schedules, ClientError> {
        self.get(&format!("/v1/schedules{}", stale_query(stale, '?'))).await
    }

    pub async fn add_schedule(
        &self,
        request: &flotilla_proto::api::ScheduleRequest,
    ) -> Result<flotilla_proto::api::ScheduleView, ClientError> {
        self.request(Method::POST, "/v1/schedules", Some(request), ATTEMPT_TIMEOUT).await
    }

    /// `action`: `pause` or `resume`.
    pub async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<flotilla_proto::api::ScheduleView, ClientError> {
        let action = if paused { "pause" } else { "resume" };
        let path = format!("/v1/schedules/{}/{action}", percent_encode_segment(name));
        self.request::<(), _>(Method::POST, &path, None, ATTEMPT_TIMEOUT).await
    }

    pub async fn remove_schedule(&self, name: &str) -> Result<flotilla_proto::api::ScheduleView, ClientError> {
        let path = format!("/v1/schedules/{}", percent_encode_segment(name));
        self.request::<(), _>(Method::DELETE, &path, None, ATTEMPT_TIMEOUT).await
    }

    pub async fn pools(&self, stale: bool) -> Result<flotilla_proto::api::Pools, ClientError> {
        self.get(&format!("/v1/autoscale{}", stale_query(stale, '?'))).await
    }

    pub async fn set_autoscale(
        &self,
        request: &flotilla_proto::api::AutoscaleRequest,
    ) -> Result<flotilla_proto::api::PoolView, ClientError> {
        self.request(Method::POST, "/v1/autoscale", Some(request), ATTEMPT_TIMEOUT).await
    }

    pub async fn resume_autoscale(&self, pool: &str) -> Result<flotilla_proto::api::PoolView, ClientError> {
        let path = format!("/v1/autoscale/{}/resume", percent_encode_segment(pool));
        self.request::<(), _>(Method::POST, &path, None, ATTEMPT_TIMEOUT).await
    }

    pub async fn remove_autoscale(&self, pool: &str) -> Result<flotilla_proto::api::PoolView, ClientError> {
        let path = format!("/v1/autoscale/{}", percent_encode_segment(pool));
        self.request::<(), _>(Method::DELETE, &path, None, ATTEMPT_TIMEOUT).await
    }

    /// One master's own view of itself (never redirected).
    pub async fn node(&self, address: &str) -> Result<NodeInfo, ClientError> {
        let (status, body) = self
            .http
            .send(Method::GET, address, "/v1/node", None, Duration::from_secs(1))
            .await
            .map_err(|e| ClientError::Unavailable { tried: address.to_string(), last: e.to_string() })?;
        if !status.is_success() {
            return Err(ClientError::Protocol { address: address.to_string(), detail: format!("HTTP {status}") });
        }
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol { address: address.to_string(), detail: e.to_string() })
    }
}

fn stale_query(stale: bool, sep: char) -> String {
    if stale {
        format!("{sep}stale=true")
    } else {
        String::new()
    }
}

/// A random id for idempotent submission.
pub fn new_request_id() -> String {
    use std::io::Read;
    let mut buf = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).is_err() {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        buf = (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A path segment with every byte outside `A-Za-z0-9._-` percent-encoded.
fn percent_encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
