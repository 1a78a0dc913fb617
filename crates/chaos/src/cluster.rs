//! The nodes of a chaos cluster: `flotilla` processes started inside their namespaces, killed,
//! paused, restarted, their data wiped, corrupted or starved of disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::netns::Net;

pub const PORT: u16 = 7001;

pub struct Proc {
    pub child: Child,
    pub paused: bool,
}

pub struct Cluster {
    pub net: Net,
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub token_file: PathBuf,
    pub token: String,
    /// The cluster's certificates: every process and the harness talk TLS.
    pub certs: PathBuf,
    pub identity: std::sync::Arc<flotilla_tls::Identity>,
    pub master_ids: Vec<u64>,
    pub worker_names: Vec<String>,
    pub masters: BTreeMap<u64, Proc>,
    pub workers: BTreeMap<String, Proc>,
    /// Masters whose data dir is a small tmpfs (disk-full faults).
    pub tmpfs: Vec<PathBuf>,
    pub worker_cpus: u32,
}

pub fn master_name(id: u64) -> String {
    format!("m{id}")
}

impl Cluster {
    pub fn master_addr(&self, id: u64) -> String {
        format!("{}:{PORT}", self.net.addr(&master_name(id)))
    }

    pub fn master_list(&self) -> String {
        self.master_ids.iter().map(|id| self.master_addr(*id)).collect::<Vec<_>>().join(",")
    }

    fn peers(&self) -> String {
        self.master_ids.iter().map(|id| format!("{id}={}", self.master_addr(*id))).collect::<Vec<_>>().join(",")
    }

