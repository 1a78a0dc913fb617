//! Autoscaling providers: what starts and stops the workers of a pool.
//!
//! The leader decides (`flotilla_core::autoscale::plan`) and commits each decision before a
//! provider is asked; a provider only carries it out and says how it went. Every provider
//! starts the same program, `flotilla worker --exit-when-drained` with the pool's labels, so a
//! scale-in is a drain the worker ends by exiting:
//!
//! - [`ProviderSpec::Local`]: child processes of the leading master, on its machine. They get
//!   SIGTERM (and drain) if that master's process dies.
//! - [`ProviderSpec::Command`]: the user's commands under `sh -c`, told what to start or stop
//!   in `FLOTILLA_*` variables.
//! - [`ProviderSpec::Slurm`]: one `sbatch` job per worker; a time limit makes Slurm signal the
//!   worker early enough for it to drain.
//! - [`ProviderSpec::Kubernetes`]: the replica count of a worker StatefulSet, through the API
//!   server ([`kubernetes`]).

pub mod kubernetes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use flotilla_core::autoscale::ProviderSpec;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How long a provider's command (`sbatch`, `scancel`, a user's script) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(50);
/// Bytes of a failed command's output kept in its error.
const ERROR_TAIL: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    Failed { what: String, status: String, output: String },
    #[error("{what} did not finish within {} s", COMMAND_TIMEOUT.as_secs())]
    Timeout { what: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot prepare {path}: {source}")]
    Files {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What every worker a provider starts is told: where the masters are and how to reach them.
#[derive(Clone, Debug)]
pub struct WorkerTemplate {
    /// The `flotilla` program workers run.
    pub exe: PathBuf,
    pub masters: Vec<String>,
    /// The cluster's certificates directory (TLS), if it has one.
    pub certs: Option<PathBuf>,
    /// The cluster token for a plain-text cluster that has one; passed in the environment.
    pub token: Option<String>,
    /// Local workers' data directories, and every provider's logs, go under here.
    pub dir: PathBuf,
}

impl WorkerTemplate {
    /// `flotilla worker --name NAME …` for one worker of a pool (without the program).
    pub fn args(&self, name: &str, request: &LaunchRequest, drain_deadline: Option<Duration>) -> Vec<String> {
        let mut args = vec!["worker".to_string(), "--name".to_string(), name.to_string()];
        args.extend(self.common_args(request, drain_deadline));
        args
    }

    /// What every worker of the pool is started with, beside its name.
    pub fn common_args(&self, request: &LaunchRequest, drain_deadline: Option<Duration>) -> Vec<String> {
        let mut args = vec!["--masters".to_string(), self.masters.join(","), "--exit-when-drained".to_string()];
        if !request.labels.is_empty() {
            let labels: Vec<String> = request.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            args.extend(["--labels".to_string(), labels.join(",")]);
        }
        if let Some(cpus) = request.cpus {
            args.extend(["--cpus".to_string(), cpus.to_string()]);
        }
        if let Some(certs) = &self.certs {
            args.extend(["--certs".to_string(), certs.display().to_string()]);
        }
        if let Some(d) = drain_deadline {
            args.extend(["--drain-deadline".to_string(), format!("{}s", d.as_secs().max(1))]);
        }
        args
    }

    fn log_file(&self, file: &str) -> Result<std::fs::File, ProviderError> {
        let dir = self.dir.join("logs");
        std::fs::create_dir_all(&dir).map_err(|source| ProviderError::Files { path: dir.clone(), source })?;
        let path = dir.join(file);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| ProviderError::Files { path, source })
    }
}

/// Workers to start for a pool.
#[derive(Clone, Debug)]
pub struct LaunchRequest {
    pub pool: String,
    pub names: Vec<String>,
    pub cpus: Option<u32>,
    pub labels: BTreeMap<String, String>,
    /// `kubernetes`: the StatefulSet's replica count once these have started.
    pub replicas: Option<u32>,
}

/// What the provider calls a worker it started (a process id, a Slurm job id), if anything.
pub type Handle = Option<String>;

/// One pool's provider, kept by the leader while the pool's provider settings stay the same.
#[derive(Debug)]
pub struct Provider {
    spec: ProviderSpec,
    template: WorkerTemplate,
    /// Local workers this process started, by name (their process ids).
    children: Mutex<HashMap<String, u32>>,
}

impl Provider {
    pub fn new(spec: ProviderSpec, template: WorkerTemplate) -> Self {
        Provider { spec, template, children: Mutex::new(HashMap::new()) }
    }

    pub fn spec(&self) -> &ProviderSpec {
        &self.spec
    }

    /// Starts the named workers; one answer per name, in order.
    pub async fn launch(&self, request: &LaunchRequest) -> Vec<(String, Result<Handle, ProviderError>)> {
        match &self.spec {
            ProviderSpec::Local => {
                request.names.iter().map(|name| (name.clone(), self.start_local(name, request))).collect()
            }
            ProviderSpec::Command { add, .. } => {
                let result = self.run_add(add, request).await;
                match result {
                    Ok(handles) => request.names.iter().map(|n| (n.clone(), Ok(handles.get(n).cloned()))).collect(),
                    Err(e) => {
                        let text = e.to_string();
                        let mut answers = Vec::with_capacity(request.names.len());
                        let mut first = Some(e);
                        for name in &request.names {
                            let err = first.take().unwrap_or_else(|| ProviderError::Unsupported(text.clone()));
                            answers.push((name.clone(), Err(err)));
                        }
                        answers
                    }
                }
            }
            ProviderSpec::Slurm { partition, time_limit_min, args } => {
                let mut answers = Vec::with_capacity(request.names.len());
                for name in &request.names {
                    let r = self.sbatch(name, request, partition.as_deref(), *time_limit_min, args).await;
                    answers.push((name.clone(), r));
                }
                answers
            }
            ProviderSpec::Kubernetes { api, namespace, statefulset } => {
                let replicas = request.replicas.unwrap_or(request.names.len() as u32);
                let scaled = match kubernetes::ApiServer::connect_to(api.as_deref()) {
                    Ok(server) => server.scale(namespace, statefulset, replicas).await,
                    Err(e) => Err(e),
                };
                match scaled {
                    Ok(()) => request.names.iter().map(|n| (n.clone(), Ok(None))).collect(),
                    Err(e) => {
                        let text = e.to_string();
                        request
                            .names
                            .iter()
                            .map(|n| (n.clone(), Err(ProviderError::Unsupported(text.clone()))))
                            .collect()
                    }
                }
            }
        }
    }

    /// Stops (or cancels) a worker it started; stopping one that is gone already is no error.
    /// `replicas`: for `kubernetes`, the StatefulSet's count without it.
    pub async fn remove(
        &self,
        pool: &str,
        name: &str,
        handle: Option<&str>,
        replicas: Option<u32>,
    ) -> Result<(), ProviderError> {
        match &self.spec {
            ProviderSpec::Local => {
                self.stop_local(name, handle);
                Ok(())
            }
            ProviderSpec::Command { remove, .. } => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(remove)
                    .env("FLOTILLA_POOL", pool)
                    .env("FLOTILLA_WORKER_NAME", name)
                    .env("FLOTILLA_WORKER_HANDLE", handle.unwrap_or(""));
                run("the remove command", command).await.map(|_| ())
            }
            ProviderSpec::Slurm { .. } => {
                let mut command = Command::new("scancel");
                match handle {
                    Some(job) => command.arg(job),
                    None => command.arg("--name").arg(name),
                };
                run("scancel", command).await.map(|_| ())
            }
            ProviderSpec::Kubernetes { api, namespace, statefulset } => {
                let server = kubernetes::ApiServer::connect_to(api.as_deref())?;
                server.scale(namespace, statefulset, replicas.unwrap_or(0)).await
            }
        }
    }

    /// Of these launches (name, handle) not joined yet, those whose process or Slurm job has
    /// ended; `None` when the provider cannot tell (the command provider, or `squeue` failed).
    pub async fn vanished(&self, launches: &[(String, String)]) -> Option<std::collections::BTreeSet<String>> {
        match &self.spec {
            ProviderSpec::Local => Some(
                launches
                    .iter()
                    .filter(|(name, pid)| !pid.parse().is_ok_and(|pid| is_worker_named(pid, name)))
                    .map(|(name, _)| name.clone())
                    .collect(),
            ),
            ProviderSpec::Slurm { .. } => {
                let mut command = Command::new("squeue");
                command.args(["-h", "-o", "%i"]);
                let out = run("squeue", command).await.ok()?;
                let queued: std::collections::HashSet<&str> = out.lines().map(str::trim).collect();
                Some(
                    launches
                        .iter()
                        .filter(|(_, job)| !queued.contains(job.as_str()))
                        .map(|(name, _)| name.clone())
                        .collect(),
                )
            }
            ProviderSpec::Command { .. } | ProviderSpec::Kubernetes { .. } => None,
        }
    }

    fn start_local(&self, name: &str, request: &LaunchRequest) -> Result<Handle, ProviderError> {
        let data = self.template.dir.join(name);
        std::fs::create_dir_all(&data).map_err(|source| ProviderError::Files { path: data.clone(), source })?;
        let log = self.template.log_file(&format!("{name}.log"))?;
        let err = log.try_clone().map_err(|source| ProviderError::Files { path: data.clone(), source })?;
        let mut command = Command::new(&self.template.exe);
        command.args(self.template.args(name, request, None)).arg("--data-dir").arg(&data);
        self.environment(&mut command);
        command.stdin(Stdio::null()).stdout(log).stderr(err);
        let parent = std::process::id();
        // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid, _exit).
        // The worker is told (SIGTERM: it drains) when the master that started it dies; if that
        // happened before prctl took effect, it leaves at once.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|source| ProviderError::Spawn { what: self.template.exe.display().to_string(), source })?;
        let pid = child.id();
        if let Some(pid) = pid {
            lock(&self.children).insert(name.to_string(), pid);
        }
        let name = name.to_string();
        // Reaped when it exits, whoever stopped it.
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => tracing::info!(worker = %name, %status, "autoscaled worker exited"),
                Err(e) => tracing::warn!(worker = %name, error = %e, "cannot wait for an autoscaled worker"),
            }
        });
        Ok(pid.map(|p| p.to_string()))
    }

    /// A local worker is stopped by its process id, and only if that process is still the
    /// worker of that name (a process id is reused once its process is gone).
    fn stop_local(&self, name: &str, handle: Option<&str>) {
        let known = lock(&self.children).remove(name);
        let Some(pid) = known.or_else(|| handle.and_then(|h| h.parse().ok())) else { return };
        if is_worker_named(pid, name) {
            // SAFETY: kill(2) on a process whose command line names this worker.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }

    fn environment(&self, command: &mut Command) {
        command.env_remove("FLOTILLA_TOKEN").env_remove("FLOTILLA_TOKEN_FILE").env_remove("FLOTILLA_CERTS");
        if let Some(token) = &self.template.token {
            command.env("FLOTILLA_TOKEN", token);
        }
    }

    /// Runs the user's add command; its standard output may name a handle for each worker
    /// (`NAME HANDLE` lines).
    async fn run_add(&self, add: &str, request: &LaunchRequest) -> Result<HashMap<String, String>, ProviderError> {
        let mut command = Command::new("sh");
        command.arg("-c").arg(add);
        self.environment(&mut command);
        command
            .env("FLOTILLA_POOL", &request.pool)
            .env("FLOTILLA_WORKER_NAMES", request.names.join(" "))
            .env("FLOTILLA_WORKER_COUNT", request.names.len().to_string())
            .env("FLOTILLA_MASTERS", self.template.masters.join(","))
            .env("FLOTILLA_EXE", &self.template.exe)
            .env("FLOTILLA_WORKER_ARGS", shell_words(&self.template.common_args(request, None)));
        if let Some(certs) = &self.template.certs {
            command.env("FLOTILLA_CERTS", certs);
        }
        let out = run("the add command", command).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(n, _)| request.names.iter().any(|m| m == n))
            .map(|(n, h)| (n.to_string(), h.trim().to_string()))
            .collect())
    }

    async fn sbatch(
        &self,
        name: &str,
        request: &LaunchRequest,
        partition: Option<&str>,
        time_limit_min: Option<u32>,
        extra: &[String],
    ) -> Result<Handle, ProviderError> {
        // Slurm signals the worker this long before the limit (it may be up to a minute
        // early); the worker's drain deadline ends well before Slurm kills it.
        let (signal_secs, drain) = match time_limit_min {
            Some(m) => {
                let limit = u64::from(m) * 60;
                let signal = (limit / 2).clamp(30, 300);
                (Some(signal), Some(Duration::from_secs(signal.saturating_sub(20).max(5))))
            }
            None => (None, None),
        };
        let logs = self.template.dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| ProviderError::Files { path: logs.clone(), source })?;
        let mut command = Command::new("sbatch");
        command
            .arg("--parsable")
            .arg(format!("--job-name={name}"))
            .arg(format!("--output={}", logs.join(format!("{name}-%j.log")).display()));
        if let Some(p) = partition {
            command.arg(format!("--partition={p}"));
        }
        if let Some(m) = time_limit_min {
            command.arg(format!("--time={m}"));
        }
        if let Some(s) = signal_secs {
            command.arg(format!("--signal=B:TERM@{s}"));
        }
        if let Some(c) = request.cpus {
            command.arg(format!("--cpus-per-task={c}"));
        }
        command.args(extra);
        let mut worker = vec![self.template.exe.display().to_string()];
        worker.extend(self.template.args(name, request, drain));
        command.arg(format!("--wrap=exec {}", shell_words(&worker)));
        self.environment(&mut command);
        let out = run("sbatch", command).await?;
        // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
        let job = out.trim().split(';').next().unwrap_or("").trim().to_string();
        if job.is_empty() || !job.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProviderError::Failed {
                what: "sbatch".to_string(),
                status: "no job id".to_string(),
                output: tail(&out),
            });
        }
        Ok(Some(job))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether process `pid` is `flotilla worker … --name NAME …`.
