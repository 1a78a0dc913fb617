//! A real single-node Slurm for the `slurm` autoscaling provider's test: Debian's
//! `slurm-wlm` and `munge`, run as root without systemd, with every socket, port, state file
//! and log in the test's own directory. Dropping it stops the daemons it started.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Slurm {
    pub dir: PathBuf,
    pub conf: PathBuf,
}

/// Why this machine cannot run the test's Slurm, if it cannot.
pub fn unavailable() -> Option<String> {
    for tool in ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo"] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().any(|d| Path::new(d).join(tool).exists());
        if !found {
            return Some(format!("{tool} is missing: install the Debian packages slurm-wlm and munge"));
        }
    }
    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some("Slurm's daemons run as root here (SlurmUser=root)".to_string());
    }
    None
}

fn short_host_name() -> String {
    let out = Command::new("hostname").arg("-s").output().ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Slurm {
    /// Starts munged, slurmctld and slurmd under `dir` on free ports; waits until the node is
    /// idle (or panics with the daemons' logs).
    pub fn start(dir: &Path) -> Slurm {
        for sub in ["state", "spool", "log", "munge", "run"] {
            std::fs::create_dir_all(dir.join(sub)).expect("slurm dirs");
        }
        let key = dir.join("munge/munge.key");
        let mut random = vec![0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").expect("urandom"), &mut random)
            .expect("random key");
        std::fs::write(&key, random).expect("munge key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o400)).expect("key mode");
        let socket = dir.join("run/munge.socket");
        let status = Command::new("munged")
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("run/munged.pid").display()))
            .arg(format!("--log-file={}", dir.join("log/munged.log").display()))
            .arg(format!("--seed-file={}", dir.join("run/munge.seed").display()))
            .arg("--force")
            .status()
            .expect("run munged");
        assert!(status.success(), "munged failed: {status}");
        let host = short_host_name();
        let ctl = flotilla::local::free_port().expect("port");
        let slurmd = flotilla::local::free_port().expect("port");
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=flotillatest\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={ctl}\nSlurmdPort={slurmd}\n\
                 AuthType=auth/munge\nAuthInfo=socket={d}/run/munge.socket\nCredType=cred/munge\nSlurmUser=root\n\
                 SlurmdUser=root\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool/slurmd-%n\n\
                 SlurmctldPidFile={d}/run/slurmctld.pid\nSlurmdPidFile={d}/run/slurmd-%n.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd-%n.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\nSchedulerType=sched/backfill\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\nMpiDefault=none\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN\n\
                 PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
            ),
        )
        .expect("slurm.conf");
        let slurm = Slurm { dir: dir.to_path_buf(), conf };
        for daemon in ["slurmctld", "slurmd"] {
            let status = Command::new(daemon).arg("-f").arg(&slurm.conf).env("SLURM_CONF", &slurm.conf).status();
            assert!(status.is_ok_and(|s| s.success()), "{daemon} did not start:\n{}", slurm.logs());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("sinfo").args(["-h", "-o", "%t"]).env("SLURM_CONF", &slurm.conf).output();
            let state = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
            if state == "idle" {
                return slurm;
            }
            assert!(Instant::now() < deadline, "the Slurm node is not idle ({state:?}):\n{}", slurm.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `squeue` lines `ID NAME STATE` of every job.
    pub fn queue(&self) -> Vec<String> {
        let out = Command::new("squeue").args(["-h", "-o", "%i %j %T"]).env("SLURM_CONF", &self.conf).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        for e in std::fs::read_dir(self.dir.join("log")).into_iter().flatten().flatten() {
            let body = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = body.lines().rev().take(15).collect();
            text.push_str(&format!("--- {}\n", e.path().display()));
            for l in tail.into_iter().rev() {
                text.push_str(l);
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new("scancel").arg("--full").arg("--user=root").env("SLURM_CONF", &self.conf).status();
        let host = short_host_name();
        for pid_file in [format!("run/slurmd-{host}.pid"), "run/slurmctld.pid".into(), "run/munged.pid".into()] {
            let Some(pid) =
                std::fs::read_to_string(self.dir.join(pid_file)).ok().and_then(|p| p.trim().parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: kill(2) on a daemon this harness started (its own pid file).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            // SAFETY: signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}