    pub fn master_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("m{id}"))
    }

    fn spawn_in(&self, node: &str, args: &[String]) -> anyhow::Result<Child> {
        let log = self.dir.join("logs").join(format!("{node}.log"));
        std::fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
        let out = File::options().create(true).append(true).open(&log)?;
        let ns = File::open(format!("/var/run/netns/{}", self.net.ns(node)))?;
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new(&self.exe);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::from(out.try_clone()?)).stderr(Stdio::from(out));
        cmd.env("RUST_LOG", "info,openraft=warn,openraft::core::raft_core=off");
        // SAFETY: only async-signal-safe syscalls run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Nodes die with the harness, however it ends.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {node}"))?;
        drop(ns);
        Ok(child)
    }

    pub fn start_master(&mut self, id: u64) -> anyhow::Result<()> {
        let peers = self.peers();
        self.spawn_master(id, &["--peers".into(), peers])
    }

    /// Starts master `id` outside the group, waiting to be added (`--await-add`).
    pub fn start_master_awaiting(&mut self, id: u64) -> anyhow::Result<()> {
        self.spawn_master(id, &["--await-add".into()])
    }

    /// Starts master `id` with how it finds its group (`bootstrap`) and the usual flags.
    fn spawn_master(&mut self, id: u64, bootstrap: &[String]) -> anyhow::Result<()> {
        let mut args: Vec<String> = vec![
            "master".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            self.master_addr(id),
            "--data-dir".into(),
            self.master_dir(id).display().to_string(),
        ];
        args.extend(bootstrap.iter().cloned());
        args.extend([
            "--token-file".into(),
            self.token_file.display().to_string(),
            "--certs".into(),
            self.certs.display().to_string(),
            "--snapshot-every".into(),
            "200".into(),
        ]);
        let child = self.spawn_in(&master_name(id), &args)?;
        self.masters.insert(id, Proc { child, paused: false });
        Ok(())
    }

    pub fn start_worker(&mut self, name: &str) -> anyhow::Result<()> {
        let args: Vec<String> = vec![
            "worker".into(),
            "--masters".into(),
            self.master_list(),
            "--cpus".into(),
            self.worker_cpus.to_string(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            self.dir.join(format!("worker-{name}")).display().to_string(),
            "--token-file".into(),
            self.token_file.display().to_string(),
            "--certs".into(),
            self.certs.display().to_string(),
        ];
        let child = self.spawn_in(name, &args)?;
        self.workers.insert(name.to_string(), Proc { child, paused: false });
        Ok(())
    }

    fn signal(p: &Proc, sig: i32) {
        // SAFETY: kill(2) on a child we started.
        unsafe {
            libc::kill(p.child.id() as i32, sig);
        }
    }

    pub fn kill_master(&mut self, id: u64) {
        if let Some(mut p) = self.masters.remove(&id) {
            Self::signal(&p, libc::SIGCONT);
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Asks a master to stop (SIGTERM) and waits for it; false if it was still running after
    /// `within` (it is then killed).
    pub fn terminate_master(&mut self, id: u64, within: std::time::Duration) -> bool {
        let Some(mut p) = self.masters.remove(&id) else { return true };
        Self::signal(&p, libc::SIGCONT);
        Self::signal(&p, libc::SIGTERM);
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if p.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
        false
    }

    pub fn kill_worker(&mut self, name: &str) {
        if let Some(mut p) = self.workers.remove(name) {
            Self::signal(&p, libc::SIGCONT);
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    pub fn pause_master(&mut self, id: u64, pause: bool) {
        if let Some(p) = self.masters.get_mut(&id) {
            Self::signal(p, if pause { libc::SIGSTOP } else { libc::SIGCONT });
            p.paused = pause;
        }
    }

    pub fn pause_worker(&mut self, name: &str, pause: bool) {
        if let Some(p) = self.workers.get_mut(name) {
            Self::signal(p, if pause { libc::SIGSTOP } else { libc::SIGCONT });
            p.paused = pause;
        }
    }

    /// Whether a master process has exited by itself (e.g. on a storage error).
    pub fn master_exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.masters.get_mut(&id).and_then(|p| p.child.try_wait().ok().flatten())
    }

    /// Removes every file of a (stopped) master's data directory.
    pub fn wipe_master(&self, id: u64) -> anyhow::Result<()> {
        let dir = self.master_dir(id);
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let p = entry.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(())
    }

    /// Overwrites blocks of a (stopped) master's raft log file with garbage, spread over the
    /// whole file so that pages holding entries are hit.
    pub fn corrupt_master(&self, id: u64, seed: u64) -> anyhow::Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let path = self.master_dir(id).join("raft-log.redb");
        let len = std::fs::metadata(&path)?.len();
        let mut f = File::options().write(true).open(&path)?;
        let mut rng = flotilla_core::rng::Rng::new(seed);
        let block: Vec<u8> = (0..512).map(|_| rng.next_u64() as u8).collect();
        let mut at = 4096;
        while at + 512 < len {
            f.seek(SeekFrom::Start(at))?;
            f.write_all(&block)?;
            at += 4096 * rng.range(1, 4);
        }
        f.sync_all()?;
        Ok(())
    }

    /// Mounts a small tmpfs as a master's data directory (before it first starts).
    pub fn mount_small_disk(&mut self, id: u64, megabytes: u64) -> anyhow::Result<()> {
        let dir = self.master_dir(id);
        std::fs::create_dir_all(&dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .context("cannot run mount")?;
        if !out.status.success() {
            anyhow::bail!("mount tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        self.tmpfs.push(dir);
        Ok(())
    }

    /// Fills a master's disk: writes a filler file until the device is full.
    pub fn fill_disk(&self, id: u64) -> anyhow::Result<u64> {
        use std::io::Write;
        let path = self.master_dir(id).join("filler");
        let mut f = File::create(&path)?;
        let block = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(_) => break,
            }
        }
        let _ = f.sync_all();
        Ok(written)
    }

    pub fn free_disk(&self, id: u64) -> anyhow::Result<()> {
        let path = self.master_dir(id).join("filler");
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }

    /// Stops everything and unmounts; the namespaces go when `net` is dropped.
    pub fn teardown(&mut self) {
        for id in self.masters.keys().copied().collect::<Vec<_>>() {
            self.kill_master(id);
        }
        for name in self.workers.keys().cloned().collect::<Vec<_>>() {
            self.kill_worker(&name);
        }
        for dir in self.tmpfs.drain(..) {
            let _ = Command::new("umount").arg(&dir).output();
        }
        let _ = self.net.heal_all();
    }

    pub fn client(&self) -> anyhow::Result<flotilla_client::Client> {
        let addrs = self.master_ids.iter().map(|id| self.master_addr(*id)).collect();
        Ok(flotilla_client::Client::with_identity(addrs, Some(&self.token), Some(self.identity.clone()))?
            .with_retry_for(Duration::from_secs(20)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}