fn is_worker_named(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.iter().any(|a| *a == b"worker") && args.windows(2).any(|w| w[0] == b"--name" && w[1] == name.as_bytes())
}

/// Runs a command to its end within [`COMMAND_TIMEOUT`]; its standard output, or an error
/// with the end of what it printed.
async fn run(what: &str, mut command: Command) -> Result<String, ProviderError> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    // Its own process group, so a timeout stops whatever it started too.
    command.process_group(0);
    let mut child = command.spawn().map_err(|source| ProviderError::Spawn { what: what.to_string(), source })?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let pid = child.id();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = {
        let read = async {
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    let _ = s.read_to_end(&mut out).await;
                }
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.read_to_end(&mut err).await;
                }
            };
            tokio::join!(read_out, read_err);
        };
        tokio::pin!(read);
        let deadline = tokio::time::sleep(COMMAND_TIMEOUT);
        tokio::pin!(deadline);
        let mut read_all = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                _ = &mut read, if !read_all => read_all = true,
                _ = &mut deadline => break None,
            }
        };
        // A process the command left in the background (a worker it started without
        // redirecting its output) may hold the pipes open: what came within a second is kept.
        if !read_all {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut read).await;
        }
        status
    };
    let Some(status) = status else {
        if let Some(pid) = pid {
            // SAFETY: kill(2) on the process group of a child this call started.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        return Err(ProviderError::Timeout { what: what.to_string() });
    };
    let status = status.map_err(|source| ProviderError::Spawn { what: what.to_string(), source })?;
    let out = String::from_utf8_lossy(&out).into_owned();
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        let text = if err.trim().is_empty() { out.as_str() } else { err.as_ref() };
        return Err(ProviderError::Failed { what: what.to_string(), status: status.to_string(), output: tail(text) });
    }
    Ok(out)
}

