//! A cluster of real local processes (masters and workers are this same binary), on loopback
//! ports, with data and logs in one directory. `flotilla up`, `flotilla demo` and the
//! integration tests all use it; dropping it kills every process it started.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use flotilla_client::Client;
use flotilla_proto::api::{Role, WorkerState};

use crate::cli::UpArgs;

pub struct LocalCluster {
    pub exe: PathBuf,
    pub dir: PathBuf,
    /// The port every other process (peers, workers, clients) reaches each master at.
    pub ports: BTreeMap<u64, u16>,
    /// The port a master listens on, when not its entry in `ports` (tests put a relay that
    /// delays traffic between the two).
    pub listen_ports: BTreeMap<u64, u16>,
    pub masters: BTreeMap<u64, Child>,
    pub workers: BTreeMap<String, Child>,
    /// Extra arguments for every master (e.g. a shorter worker timeout in tests).
    pub master_args: Vec<String>,
    /// Extra environment for every master (e.g. `SLURM_CONF` for the Slurm provider's test).
    pub master_env: Vec<(String, String)>,
    /// The cluster's certificates (`DIR/certs`, made on first use): every process talks TLS.
    /// `None`: plain text (`--insecure-plaintext`), for what has to run without TLS.
    pub certs: Option<PathBuf>,
    /// Without certificates: give masters `--insecure-plaintext` (off for a release older
    /// than the flag, as the upgrade test runs).
    pub plaintext_flag: bool,
}

