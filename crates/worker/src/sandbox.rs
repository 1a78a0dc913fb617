//! What a task is kept from: the worker's credentials (never in its environment), the other
//! tasks' and the worker's files (each attempt gets its own working directory), and, with
//! `--run-as USER`, the worker's user (its files, its certificates, its `/proc` entries);
//! and, when its job asks, more than its limits of memory, open files and processes.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_core::model::{TaskLimits, TaskSlot};
use flotilla_proto::wire::RunTask;

#[derive(Clone, Debug, Default)]
pub struct Sandbox {
    /// Variables of the worker's own environment no task inherits: its credentials.
    scrub: Vec<OsString>,
    /// Where each attempt gets a working directory of its own; `None`: the worker's (tests).
    tasks_dir: Option<PathBuf>,
    /// Keep the working directories after the attempts end (`--keep-task-dirs`).
    keep: bool,
    run_as: Option<User>,
}

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Sandbox {
    /// `secrets`: values (the worker's token) that no inherited variable may carry either.
    pub fn new(data_dir: &Path, keep: bool, run_as: Option<&str>, secrets: &[&str]) -> Result<Sandbox, String> {
        let run_as = run_as.map(lookup_user).transpose()?;
        if run_as.is_some() && unsafe_geteuid() != 0 {
            return Err("--run-as needs the worker to run as root (it switches each task to that user)".into());
        }
        let tasks_dir = data_dir.join("tasks");
        std::fs::create_dir_all(&tasks_dir).map_err(|e| format!("{}: {e}", tasks_dir.display()))?;
        // Others may pass through to their own directory, never list what is there; the
        // worker's other files (journal, …) stay the worker's.
        for dir in [data_dir, tasks_dir.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let empty = tasks_dir.join(EMPTY_INPUT);
        std::fs::create_dir_all(&empty).map_err(|e| format!("{}: {e}", empty.display()))?;
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o555))
            .map_err(|e| format!("{}: {e}", empty.display()))?;
        Ok(Sandbox { scrub: credential_variables(secrets), tasks_dir: Some(tasks_dir), keep, run_as })
    }

    pub fn run_as(&self) -> Option<&User> {
        self.run_as.as_ref()
    }

    /// Prepares `cmd` for `task`: no credential in its environment, its own working
    /// directory and output directory (and input directory, if it has inputs), made here, its
    /// user. Returns the directories, to remove once it ended.
    pub fn prepare(&self, cmd: &mut Command, task: &RunTask) -> Result<Option<TaskDirs>, String> {
        for name in &self.scrub {
            cmd.env_remove(name);
        }
        set_limits(cmd, &task.limits);
        let Some(root) = &self.tasks_dir else { return Ok(None) };
        let slot = match task.task.slot {
            TaskSlot::Array(i) => i.to_string(),
            TaskSlot::Reduce => "reduce".to_string(),
        };
        let dir = root.join(format!("{}-{slot}-{}-{}", task.task.job, task.fence.term, task.fence.attempt));
        // A directory left by a worker that died mid-attempt is not reused as it is.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create the task directory {}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("cannot give {} to {}: {e}", dir.display(), user.name))?;
            // std drops the supplementary groups too when it switches a root process's uid.
            cmd.uid(user.uid).gid(user.gid).env("USER", &user.name).env("LOGNAME", &user.name).env("HOME", &user.home);
        }
        cmd.current_dir(&dir).env("PWD", &dir);
        // Beside the working directory, not in it: a task that archives `.` does not take
        // its outputs along, nor one that cleans `.` lose them.
        let output = dir.with_extension("out");
        let input = (!task.inputs.is_empty()).then(|| dir.with_extension("in"));
        for extra in std::iter::once(&output).chain(input.as_ref()) {
            let _ = std::fs::remove_dir_all(extra);
            std::fs::create_dir(extra).map_err(|e| format!("cannot create {}: {e}", extra.display()))?;
            std::fs::set_permissions(extra, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: {e}", extra.display()))?;
        }
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(&output, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("cannot give {} to {}: {e}", output.display(), user.name))?;
        }
        cmd.env("FLOTILLA_OUTPUT_DIR", &output);
        match &input {
            Some(input) => cmd.env("FLOTILLA_INPUT_DIR", input),
            None => cmd.env("FLOTILLA_INPUT_DIR", root.join(EMPTY_INPUT)),
        };
        Ok(Some(TaskDirs { work: dir, output, input }))
    }

    /// After an attempt: its directories go, unless the worker keeps them.
    pub fn finish(&self, dirs: Option<TaskDirs>) {
        let Some(dirs) = dirs.filter(|_| !self.keep) else { return };
        for dir in [Some(dirs.work), Some(dirs.output), dirs.input].into_iter().flatten() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a task's directory");
                }
            }
        }
    }
}