fn tail(text: &str) -> String {
    let text = text.trim();
    let mut start = text.len().saturating_sub(ERROR_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// Words quoted for `sh`: each in single quotes unless it is plain.
pub fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=,:@%+".contains(&b));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where local workers of a master keep their data: beside its own data directory.
pub fn local_dir(master_data: &Path) -> PathBuf {
    master_data.join("autoscale")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(dir: &Path) -> WorkerTemplate {
        WorkerTemplate {
            exe: PathBuf::from("/usr/bin/flotilla"),
            masters: vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
            certs: Some(PathBuf::from("/etc/flotilla certs")),
            token: None,
            dir: dir.to_path_buf(),
        }
    }

    fn request(names: &[&str]) -> LaunchRequest {
        LaunchRequest {
            pool: "auto".into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            cpus: Some(2),
            labels: [("pool".to_string(), "auto".to_string())].into(),
            replicas: None,
        }
    }

    #[test]
    fn worker_arguments_name_the_masters_labels_and_certificates() {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = template(dir.path()).args("auto-1", &request(&["auto-1"]), Some(Duration::from_secs(40)));
        assert_eq!(
            shell_words(&args),
            "worker --name auto-1 --masters 127.0.0.1:7001,127.0.0.1:7002 --exit-when-drained --labels pool=auto \
             --cpus 2 --certs '/etc/flotilla certs' --drain-deadline 40s"
        );
        assert_eq!(shell_words(&["it's".to_string(), "a b".to_string()]), r"'it'\''s' 'a b'");
    }

    #[tokio::test]
    async fn the_command_provider_passes_names_and_reads_handles() {
        let dir = tempfile::tempdir().expect("temp dir");
        // The background `sleep` holds the pipes open, as a worker started without
        // redirecting its output would: the answer comes anyway, within a second.
        let add = "sleep 5 & for n in $FLOTILLA_WORKER_NAMES; do echo \"$n h-$n\"; done; \
                   echo \"$FLOTILLA_WORKER_ARGS\" > args";
        let spec =
            ProviderSpec::Command { add: format!("cd {}; {add}", dir.path().display()), remove: "exit 3".into() };
        let provider = Provider::new(spec, template(dir.path()));
        let started = std::time::Instant::now();
        let answers = provider.launch(&request(&["auto-1", "auto-2"])).await;
        assert!(started.elapsed() < Duration::from_secs(10), "waited for the background process");
        let handles: Vec<_> = answers.iter().map(|(n, r)| (n.as_str(), r.as_ref().ok().cloned().flatten())).collect();
        assert_eq!(handles, vec![("auto-1", Some("h-auto-1".to_string())), ("auto-2", Some("h-auto-2".to_string()))]);
        let args = std::fs::read_to_string(dir.path().join("args")).expect("args written");
        assert!(args.starts_with("--masters 127.0.0.1:7001,127.0.0.1:7002 --exit-when-drained"), "{args}");
        let removed = provider.remove("auto", "auto-1", Some("h-auto-1"), None).await;
        assert!(matches!(removed, Err(ProviderError::Failed { .. })), "{removed:?}");
    }

    #[tokio::test]
    async fn a_failing_add_command_fails_every_launch_with_its_words() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = ProviderSpec::Command { add: "echo no quota left >&2; exit 7".into(), remove: "true".into() };
        let provider = Provider::new(spec, template(dir.path()));
        let answers = provider.launch(&request(&["auto-1", "auto-2"])).await;
        for (_, r) in &answers {
            let e = r.as_ref().expect_err("failed");
            assert!(e.to_string().contains("no quota left"), "{e}");
        }
    }
}