/// A free TCP port on loopback for a master to listen on. It is taken below the kernel's
/// ephemeral range (32768 and up on Linux): a port from that range, released before the
/// master binds it, can meanwhile become the local port of any outgoing connection on the
/// machine (under a loaded test run it did: "Address already in use").
pub fn free_port() -> anyhow::Result<u16> {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut rng = flotilla_core::rng::Rng::new(seed ^ u64::from(std::process::id()));
    // Never the same port twice from one process (tests run clusters side by side in one).
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..200 {
        let port = 20_000 + rng.range(0, 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Sends a signal to one process we started.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we own; no memory is shared.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

impl LocalCluster {
    /// Plans `masters` masters on `base_port..` (or free ports when `None`), secured by the
    /// certificates in `DIR/certs` (created when missing); starts nothing.
    pub fn new(exe: &Path, dir: &Path, masters: u64, base_port: Option<u16>) -> anyhow::Result<Self> {
        let mut cluster = Self::plain(exe, dir, masters, base_port)?;
        let certs = dir.join("certs");
        if !certs.join(flotilla_tls::authority::CA_CERT).exists() {
            flotilla_tls::authority::init(&certs, &["127.0.0.1".into(), "localhost".into()])?;
        }
        cluster.certs = Some(certs);
        Ok(cluster)
    }

    /// Like [`LocalCluster::new`], in plain text.
    pub fn plain(exe: &Path, dir: &Path, masters: u64, base_port: Option<u16>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut ports = BTreeMap::new();
        for id in 1..=masters {
            let port = match base_port {
                Some(p) => p + (id as u16 - 1),
                None => free_port()?,
            };
            ports.insert(id, port);
        }
        Ok(LocalCluster {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            ports,
            listen_ports: BTreeMap::new(),
            masters: BTreeMap::new(),
            workers: BTreeMap::new(),
            master_args: Vec::new(),
            master_env: Vec::new(),
            certs: None,
            plaintext_flag: true,
        })
    }

    /// The admin token of the cluster's certificates, if it has them.
    pub fn token(&self) -> Option<String> {
        let path = self.certs.as_ref()?.join(flotilla_tls::authority::ADMIN_TOKEN);
        std::fs::read_to_string(path).ok().map(|t| t.trim().to_string())
    }

    /// How a child process is told about the certificates: `--certs`, or plain text. The
    /// caller's own FLOTILLA_* settings never leak into the cluster's processes.
    fn security(&self, command: &mut Command, master: bool) {
        command.env_remove("FLOTILLA_CERTS").env_remove("FLOTILLA_TOKEN").env_remove("FLOTILLA_TOKEN_FILE");
        match &self.certs {
            Some(certs) => {
                command.arg("--certs").arg(certs);
            }
            None if master && self.plaintext_flag => {
                command.arg("--insecure-plaintext");
            }
            None => {}
        }
    }

    /// Environment for a CLI process talking to this cluster.
    pub fn client_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("FLOTILLA_MASTERS".to_string(), self.master_list())];
        if let Some(certs) = &self.certs {
            env.push(("FLOTILLA_CERTS".into(), certs.display().to_string()));
        }
        env
    }

    /// A client of these masters (TLS with the admin token when the cluster has certificates).
    pub fn client_of(&self, addresses: Vec<String>) -> anyhow::Result<Client> {
        let identity = match &self.certs {
            Some(dir) => Some(flotilla_tls::Identity::load(dir, flotilla_tls::Role::Client)?),
            None => None,
        };
        Ok(Client::with_identity(addresses, self.token().as_deref(), identity)?)
    }

    pub fn address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[&id])
    }

    /// Where master `id` listens: its own address unless `listen_ports` says otherwise.
    pub fn listen_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.listen_ports.get(&id).unwrap_or(&self.ports[&id]))
    }

    /// `host:port` of every master, comma-separated (for `--masters`).
    pub fn master_list(&self) -> String {
        self.ports.keys().map(|id| self.address(*id)).collect::<Vec<_>>().join(",")
    }

    pub fn peers(&self) -> String {
        self.ports.keys().map(|id| format!("{id}={}", self.address(*id))).collect::<Vec<_>>().join(",")
    }

    fn log(&self, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
        let path = self.dir.join("logs").join(format!("{name}.log"));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
    }

    pub fn start_master(&mut self, id: u64) -> anyhow::Result<()> {
        let peers = self.peers();
        self.spawn_master(id, &["--peers", &peers])
    }

    /// Plans master `id` on a free port and starts it with `--join` through masters
    /// `through` (it joins the running group as a learner and votes once current).
    pub fn join_master(&mut self, id: u64, through: &[u64]) -> anyhow::Result<()> {
        self.ports.insert(id, free_port()?);
        let join = through.iter().map(|t| self.address(*t)).collect::<Vec<_>>().join(",");
        self.spawn_master(id, &["--join", &join])
    }

    /// Plans master `id` on a free port (if it has none) and starts it with `--await-add`:
    /// empty, it waits for a leader whose membership names it.
    pub fn start_master_awaiting(&mut self, id: u64) -> anyhow::Result<()> {
        if let std::collections::btree_map::Entry::Vacant(e) = self.ports.entry(id) {
            e.insert(free_port()?);
        }
        self.spawn_master(id, &["--await-add"])
    }

    /// Where master `id` keeps its data.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("master-{id}"))
    }

    /// Stops and forgets master `id` (after it was removed from the group).
    pub fn forget_master(&mut self, id: u64) {
        self.kill_master(id);
        self.ports.remove(&id);
        self.listen_ports.remove(&id);
    }

    fn spawn_master(&mut self, id: u64, bootstrap: &[&str]) -> anyhow::Result<()> {
        let (out, err) = self.log(&format!("master-{id}"))?;
        let mut command = Command::new(&self.exe);
        self.security(command.arg("master"), true);
        let child = command
            .args(["--id", &id.to_string()])
            .args(["--listen", &self.listen_address(id)])
            .arg("--data-dir")
            .arg(self.dir.join(format!("master-{id}")))
            .args(bootstrap)
            .args(&self.master_args)
            .envs(self.master_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start master {id}"))?;
        self.masters.insert(id, child);
        Ok(())
    }

    pub fn start_masters(&mut self) -> anyhow::Result<()> {
        for id in self.ports.keys().copied().collect::<Vec<_>>() {
            self.start_master(id)?;
        }
        Ok(())
    }

    pub fn start_worker(&mut self, name: &str, cpus: u32, labels: &str) -> anyhow::Result<()> {
        self.start_worker_with(name, cpus, labels, &[])
    }

    /// Starts a worker with extra command-line arguments.
    pub fn start_worker_with(&mut self, name: &str, cpus: u32, labels: &str, extra: &[&str]) -> anyhow::Result<()> {
        let (out, err) = self.log(&format!("worker-{name}"))?;
        let mut command = Command::new(&self.exe);
        self.security(command.arg("worker"), false);
        let child = command
            .args(["--masters", &self.master_list()])
            .args(["--cpus", &cpus.to_string()])
            .args(["--name", name])
            .args(["--labels", labels])
            .arg("--data-dir")
            .arg(self.dir.join(format!("worker-{name}")))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start worker {name}"))?;
        self.workers.insert(name.to_string(), child);
        Ok(())
    }

    /// Asks a master to stop (SIGTERM: a leader hands over first) and waits for it; returns
    /// its exit code (`None`: killed after `within`, or gone already).
    pub fn terminate_master(&mut self, id: u64, within: Duration) -> Option<i32> {
        let child = self.masters.remove(&id)?;
        Self::terminate(child, within)
    }

    /// Asks a worker to stop (SIGTERM: it drains first) and waits for it, as
    /// [`LocalCluster::terminate_master`].
    pub fn terminate_worker(&mut self, name: &str, within: Duration) -> Option<i32> {
        let child = self.workers.remove(name)?;
        Self::terminate(child, within)
    }

    fn terminate(mut child: Child, within: Duration) -> Option<i32> {
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILLs a master and reaps it.
    pub fn kill_master(&mut self, id: u64) {
        if let Some(mut c) = self.masters.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kill_worker(&mut self, name: &str) {
        if let Some(mut c) = self.workers.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        self.client_of(self.ports.keys().map(|id| self.address(*id)).collect())
    }

    /// Polls every live master until one says it leads; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let client = self.client().ok()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for id in self.masters.keys() {
                if let Ok(info) = client.node(&self.address(*id)).await {
                    if info.role == Role::Leader {
                        return Some(info.id);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Waits until `count` workers are ready.
    pub async fn wait_workers(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let client = self.client()?.with_retry_for(Duration::from_secs(2));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = client.status(false).await {
                if s.workers.iter().filter(|w| w.state == WorkerState::Ready).count() >= count {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{count} workers not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks every process to stop (SIGTERM), workers first (they drain while the masters
    /// still run), then kills what is left after a grace period.
    pub fn stop(&mut self) {
        Self::stop_all(self.workers.values_mut().collect());
        Self::stop_all(self.masters.values_mut().collect());
        self.masters.clear();
        self.workers.clear();
    }

    fn stop_all(children: Vec<&mut Child>) {
        for c in &children {
            signal(c, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in self.masters.values_mut().chain(self.workers.values_mut()) {
            signal(c, libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `flotilla up`: a local cluster in the foreground until Ctrl-C.
pub async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    if args.masters == 0 || args.masters > 9 {
        bail!("--masters must be between 1 and 9");
    }
    let exe = std::env::current_exe().context("cannot find the flotilla binary")?;
    let mut cluster = LocalCluster::new(&exe, &args.dir, args.masters, Some(args.port))?;
    for id in 1..=args.masters {
        if std::net::TcpListener::bind(("127.0.0.1", cluster.ports[&id])).is_err() {
            bail!("port {} is in use (is another cluster running? try --port)", cluster.ports[&id]);
        }
    }
    cluster.start_masters()?;
    let Some(leader) = cluster.wait_leader(Duration::from_secs(30)).await else {
        cluster.stop();
        bail!("no leader elected within 30 s; see the logs in {}", args.dir.join("logs").display());
    };
    for i in 1..=args.workers {
        cluster.start_worker(&format!("worker-{i}"), args.cpus, &format!("zone=z{}", (i - 1) % 2 + 1))?;
    }
    cluster.wait_workers(args.workers as usize, Duration::from_secs(30)).await?;
    let masters = cluster.master_list();
    if args.json {
        let certs = cluster.certs.as_ref().map(|c| std::path::absolute(c).unwrap_or(c.clone()));
        let scheme = if certs.is_some() { "https" } else { "http" };
        let up = serde_json::json!({
            "masters": masters.split(',').collect::<Vec<_>>(),
            "leader": leader,
            "workers": args.workers,
            "cpus": args.cpus,
            "certs": certs,
            "dashboard": format!("{scheme}://{}/", masters.split(',').next().unwrap_or_default()),
            "dir": std::path::absolute(&args.dir).unwrap_or(args.dir.clone()),
        });
        println!("{up}");
        std::io::Write::flush(&mut std::io::stdout())?;
    } else {
        println!(
            "Flotilla is up: {} masters (leader: master {leader}), {} workers with {} cpus each.",
            args.masters, args.workers, args.cpus
        );
        println!("Data and logs: {}", args.dir.display());
        println!();
        println!("In another shell:");
        println!("  export FLOTILLA_MASTERS={masters}");
        if let Some(certs) = &cluster.certs {
            let certs = std::path::absolute(certs).unwrap_or(certs.clone());
            println!("  export FLOTILLA_CERTS={}   # TLS, and the admin token in it", certs.display());
        }
        println!(
            r#"  flotilla submit --array 1-100 --reduce "awk '{{s+=\$1}} END {{print s}}'" -- sh -c 'echo $FLOTILLA_TASK_INDEX'"#
        );
        println!("  flotilla job wait 1 && flotilla job result 1");
        println!("  flotilla status");
        println!("  flotilla events --follow");
        println!();
        println!("Press Ctrl-C to stop the cluster.");
    }
    let stop = crate::roles::shutdown_on_signals();
    stop.cancelled().await;
    eprintln!("stopping…");
    cluster.stop();
    eprintln!("stopped.");
    Ok(ExitCode::SUCCESS)
}
