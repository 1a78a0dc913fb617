//! Command-line definitions (clap). Every subcommand's `--help` explains its flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `flotilla --version`: the release and the git commit it was built from (build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FLOTILLA_COMMIT"), ")");

/// Shown after the top-level `--help` and in the man page.
const CONVENTIONS: &str = "\
Exit status: 0 success; 1 an error, or a job that failed or was cancelled (`job wait`, \
`submit --wait`); 2 a usage error (unknown flag, bad value).

Environment: FLOTILLA_MASTERS (--masters), FLOTILLA_TOKEN or FLOTILLA_TOKEN_FILE (the token), \
FLOTILLA_CERTS (--certs: TLS, and its admin.token), FLOTILLA_LOG_FORMAT (--log-format of \
masters and workers), RUST_LOG (log levels).

Every command that prints something takes --json. Shell completions: `flotilla completions \
bash|zsh|fish`; man pages: `flotilla man --dir DIR`.";

#[derive(Parser, Debug)]
#[command(
    name = "flotilla",
    version = VERSION,
    after_long_help = CONVENTIONS,
    // A flag given twice keeps the last value: `--config` puts the file's flags first, so the
    // command line's own win.
    args_override_self = true,
    about = "A highly available master/worker cluster for running jobs",
    long_about = "Flotilla runs batch jobs on many machines. Masters (1, 3 or 5) agree through Raft; \
                  the leader splits jobs into tasks and places them on workers, which run them as \
                  child processes. Any single master or worker may fail without losing work.\n\n\
                  Try it: `flotilla demo` runs a local cluster, a job, and kills a master and a \
                  worker on the way. `flotilla up` runs a local cluster in the foreground."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run one master of the Raft group (`flotilla master --id …`), or rebuild a group from a
    /// surviving master's data (`flotilla master recover`).
    Master(MasterCli),
    /// Run a worker that executes tasks (`flotilla worker --masters …`), or list and maintain
    /// workers (`flotilla worker list|cordon|drain|uncordon`).
    Worker(WorkerCli),
    /// Submit a job; prints its id alone on stdout.
    Submit(SubmitArgs),
    /// Periodic jobs: `schedule add NAME --cron "0 3 * * *" [--timezone Z] [--overlap
    /// skip|allow] -- CMD…` submits the job once per period; `schedule list|pause|resume|remove`.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCmd,
    },
    /// Autoscaling: `autoscale set --provider local|command|slurm --min N --max M [--idle 5m]
    /// …` keeps a pool of workers that follows the waiting work; `autoscale show|resume|remove`.
    Autoscale {
        #[command(subcommand)]
        command: AutoscaleCmd,
    },
    /// Inspect or control jobs.
    Job {
        #[command(subcommand)]
        command: JobCmd,
    },
    /// Show masters, workers and job counts.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Answer from whichever master responds, without a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Show the replicated event journal.
    Events(EventsArgs),
    /// Post-incident analysis from the journal.
    Incident {
        #[command(subcommand)]
        command: IncidentCmd,
    },
    /// Show or change how jobs of the same priority share the workers: `fair` (the default:
    /// jobs take turns, the one holding the fewest tasks first) or `fifo` (submission order).
    Scheduling(SchedulingArgs),
    /// Back up the cluster's state (`snapshot save`) and seed a new cluster from a backup
    /// (`snapshot restore`).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCmd,
    },
    /// The cluster's certificates: create a CA with a certificate per role and the first admin
    /// token (`certs init`), or renew one role's certificate (`certs issue`).
    Certs {
        #[command(subcommand)]
        command: CertsCmd,
    },
    /// Named tokens with roles (admins only): `token create --role R --name N` prints a new
    /// token alone on stdout; `token list`; `token revoke NAME`.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// The group of masters: list, add and remove masters, hand leadership over.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Run a local cluster in the foreground (3 masters, 2 workers); Ctrl-C stops it.
    Up(UpArgs),
    /// Start a local cluster, run a job, kill the leader and a worker, show the result.
    Demo(DemoArgs),
    /// Print a shell completion script: `flotilla completions bash > /etc/bash_completion.d/flotilla`,
    /// `… zsh > "${fpath[1]}/_flotilla"`, `… fish > ~/.config/fish/completions/flotilla.fish`.
    Completions {
        /// The shell: bash, zsh, fish (also elvish, powershell).
        shell: clap_complete::Shell,
    },
    /// Write man pages generated from these definitions, one per command
    /// (flotilla.1, flotilla-job-wait.1, …), into DIR: a man1 directory such as
    /// /usr/local/share/man/man1 (then `man flotilla-job-wait`), or any (`man -l DIR/flotilla.1`).
    Man {
        /// The directory to write into (created if missing), e.g. /usr/local/share/man/man1.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Print the pages written as a JSON array.
        #[arg(long)]
        json: bool,
    },
}