impl Sandbox {
    /// Gives what the worker placed in `dir` (a task's inputs) to the task's user, if tasks run
    /// as another user.
    pub fn hand_over(&self, dir: &Path) -> Result<(), String> {
        let Some(user) = &self.run_as else { return Ok(()) };
        let mut todo = vec![dir.to_path_buf()];
        while let Some(path) = todo.pop() {
            std::os::unix::fs::lchown(&path, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("cannot give {} to {}: {e}", path.display(), user.name))?;
            if path.is_dir() {
                let entries = std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        }
        Ok(())
    }
}

/// The input directory of tasks that have no inputs: empty, and no task may write in it.
const EMPTY_INPUT: &str = "no-inputs";

/// One attempt's directories.
#[derive(Clone, Debug)]
pub struct TaskDirs {
    /// Its working directory.
    pub work: PathBuf,
    /// `$FLOTILLA_OUTPUT_DIR`.
    pub output: PathBuf,
    /// `$FLOTILLA_INPUT_DIR`, when it has inputs.
    pub input: Option<PathBuf>,
}

/// Sets the job's limits on the task's process, between fork and exec (after the switch to
/// `--run-as`'s user). A limit above what the worker itself may have is the worker's: a
/// process cannot raise its hard limit. Jobs without limits get no hook, so their tasks keep
/// `posix_spawn` (std forks instead once there is one, which costs more per task).
fn set_limits(cmd: &mut Command, limits: &TaskLimits) {
    if limits.is_empty() {
        return;
    }
    let wanted: Vec<(Resource, libc::rlim_t)> = [
        (libc::RLIMIT_AS, limits.memory),
        (libc::RLIMIT_NOFILE, limits.open_files),
        (libc::RLIMIT_NPROC, limits.processes),
    ]
    .into_iter()
    .filter_map(|(resource, value)| Some((resource, clamp_to_hard(resource, value?))))
    .collect();
    // SAFETY: the hook runs in the child between fork and exec; it only calls setrlimit
    // (async-signal-safe) on values prepared here, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for (resource, value) in &wanted {
                let limit = libc::rlimit { rlim_cur: *value, rlim_max: *value };
                if libc::setrlimit(*resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

/// `value`, or the worker's own hard limit of `resource` if that is lower.
fn clamp_to_hard(resource: Resource, value: u64) -> libc::rlim_t {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only into `current`.
    let known = unsafe { libc::getrlimit(resource, &mut current) } == 0;
    let value = value as libc::rlim_t;
    if known && current.rlim_max != libc::RLIM_INFINITY {
        value.min(current.rlim_max)
    } else {
        value
    }
}

/// The worker's own variables that carry a credential: `FLOTILLA_TOKEN*`, `FLOTILLA_CERTS`,
/// and any whose value holds one of `secrets`.
fn credential_variables(secrets: &[&str]) -> Vec<OsString> {
    std::env::vars_os()
        .filter(|(name, value)| {
            let name = name.to_string_lossy();
            let value = value.to_string_lossy();
            name.starts_with("FLOTILLA_TOKEN")
                || name == "FLOTILLA_CERTS"
                || secrets.iter().any(|s| s.len() >= 8 && value.contains(s))
        })
        .map(|(name, _)| name)
        .collect()
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The user `name` (or a numeric uid) from the system's user database.
fn lookup_user(name: &str) -> Result<User, String> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let c_name = std::ffi::CString::new(name).map_err(|_| format!("--run-as '{name}' is not a user name"))?;
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`'s strings.
    let rc = match name.parse::<u32>() {
        Ok(uid) => unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) },
        Err(_) => unsafe {
            libc::getpwnam_r(c_name.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found)
        },
    };
    if rc != 0 || found.is_null() {
        return Err(format!("--run-as: no user '{name}' on this machine"));
    }
    // SAFETY: on success pw_name and pw_dir point to NUL-terminated strings inside `buf`.
    let (user_name, home) = unsafe {
        (
            std::ffi::CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned(),
            std::ffi::CStr::from_ptr(pwd.pw_dir).to_string_lossy().into_owned(),
        )
    };
    if pwd.pw_uid == 0 {
        return Err(format!("--run-as {name} is root: tasks would keep every right of the worker"));
    }
    Ok(User { name: user_name, uid: pwd.pw_uid, gid: pwd.pw_gid, home: PathBuf::from(home) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_found_by_name_and_by_value() {
        // SAFETY of set_var: this test's process sets these before reading them; no other
        // test reads them.
        std::env::set_var("FLOTILLA_TOKEN_FILE_SANDBOX_TEST", "/x");
        std::env::set_var("SANDBOX_TEST_COPY", "prefix-s3cret-value-suffix");
        let found = credential_variables(&["s3cret-value"]);
        assert!(found.iter().any(|n| n == "FLOTILLA_TOKEN_FILE_SANDBOX_TEST"));
        assert!(found.iter().any(|n| n == "SANDBOX_TEST_COPY"));
        assert!(!found.iter().any(|n| n == "PATH"));
    }

    #[test]
    fn users_are_looked_up_and_root_is_refused() {
        assert!(lookup_user("root").is_err());
        assert!(lookup_user("no-such-user-here").unwrap_err().contains("no user"));
        let nobody = lookup_user("nobody").expect("nobody exists on Debian");
        assert_ne!(nobody.uid, 0);
    }
}