/// How masters and workers write their logs on stderr.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log shippers.
    Json,
}

/// How to reach the cluster (every client command takes these).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Master addresses, comma-separated; any one will do, the leader is found from it.
    #[arg(long, env = "FLOTILLA_MASTERS", default_value = "127.0.0.1:7001")]
    pub masters: String,
    /// File holding the cluster token (or set FLOTILLA_TOKEN).
    #[arg(long, env = "FLOTILLA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster's certificates (`flotilla certs init`): talk TLS, trusting its CA; its
    /// admin.token is the token when no other is given.
    #[arg(long, env = "FLOTILLA_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// How long to keep retrying while no master answers or no leader is elected.
    #[arg(long, default_value = "15s")]
    pub retry_for: String,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MasterCli {
    #[command(subcommand)]
    pub command: Option<MasterCmd>,
    #[command(flatten)]
    pub run: MasterArgs,
}

#[derive(Subcommand, Debug)]
pub enum MasterCmd {
    /// Disaster recovery after losing a quorum for good: rebuilds a working group from this
    /// stopped master's data directory. UNSAFE: what the lost masters committed without this
    /// one is lost, and entries this one never saw committed are kept. Its old files move to
    /// DIR/pre-recovery-<time>/. Then start this master (`flotilla master --id N …`); the other
    /// masters of --peers start with `--await-add` and empty data directories, and are caught
    /// up by it. The group gets a new identity: the lost masters can never rejoin it.
    Recover {
        /// The surviving master's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The surviving master's id.
        #[arg(long)]
        id: u64,
        /// The new group: ID=HOST:PORT,… including this master.
        #[arg(long)]
        peers: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Save a consistent, checksummed backup of the cluster's state, taken through the leader
    /// while the cluster runs (everything acknowledged before the request is in it).
    Save {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Seed the data directory of one master of a NEW cluster from a backup (run it for each
    /// master, with the same --peers; then start them with `flotilla master --id N --listen …
    /// --data-dir DIR --peers …`). The new cluster gets its own identity: masters of the old
    /// one can never join it by mistake.
    Restore {
        file: PathBuf,
        /// An empty directory for this master's data.
        #[arg(long)]
        data_dir: PathBuf,
        /// This master's id in the new cluster.
        #[arg(long)]
        id: u64,
        /// Every master of the new cluster: ID=HOST:PORT,…
        #[arg(long)]
        peers: String,
        #[arg(long)]
        json: bool,
    },
    /// Check a backup's checksum and show what it holds.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct MasterArgs {
    /// A TOML file of these flags (`data_dir = "/var/lib/flotilla"`, `peers = "1=…,2=…"`);
    /// flags on the command line and FLOTILLA_* variables override it; an unknown key is an
    /// error.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log lines as text, or as one JSON object per line for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "FLOTILLA_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// This master's id in the group (a positive number, unique, never reused).
    // Optional in the type only: `master recover` runs without it.
    #[arg(long, required = true)]
    pub id: Option<u64>,
    /// Address to listen on for peers, workers and clients.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: String,
    /// Where the Raft log and snapshots are kept.
    #[arg(long, required = true)]
    pub data_dir: Option<PathBuf>,
    /// First start of a new group: every master of it, ID=HOST:PORT,… (include this one).
    /// Later starts read the membership from the data directory; this is then ignored.
    #[arg(long, conflicts_with = "join", required_unless_present_any = ["join", "await_add"])]
    pub peers: Option<String>,
    /// Join a running group through one or more of its masters (HOST:PORT,…): this master
    /// is added as a learner, catches up, and votes once it is current. Without --peers or
    /// --join, use --await-add and run `flotilla cluster add-master` yourself.
    #[arg(long, value_name = "HOST:PORT,…")]
    pub join: Option<String>,
    /// Start without a group and wait for `flotilla cluster add-master ID=HOST:PORT`.
    #[arg(long, conflicts_with_all = ["peers", "join"])]
    pub await_add: bool,
    /// The address other masters, workers and clients reach this master at, if not
    /// --listen (which may be 0.0.0.0). Used by --join and --await-add.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// File holding the cluster token (or set FLOTILLA_TOKEN). Required to listen beyond
    /// loopback. With --certs and no token given, the certificates' admin.token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The cluster's certificates (`flotilla certs init`): serve TLS only, and know peers and
    /// workers by their certificates. Files there are reloaded when they change (or on SIGHUP).
    #[arg(long, env = "FLOTILLA_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// With --certs: accept plain text as well, and fall back to it towards peers, while a
    /// running plain-text cluster moves to TLS (restart each master with this, then each
    /// again without it). See the README's "Moving a cluster to TLS".
    #[arg(long, requires = "certs")]
    pub tls_upgrade: bool,
    /// Serve plain text, without certificates: tokens and task commands cross the network
    /// readable by anyone on the path. For experiments on a loopback address only.
    #[arg(long, conflicts_with = "certs")]
    pub insecure_plaintext: bool,
    /// Declare a worker lost after this long without a heartbeat.
    #[arg(long, default_value = "3s")]
    pub worker_timeout: String,
    /// Minimum Raft election timeout (the maximum is twice this). Failover takes about this
    /// long; raise it on slow networks to avoid needless elections.
    #[arg(long, default_value = "300ms")]
    pub election_timeout: String,
    /// Raft heartbeat interval (must be well below the election timeout).
    #[arg(long, default_value = "75ms")]
    pub heartbeat: String,
    /// Snapshot the state and compact the Raft log every this many entries.
    #[arg(long, default_value_t = 5000)]
    pub snapshot_every: u64,
    /// Where this master runs, e.g. region=eu,zone=a. Status and the dashboard warn when one
    /// zone holds a majority of the voting masters (losing it would lose the cluster).
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Open connections one client address may hold (workers, peers and clients all count;
    /// more are closed at once). Raise it when many workers share one address.
    #[arg(long, default_value_t = 512)]
    pub max_connections_per_client: usize,
    /// Close a connection that has had no request in flight for this long (a worker's
    /// session is always in flight; clients reconnect when they need to).
    #[arg(long, default_value = "5m")]
    pub idle_timeout: String,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct WorkerCli {
    #[command(subcommand)]
    pub command: Option<WorkerCmd>,
    #[command(flatten)]
    pub run: WorkerArgs,
}

#[derive(Subcommand, Debug)]
pub enum WorkerCmd {
    /// List the workers: state (ready, cordoned, draining, drained, lost), running and queued
    /// tasks.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON: an array of {name, state, running, queued, cpus, labels, …}.
        #[arg(long)]
        json: bool,
        /// Answer from whichever master responds, without a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Give a worker no new tasks; what it holds runs on.
    Cordon {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Take a worker out of service: no new tasks, its queued tasks move to other workers,
    /// its running tasks finish; after the deadline they are stopped and re-queued. The
    /// worker is then `drained` (and stays out of service until uncordoned).
    Drain {
        name: String,
        /// How long running tasks may take (`none`: as long as they take).
        #[arg(long, default_value = "1h")]
        deadline: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Put a cordoned, draining or drained worker back in service.
    Uncordon {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// A TOML file of these flags (`cpus = 16`, `labels = { zone = "a" }`); flags on the
    /// command line and FLOTILLA_* variables override it; an unknown key is an error.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log lines as text, or as one JSON object per line for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "FLOTILLA_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Master addresses, comma-separated (the worker learns the others from the leader).
    #[arg(long, env = "FLOTILLA_MASTERS", default_value = "127.0.0.1:7001")]
    pub masters: String,
    /// On SIGTERM (or Ctrl-C) the worker drains: it takes no new tasks, its queued ones move
    /// to other workers, and its running ones finish; it exits 0 once it holds nothing. Tasks
    /// still running after this long are stopped and re-queued elsewhere (`none`: no limit).
    /// A second signal stops it at once.
    #[arg(long, default_value = "60s")]
    pub drain_deadline: String,
    /// CPU slots this worker offers (default: the machine's cpus).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Cpus' worth of tasks to keep queued beyond the running ones, so that a finished task is
    /// replaced at once. Default: adaptive, about 250 ms of work at the task durations this
    /// worker measures (16 per cpu until it has measured some). Queued tasks wait for this
    /// worker even if another frees up first; use 0 for long tasks on a busy, uneven cluster.
    #[arg(long)]
    pub prefetch: Option<u32>,
    /// Serve this worker's Prometheus metrics at http://HOST:PORT/metrics (spawn latency,
    /// tasks started and finished, running and queued tasks). Off by default.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Where to serve the task outputs this worker holds (other workers copy and fetch them
    /// there; masters fetch them for `job fetch`). Default: a free port, on loopback when
    /// every master is on loopback, on every interface otherwise. TLS with the worker
    /// certificate when the worker has --certs.
    #[arg(long, value_name = "HOST:PORT")]
    pub outputs_listen: Option<std::net::SocketAddr>,
    /// The host name or address other members reach this worker's outputs at. Default: the
    /// --outputs-listen address, or, listening on every interface, the address this machine
    /// uses to reach the first master.
    #[arg(long, value_name = "HOST")]
    pub advertise: Option<String>,
    /// How often the worker asks the leader which stored outputs no kept job needs any more
    /// (their job was removed by retention or purge) and deletes those.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub outputs_gc: String,
    /// Outputs stored more recently than this are not asked about (a task's result may
    /// still be on its way to the masters).
    #[arg(long, value_name = "DURATION", default_value = "15m")]
    pub outputs_gc_age: String,
    /// Memory this worker offers to tasks that ask for memory (`submit --memory`), e.g. 4G.
    /// Default: the machine's total memory.
    #[arg(long)]
    pub memory: Option<String>,
    /// Named resources this worker offers, NAME=COUNT,…, e.g. gpu=2,license=4. A task asking
    /// for gpu=1 holds one unit and learns which in FLOTILLA_RESOURCE_GPU (and, for gpu,
    /// CUDA_VISIBLE_DEVICES).
    #[arg(long, default_value = "")]
    pub resources: String,
    /// Labels, e.g. region=eu,zone=a; jobs select workers by them.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Unique worker name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Worker state directory (default: ./.flotilla/worker-NAME).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// File holding the cluster token (or set FLOTILLA_TOKEN); not needed with --certs.
    #[arg(long, env = "FLOTILLA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster's certificates (`flotilla certs init`): connect over TLS with the worker
    /// certificate, which is what lets the worker in.
    #[arg(long, env = "FLOTILLA_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Run every task as this user (name or uid), so tasks cannot read the worker's files,
    /// its certificates or its /proc entries. The worker must run as root.
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Keep each task's working directory (DATA_DIR/tasks/JOB-INDEX-TERM-ATTEMPT) after it
    /// ends; by default it is removed.
    #[arg(long)]
    pub keep_task_dirs: bool,
    /// Exit 0 once drained, whoever drained it (`worker drain`, or an autoscaling pool's
    /// scale-in). The autoscaling providers start their workers with it.
    #[arg(long, env = "FLOTILLA_EXIT_WHEN_DRAINED")]
    pub exit_when_drained: bool,
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCmd {
    /// Add a schedule: the job (every `submit` flag, or --file) is submitted once per period
    /// of the cron expression, by the leader, exactly once per period across failovers.
    /// Periods missed while no leader could act are not each made up for: the next leader
    /// launches the latest one only.
    Add(Box<ScheduleAddArgs>),
    /// List the schedules: expression, next and last period, jobs launched and skipped.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON: {schedules: [{name, cron, timezone, overlap, paused, next, last_period,
        /// last_job, launched, skipped, …}]}.
        #[arg(long)]
        json: bool,
        /// Answer from whichever master responds, without a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Stop launching periods (the schedule is kept).
    Pause {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Launch periods again, from the next one (periods missed while paused are not launched).
    Resume {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule (the jobs it submitted stay).
    Remove {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AutoscaleCmd {
    /// Set a pool's policy (a new pool, or a new policy for one; a paused pool resumes). The
    /// leader starts workers when waiting work wants more cpus than the pool has, and drains
    /// and stops a worker that held no task for the idle time; it never stops one that runs
    /// tasks or holds the only copy of an output.
    Set(Box<AutoscaleSetArgs>),
    /// Show the pools: policy, workers and where each is, failures, the last decision.
    Show {
        /// Only this pool.
        pool: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON: {pools: [{pool, provider, min, max, target, idle, workers: [{name,
        /// stage, state, tasks, …}], joined, pending, retiring, paused, failures, …}]}.
        #[arg(long)]
        json: bool,
        /// Answer from whichever master responds, without a linearizable read.
        #[arg(long)]
        stale: bool,
    },
    /// Resume a pool paused after failed launches.
    Resume {
        pool: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Stop managing a pool (the workers it started stay; drain them with `worker drain`).
    Remove {
        pool: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct AutoscaleSetArgs {
    /// A TOML file of the policy, with the API's field names (`provider = "slurm"`, `max = 8`,
    /// `idle = "10m"`, `selector = { pool = "big" }`, `sbatch_args = ["--mem=4G"]`, …); flags
    /// given beside it override its fields; an unknown key is an error.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// What starts and stops the workers: `local` (processes on the leading master's
    /// machine), `command` (your commands), `slurm` (one sbatch job per worker), `kubernetes`
    /// (the replica count of a worker StatefulSet).
    #[arg(long, value_parser = ["local", "command", "slurm", "kubernetes"])]
    pub provider: Option<String>,
    /// The pool's name (default `auto`); its workers are named POOL-1, POOL-2, …
    #[arg(long)]
    pub pool: Option<String>,
    /// Workers the pool keeps however idle (default 0).
    #[arg(long)]
    pub min: Option<u32>,
    /// Workers the pool never goes beyond.
    #[arg(long)]
    pub max: Option<u32>,
    /// How long a worker may hold no task before it is drained and stopped (default 5m).
    #[arg(long)]
    pub idle: Option<String>,
    /// Labels the pool's workers carry (k=v,…): only jobs whose selector they meet count
    /// toward the pool.
    #[arg(long)]
    pub selector: Option<String>,
    /// Cpus each new worker offers (default: what its machine has).
    #[arg(long)]
    pub worker_cpus: Option<u32>,
    /// `work-per-cpu=DURATION`: at most that much waiting work per cpu (task run times as
    /// measured; a task not measured yet counts as a whole cpu); or `oldest-waiting=DURATION`:
    /// one more worker whenever a task has waited that long. Default work-per-cpu=10s.
    #[arg(long)]
    pub target: Option<String>,
    /// After a scale-in, no scale-up for this long (default 10s).
    #[arg(long)]
    pub cooldown_up: Option<String>,
    /// After a scale-up, no scale-in for this long (default 10s).
    #[arg(long)]
    pub cooldown_down: Option<String>,
    /// A started worker that has not joined by then is cancelled (and counts as a failure;
    /// 10 in a row pause the pool). Default 5m.
    #[arg(long)]
    pub join_timeout: Option<String>,
    /// `command`: starts the workers named in $FLOTILLA_WORKER_NAMES (space-separated), e.g.
    /// `for n in $FLOTILLA_WORKER_NAMES; do ssh host flotilla worker --name $n
    /// $FLOTILLA_WORKER_ARGS & done`. Lines `NAME HANDLE` it prints are kept as handles.
    #[arg(long)]
    pub add_command: Option<String>,
    /// `command`: stops $FLOTILLA_WORKER_NAME ($FLOTILLA_WORKER_HANDLE: what the add command
    /// printed for it).
    #[arg(long)]
    pub remove_command: Option<String>,
    /// `slurm`: the partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// `slurm`: each worker job's time limit (`1h`); Slurm signals the worker early enough
    /// for it to drain first.
    #[arg(long)]
    pub time_limit: Option<String>,
    /// `slurm`: one more sbatch argument (repeat it for more), e.g. `--sbatch-arg=--mem=4G`.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// `kubernetes`: the workers' StatefulSet (its pods are the workers, named after them;
    /// see deploy/kubernetes).
    #[arg(long)]
    pub statefulset: Option<String>,
    /// `kubernetes`: its namespace (default `default`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// `kubernetes`: the API server, https://HOST:PORT (default: the in-cluster one). The
    /// token and CA are the pod's service account's, or FLOTILLA_KUBE_TOKEN_FILE and
    /// FLOTILLA_KUBE_CA on the masters.
    #[arg(long)]
    pub api: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the pool as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ScheduleAddArgs {
    /// The schedule's name: 1 to 64 letters, digits, '-', '_' or '.'.
    pub schedule: String,
    /// When: five fields (minute hour day-of-month month day-of-week, e.g. "0 3 * * *" for
    /// 03:00 daily) or six with seconds first ("*/10 * * * * *"); @daily, @hourly, … too.
    #[arg(long)]
    pub cron: String,
    /// The IANA time zone the expression is read in, e.g. Europe/Berlin (default UTC).
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// When a period starts while the previous period's job still runs: skip the period
    /// (journalled), or allow a second job.
    #[arg(long, default_value = "skip", value_parser = ["skip", "allow"])]
    pub overlap: String,
    /// The job's flags; its --json prints the schedule as JSON.
    #[command(flatten)]
    pub job: SubmitArgs,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Job name.
    #[arg(long)]
    pub name: Option<String>,
    /// Task indices: 1-1000 or 1,5,9-12. Each task sees its index in FLOTILLA_TASK_INDEX.
    #[arg(long)]
    pub array: Option<String>,
    /// CPU slots each task needs.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Times a failed task (non-zero exit, timeout) is run again.
    #[arg(long)]
    pub retries: Option<u32>,
    /// Kill a task attempt after this long, e.g. 30s (counts as a failure).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Higher runs first (FIFO within a priority).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Only run on workers with these labels, e.g. zone=a,gpu=yes.
    #[arg(long)]
    pub selector: Option<String>,
    /// Named resources each task holds, NAME=COUNT (repeatable or comma-separated), e.g.
    /// gpu=1. Only workers offering them run it; the task learns its units from
    /// FLOTILLA_RESOURCE_<NAME> (and CUDA_VISIBLE_DEVICES for gpu).
    #[arg(long = "resource", value_name = "NAME=COUNT")]
    pub resources: Vec<String>,
    /// Memory each task holds while it runs, e.g. 2G; placement never over-commits a
    /// worker's memory.
    #[arg(long)]
    pub memory: Option<String>,
    /// Most memory (address space) each task's process may map, e.g. 512M: an allocation
    /// beyond it fails. Unlike --memory this is not reserved, only enforced.
    #[arg(long, value_name = "SIZE")]
    pub limit_memory: Option<String>,
    /// Most files each task may hold open at once.
    #[arg(long, value_name = "N")]
    pub limit_files: Option<u64>,
    /// Most processes and threads the task's user may run (its other processes count too, so
    /// give the workers `--run-as` a user of their own; root is not held to it).
    #[arg(long, value_name = "N")]
    pub limit_processes: Option<u64>,
    /// Soft: run on workers with these labels when they have room, e.g. zone=a (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub prefer: Vec<String>,
    /// Soft: run on workers with these labels only when others are full (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub avoid: Vec<String>,
    /// Spread the tasks evenly over the values of this worker label, e.g. zone.
    #[arg(long, value_name = "LABEL")]
    pub spread: Option<String>,
    /// Shell command run once after all tasks succeed, with their stdout (in index order) on
    /// its stdin; its stdout is the job's result.
    #[arg(long)]
    pub reduce: Option<String>,
    /// Extra environment variable for the tasks, KEY=VALUE (repeatable).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Start only once these jobs have succeeded (ids, comma-separated or repeated). If one
    /// fails or is cancelled, this job is cancelled, with a reason naming it. Their tasks'
    /// outputs are in $FLOTILLA_INPUT_DIR/JOB/INDEX/… of every task of this job.
    #[arg(long, value_name = "JOB[,JOB]")]
    pub after: Vec<String>,
    /// Start only once these jobs have ended, however they ended (their outputs are given
    /// as for --after).
    #[arg(long, value_name = "JOB[,JOB]")]
    pub after_finished: Vec<String>,
    /// Pair each task with the task of the same index of these jobs: task i starts as soon
    /// as their task i has succeeded (not when the whole job has), and reads only its outputs,
    /// in $FLOTILLA_INPUT_DIR/JOB/i/…. Every index of this job must be one of theirs. If one
    /// of them fails or is cancelled, this job is cancelled.
    #[arg(long, value_name = "JOB[,JOB]")]
    pub each: Vec<String>,
    /// Tasks of this job that wait for others of it, TASKS=NEEDED (repeatable): `10=1-9` runs
    /// task 10 once tasks 1 to 9 succeeded, with their outputs in
    /// $FLOTILLA_INPUT_DIR/THIS_JOB/INDEX/…. A cycle or an index the job lacks is refused.
    #[arg(long, value_name = "TASKS=NEEDED")]
    pub needs: Vec<String>,
    /// Copies of each task's outputs ($FLOTILLA_OUTPUT_DIR) kept on other workers before the
    /// task counts as succeeded (default 2; 0 keeps only the worker's own copy).
    #[arg(long, value_name = "R")]
    pub replicas: Option<u32>,
    /// Most bytes of outputs each task may leave, e.g. 200M (default 1G); a task that leaves
    /// more fails with the reason.
    #[arg(long, value_name = "SIZE")]
    pub output_quota: Option<String>,
    /// Read the job from a TOML file (same field names; command-line flags override).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Wait for the job to finish (progress on stderr; exit status 1 if it failed).
    #[arg(long)]
    pub wait: bool,
    /// Print JSON: {"id": N}; with --wait, the finished job's detail (as `job show --json`).
    #[arg(long)]
    pub json: bool,
    /// The program and its arguments, passed verbatim (no shell): `-- echo hi`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// List jobs, newest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Show at most this many (the newest).
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// Every job the cluster keeps (all pages; overrides --limit).
        #[arg(long)]
        all: bool,
        /// Only jobs in this state: waiting, running, reducing, succeeded, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        stale: bool,
    },
    /// Show one job: state, task counts, why it is stuck or failed.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        stale: bool,
    },
    /// Wait until a job finishes; exit status 0 if it succeeded, 1 otherwise.
    Wait {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        /// Print the finished job's detail as JSON on stdout (as `job show --json`).
        #[arg(long)]
        json: bool,
    },
    /// Print a job's result: the reduce step's output (or, without one, the tasks' stdout in
    /// index order).
    Result {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON: {id, state, result, truncated} (result is null until it succeeded).
        #[arg(long)]
        json: bool,
    },
    /// Per-task results.
    Results {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
        /// Skip this many tasks (in index order).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Show at most this many tasks.
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        stale: bool,
    },
    /// List the files a job's tasks left in $FLOTILLA_OUTPUT_DIR: path, size, SHA-256 and
    /// the workers holding a copy.
    Outputs {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Download a job's outputs to DIR/INDEX/PATH (DIR/reduce/PATH for the reduce step's),
    /// each file hash-checked. Files already there with the right bytes are skipped, so an
    /// interrupted fetch resumes where it stopped.
    Fetch {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        /// Only this task's outputs: its index, or `reduce`.
        #[arg(long, value_name = "INDEX")]
        task: Option<String>,
        /// The directory to write into (created if missing).
        #[arg(long, short = 'o', value_name = "DIR")]
        output: PathBuf,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A task's whole stdout (or --stderr), however long: the first 64 KiB are in the
    /// results, the rest is kept on the worker that ran the attempt. With --follow, prints
    /// what a running attempt writes as it writes it (through the leader, from its worker),
    /// until the task ends; a retry starts a new attempt, marked on stderr.
    Logs {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        /// The task: its index, or `reduce` (default: 0, a job without an array).
        #[arg(long, value_name = "INDEX", default_value = "0")]
        task: String,
        /// Show stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Print the running attempt's stream as it is written, until the task has ended.
        #[arg(long)]
        follow: bool,
        /// Print JSON lines instead of the raw stream: {task, stream, attempt, offset, text}
        /// for each piece (one for the whole log without --follow).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: waiting tasks are dropped, running ones killed.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON: {id, stopped}.
        #[arg(long)]
        json: bool,
    },
    /// Remove finished jobs now, with their results (every master drops them at the same
    /// Raft entry; the journal keeps each one's summary). Unfinished jobs are refused: cancel
    /// them first.
    Purge {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show or change how long finished jobs stay (a cluster-wide setting, replicated like
    /// everything else). Without options, shows the setting and what is kept now.
    Retention {
        #[command(flatten)]
        client: ClientArgs,
        /// Remove finished jobs this long after they finished: 24h, 7d (at least 1m), or `none`.
        #[arg(long)]
        max_age: Option<String>,
        /// Keep at most this many finished jobs, the newest (10 to 10,000,000; default 10,000).
        #[arg(long)]
        max_finished: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum IncidentCmd {
    /// Write a report: elections and unavailability, workers lost and back, tasks rescheduled
    /// or retried, fenced results, time to full recovery, and the timeline.
    Report(IncidentArgs),
}

#[derive(Args, Debug)]
pub struct IncidentArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Start of the window: a duration ago (30m, 1h, 2d) or a UTC time. Default: everything
    /// the journal holds.
    #[arg(long)]
    pub since: Option<String>,
    /// End of the window (same forms). Default: now.
    #[arg(long)]
    pub until: Option<String>,
    /// md (Markdown), html (one self-contained page with an SVG timeline) or json (the
    /// report's figures and events).
    #[arg(long, default_value = "md")]
    pub format: String,
    /// The same as --format json.
    #[arg(long)]
    pub json: bool,
    /// Write the report here instead of standard output.
    #[arg(short, long)]
    pub output: Option<std::path::PathBuf>,
    /// Read from whichever master answers, without a linearizable read.
    #[arg(long)]
    pub stale: bool,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: Option<EventsCmd>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print JSON (one event object per line).
    #[arg(long)]
    pub json: bool,
    /// Keep printing new events as they happen.
    #[arg(long, short)]
    pub follow: bool,
    /// Only events after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Only events at or after this time: a duration ago (30m, 1h, 2d) or a UTC time
    /// (2026-11-25T21:38:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Only events before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only events of these kinds, comma-separated: `audit` (who asked to change what, from
    /// where), `leader_elected`, `worker_lost`, `job_submitted`, … (the `kind` of `--json`).
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    /// Read from the answering master's replica without asking the leader (may lag).
    #[arg(long)]
    pub stale: bool,
}

#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// Show or change how much history the journal keeps (a cluster-wide setting, replicated
    /// like everything else). Without options, shows the setting and what is kept now.
    Retention(RetentionArgs),
}

#[derive(Args, Debug)]
pub struct RetentionArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Keep at most this many events, the newest (100 to 1,000,000; default 20,000).
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Drop events older than this: a duration like 7d or 12h (at least 1m), or `none`.
    #[arg(long)]
    pub max_age: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// List the masters of the group: id, address, voter or learner, and which one leads.
    Members {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON: an array of {id, address, role, leader}.
        #[arg(long)]
        json: bool,
    },
    /// Add a running master to the group (start it with `flotilla master --await-add`, or
    /// use `flotilla master --join`, which does this itself). It joins as a learner, catches
    /// up, and votes once it is current; this waits for that.
    AddMaster {
        /// The new master: ID=HOST:PORT (a new id, never used in this group before).
        member: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove a master from the group (refused if it would leave no quorum, or no voter).
    /// Its id is retired. Stop its process afterwards.
    RemoveMaster {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
    /// Hand leadership to another voter (by default the most up-to-date one that answers),
    /// e.g. before restarting the leader's machine. A master sent SIGTERM does this itself.
    TransferLeadership {
        /// The master to lead next.
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a named token and print it alone on stdout (it is shown this once; the masters
    /// keep only its SHA-256). Roles: admin (everything), operator (maintenance, cancel any
    /// job), submit (submit, cancel its own jobs, read), read (read only, the dashboard),
    /// worker (hold a worker session, nothing else).
    Create {
        /// admin, operator, submit, read or worker.
        #[arg(long)]
        role: String,
        /// A name for it: letters, digits, '.', '_' and '-' (what `token list` shows and
        /// `token revoke` takes).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        client: ClientArgs,
        /// Print {name, role, token} as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// List the credentials: name, role, who made it and when (never the tokens). The
    /// bootstrap token (admin.token or --token-file) is listed as `bootstrap`.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON: an array of {name, role, created_ms, created_by, bootstrap}.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once, on every master. `bootstrap` revokes the bootstrap token (once
    /// another admin token exists; the last admin credential cannot be revoked).
    Revoke {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct SchedulingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// `fair` or `fifo` (a cluster-wide setting, committed through Raft).
    #[arg(long)]
    pub sharing: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where the cluster keeps its data and logs.
    #[arg(long, default_value = ".flotilla")]
    pub dir: PathBuf,
    /// Number of masters.
    #[arg(long, default_value_t = 3)]
    pub masters: u64,
    /// Number of workers.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// CPU slots per worker.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Port of the first master; the others follow.
    #[arg(long, default_value_t = 7001)]
    pub port: u16,
    /// Print one JSON line on stdout once the cluster is up: masters, certs, dashboard, dir.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the temporary directory (data and logs) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Print the outcome as JSON on stdout (the narrative goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create a cluster CA (DIR/ca.pem, DIR/ca.key), a certificate and key for masters,
    /// workers and clients, and the first admin token (DIR/admin.token). Give every member
    /// --certs DIR (or FLOTILLA_CERTS=DIR); keep ca.key off the members if you can (only
    /// `certs issue` needs it). Refuses to replace an existing CA.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Host names and IP addresses the masters are reached at, for curl and browsers
        /// (Flotilla's own clients verify masters by the name master.flotilla instead).
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Renew the certificate and key of one role with the CA in DIR (rotation): members using
    /// them pick the new ones up within seconds, or at once on SIGHUP, without a restart.
    Issue {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// master, worker or client.
        #[arg(long)]
        role: String,
        /// For masters: the host names and addresses to name (as for `certs init`).
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}
