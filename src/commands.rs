//! Client commands. Output for people by default, `--json` for scripts; errors are one line
//! on stderr and a non-zero exit status.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::CommandFactory;

use flotilla_client::Client;
use flotilla_core::units::parse_duration;
use flotilla_proto::api::{JobDetail, JobQuery, JobState, Retention, SubmitRequest, TaskState};

use crate::cli::{ClientArgs, Cmd, EventsArgs, EventsCmd, JobCmd, RetentionArgs, SubmitArgs};
use crate::roles::{parse_labels, parse_resources};

pub async fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Master(crate::cli::MasterCli { command: None, run }) => {
            crate::roles::master(run).await.map(|_| ExitCode::SUCCESS)
        }
        Cmd::Master(crate::cli::MasterCli { command: Some(command), .. }) => crate::backup::master(command).await,
        Cmd::Snapshot { command } => crate::backup::snapshot(command).await,
        Cmd::Worker(crate::cli::WorkerCli { command: None, run }) => {
            crate::roles::worker(run).await.map(|_| ExitCode::SUCCESS)
        }
        Cmd::Worker(crate::cli::WorkerCli { command: Some(command), .. }) => worker(command).await,
        Cmd::Submit(a) => submit(a).await,
        Cmd::Job { command } => job(command).await,
        Cmd::Schedule { command } => schedule(command).await,
        Cmd::Autoscale { command } => autoscale(command).await,
        Cmd::Status { client, json, stale } => status(&connect(&client)?, json, stale).await,
        Cmd::Events(a) => events(a).await,
        Cmd::Incident { command: crate::cli::IncidentCmd::Report(a) } => incident_report(a).await,
        Cmd::Scheduling(a) => scheduling(a).await,
        Cmd::Certs { command } => certs(command),
        Cmd::Cluster { command } => cluster(command).await,
        Cmd::Token { command } => token(command).await,
        Cmd::Up(a) => crate::local::up(a).await,
        Cmd::Demo(a) => crate::demo::run(a).await,
        Cmd::Completions { shell } => {
            // Generated into memory first: the generator panics on a failed write, and a
            // closed pipe (`| head`) is no error of ours.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut crate::cli::Cli::command(), "flotilla", &mut script);
            let mut out = std::io::stdout().lock();
            match out.write_all(&script).and_then(|()| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Cmd::Man { dir, json } => man_pages(&dir, json),
    }
}

/// `flotilla man --dir DIR`: a page per command, from the clap definitions.
fn man_pages(dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(crate::cli::Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("flotilla") && n.ends_with(".1"))
        .collect();
    pages.sort();
    if json {
        print_json(&pages)?;
    } else {
        println!(
            "{} man pages written to {} (read one with `man -l {}/flotilla.1`; installed in a \
             man1 directory, `man flotilla-submit`)",
            pages.len(),
            dir.display(),
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    let token = crate::token_or_admin(args.token_file.as_deref(), args.certs.as_deref())?;
    let retry = parse_duration(&args.retry_for).context("--retry-for")?;
    let addresses = args.masters.split(',').map(str::to_string).collect();
    let identity = match &args.certs {
        Some(dir) => {
            Some(flotilla_tls::Identity::load(dir, flotilla_tls::Role::Client).map_err(|e| anyhow!("--certs: {e}"))?)
        }
        None => None,
    };
    Ok(Client::with_identity(addresses, token.as_deref(), identity)?.with_retry_for(retry))
}

fn job_id(text: &str) -> anyhow::Result<u64> {
    text.trim().parse().map_err(|_| anyhow!("'{text}' is not a job id (job ids are numbers)"))
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Where `job logs` writes: the raw stream, or with `--json` one object per piece.
struct LogSink<'a> {
    json: bool,
    task: &'a str,
    stream: &'a str,
}

impl LogSink<'_> {
    fn write(&self, attempt: Option<&str>, offset: u64, bytes: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if self.json {
            let piece = serde_json::json!({
                "task": self.task,
                "stream": self.stream,
                "attempt": attempt,
                "offset": offset,
                "text": String::from_utf8_lossy(bytes),
            });
            writeln!(out, "{piece}").context("writing the log")?;
        } else {
            out.write_all(bytes).context("writing the log")?;
        }
        out.flush().context("writing the log")
    }

    /// The rest of a file from `offset`, in pieces of at most 1 MiB.
    fn copy(&self, attempt: Option<&str>, file: &mut std::fs::File, mut offset: u64) -> anyhow::Result<()> {
        use std::io::Read;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).context("the downloaded log")?;
            if n == 0 {
                return Ok(());
            }
            self.write(attempt, offset, &buf[..n])?;
            offset += n as u64;
        }
    }
}

/// `job logs`: the whole stream from the worker that keeps it, or (not longer than a result
/// keeps) from the result itself.
async fn task_logs(
    client: &Client,
    id: u64,
    task: &str,
    stderr: bool,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let index = match task {
        "reduce" => None,
        i => Some(i.parse::<u64>().map_err(|_| anyhow!("--task must be an index or 'reduce', not '{i}'"))?),
    };
    let stream = if stderr { "stderr" } else { "stdout" };
    let sink = LogSink { json, task, stream };
    // With --follow: what each running attempt writes, as it writes it, until the task ends.
    // `shown` is the attempt printed last and how much of it.
    let mut shown: Option<(String, u64)> = None;
    let row = loop {
        let job = client.job(id, false).await?;
        let row = match index {
            Some(i) => client.results(id, 0, None, false).await?.into_iter().find(|r| r.index == i),
            None => None,
        };
        let done = match (&row, index) {
            (Some(r), _) => matches!(r.state, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled),
            (None, None) => job.state.is_terminal(),
            (None, Some(i)) => bail!("job {id} has no task {i}"),
        };
        if done || !follow {
            break row;
        }
        let offset = shown.as_ref().map_or(0, |(_, n)| *n);
        let live = match client.live_log(id, task, stream, offset).await {
            Ok(l) => l,
            Err(e) if e.is_not_found() => bail!("{e}"),
            Err(e) => {
                eprintln!("cannot read the running attempt's log now: {e}");
                flotilla_proto::api::LiveLog::default()
            }
        };
        if live.running {
            let attempt = live.attempt.clone().unwrap_or_default();
            if shown.as_ref().is_some_and(|(a, _)| *a != attempt) {
                // A new attempt: its stream starts again (this read was at the old offset).
                eprintln!("-- attempt {attempt} --");
                shown = Some((attempt, 0));
                continue;
            }
            sink.write(Some(&attempt), offset, live.text.as_bytes())?;
            let more = live.next_offset < live.total;
            shown = Some((attempt, live.next_offset));
            if more {
                continue;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    // What was printed live of the attempt whose result is recorded is not printed again.
    let recorded = row.as_ref().and_then(|r| Some(format!("{}.{}", r.term?, r.attempt?)));
    let skip = match (&shown, &recorded) {
        (Some((a, n)), Some(r)) if a == r => *n,
        // A reduce step's row is not at hand: the attempt printed is taken for the one recorded.
        (Some((_, n)), None) => *n,
        (Some(_), Some(r)) => {
            eprintln!("-- attempt {r} (recorded) --");
            0
        }
        (None, _) => 0,
    };
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let part = dir.path().join("log");
    match client.task_log(id, task, stream, &part, std::time::Duration::from_secs(3600)).await {
        Ok(_) => {
            use std::io::Seek;
            let mut file = std::fs::File::open(&part).context("the downloaded log")?;
            file.seek(std::io::SeekFrom::Start(skip)).context("the downloaded log")?;
            sink.copy(recorded.as_deref(), &mut file, skip)?;
        }
        Err(e) if e.is_not_found() && client.job(id, false).await.is_ok() => {
            let text = match (row, index) {
                (Some(r), _) => {
                    if stderr {
                        r.stderr
                    } else {
                        r.stdout
                    }
                }
                (None, _) => client.result(id, false).await?.result.unwrap_or_default(),
            };
            let rest = text.as_bytes().get(skip as usize..).unwrap_or_default();
            sink.write(recorded.as_deref(), skip, rest)?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_pool(p: &flotilla_proto::api::PoolView) {
    let state = if p.paused { " (paused)" } else { "" };
    let provider =
        serde_json::to_value(p.provider).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    println!(
        "pool {}{state}: {provider}, {} to {} workers, target {}, idle {}",
        p.pool, p.min, p.max, p.target, p.idle
    );
    if !p.selector.is_empty() {
        let labels: Vec<String> = p.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  selector:  {}", labels.join(","));
    }
    for (k, v) in &p.options {
        println!("  {k}: {v}");
    }
    println!("  workers:   {} joined, {} on their way, {} retiring", p.joined, p.pending, p.retiring);
    for w in &p.workers {
        let state = w.state.as_deref().unwrap_or("not joined");
        let handle = w.handle.as_deref().map(|h| format!(" [{h}]")).unwrap_or_default();
        println!("    {:<16} {:<10} {state:<10} {} tasks{handle}", w.name, w.stage, w.tasks);
    }
    println!("  last:      {}", p.last_decision.as_deref().unwrap_or("-"));
    println!("  launched {}, retired {}, failed {}", p.launched, p.retired, p.failed);
    if let Some(f) = &p.last_failure {
        let retry = p.retry_at.as_deref().map(|r| format!("; next try {r}")).unwrap_or_default();
        println!("  failures:  {} in a row; last: {f}{retry}", p.failures);
    }
    if p.paused {
        println!("  resume with `flotilla autoscale resume {}` once the provider is fixed", p.pool);
    }
}

fn provider_name(name: &str) -> flotilla_proto::api::ProviderName {
    use flotilla_proto::api::ProviderName;
    match name {
        "local" => ProviderName::Local,
        "command" => ProviderName::Command,
        "slurm" => ProviderName::Slurm,
        _ => ProviderName::Kubernetes,
    }
}

async fn autoscale(command: crate::cli::AutoscaleCmd) -> anyhow::Result<ExitCode> {
    use crate::cli::AutoscaleCmd;
    use flotilla_proto::api::AutoscaleRequest;
    match command {
        AutoscaleCmd::Set(a) => {
            let mut request: AutoscaleRequest = match &a.file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read policy file {}", path.display()))?;
                    toml::from_str(&text)
                        .map_err(|e| anyhow::anyhow!("policy file {}: {}", path.display(), e.message()))?
                }
                None => {
                    let provider = a.provider.as_deref().context("--provider is needed (or a --file)")?;
                    let max = a.max.context("--max is needed (or a --file)")?;
                    AutoscaleRequest {
                        pool: None,
                        provider: provider_name(provider),
                        min: 0,
                        max,
                        selector: Default::default(),
                        worker_cpus: None,
                        target: None,
                        idle: None,
                        cooldown_up: None,
                        cooldown_down: None,
                        join_timeout: None,
                        add_command: None,
                        remove_command: None,
                        partition: None,
                        time_limit: None,
                        sbatch_args: Vec::new(),
                        api: None,
                        namespace: None,
                        statefulset: None,
                    }
                }
            };
            // Flags given beside a file override its fields.
            if let Some(p) = &a.provider {
                request.provider = provider_name(p);
            }
            if a.pool.is_some() {
                request.pool = a.pool.clone();
            }
            request.min = a.min.unwrap_or(request.min);
            request.max = a.max.unwrap_or(request.max);
            if let Some(s) = &a.selector {
                request.selector = crate::roles::parse_labels(s).context("--selector")?;
            }
            let or = |flag: &Option<String>, file: &mut Option<String>| {
                if flag.is_some() {
                    file.clone_from(flag);
                }
            };
            request.worker_cpus = a.worker_cpus.or(request.worker_cpus);
            or(&a.target, &mut request.target);
            or(&a.idle, &mut request.idle);
            or(&a.cooldown_up, &mut request.cooldown_up);
            or(&a.cooldown_down, &mut request.cooldown_down);
            or(&a.join_timeout, &mut request.join_timeout);
            or(&a.add_command, &mut request.add_command);
            or(&a.remove_command, &mut request.remove_command);
            or(&a.partition, &mut request.partition);
            or(&a.time_limit, &mut request.time_limit);
            or(&a.statefulset, &mut request.statefulset);
            or(&a.namespace, &mut request.namespace);
            or(&a.api, &mut request.api);
            if !a.sbatch_args.is_empty() {
                request.sbatch_args.clone_from(&a.sbatch_args);
            }
            // Checked here too, so a mistake is named before anything is sent.
            request.to_policy().map_err(|e| anyhow::anyhow!(e))?;
            let pool = connect(&a.client)?.set_autoscale(&request).await?;
            if a.json {
                print_json(&pool)?;
            } else {
                print_pool(&pool);
            }
        }
        AutoscaleCmd::Show { pool, client, json, stale } => {
            let mut list = connect(&client)?.pools(stale).await?;
            if let Some(name) = &pool {
                list.pools.retain(|p| &p.pool == name);
                if list.pools.is_empty() {
                    bail!("no autoscaling pool named '{name}'");
                }
            }
            if json {
                print_json(&list)?;
            } else if list.pools.is_empty() {
                println!("no autoscaling pools (set one with `flotilla autoscale set --provider local --max 4`)");
            } else {
                for p in &list.pools {
                    print_pool(p);
                }
            }
        }
        AutoscaleCmd::Resume { pool, client, json } => {
            let p = connect(&client)?.resume_autoscale(&pool).await?;
            if json {
                print_json(&p)?;
            } else {
                print_pool(&p);
            }
        }
        AutoscaleCmd::Remove { pool, client, json } => {
            let p = connect(&client)?.remove_autoscale(&pool).await?;
            if json {
                print_json(&p)?;
            } else {
                println!(
                    "pool {pool} removed; its {} workers stay (drain them with `flotilla worker drain`)",
                    p.joined
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn schedule(command: crate::cli::ScheduleCmd) -> anyhow::Result<ExitCode> {
    use crate::cli::ScheduleCmd;
    let print = |s: &flotilla_proto::api::ScheduleView, json: bool| -> anyhow::Result<()> {
        if json {
            return print_json(s);
        }
        let state = if s.paused { "paused" } else { "active" };
        println!(
            "schedule {} ({state}): \"{}\" in {}, overlap {}",
            s.name,
            s.cron,
            s.timezone,
            overlap_name(s.overlap)
        );
        println!("  command:  {}", s.command.join(" "));
        println!("  next:     {}", s.next.as_deref().unwrap_or("-"));
        let last = match (&s.last_period, s.last_job) {
            (Some(p), Some(j)) => format!("{p} (job {j})"),
            (Some(p), None) => p.clone(),
            _ => "-".to_string(),
        };
        println!("  last:     {last}");
        println!("  launched: {}, skipped: {}", s.launched, s.skipped);
        Ok(())
    };
    match command {
        ScheduleCmd::Add(a) => {
            if a.job.wait {
                bail!("--wait does not apply to a schedule (each period submits a job of its own)");
            }
            let job = submit_request(&a.job)?;
            let overlap = match a.overlap.as_str() {
                "allow" => flotilla_proto::api::OverlapPolicy::Allow,
                _ => flotilla_proto::api::OverlapPolicy::Skip,
            };
            let request = flotilla_proto::api::ScheduleRequest {
                name: a.schedule.clone(),
                cron: a.cron.clone(),
                timezone: Some(a.timezone.clone()),
                overlap,
                job,
            };
            let added = connect(&a.job.client)?.add_schedule(&request).await?;
            print(&added, a.job.json)?;
        }
        ScheduleCmd::List { client, json, stale } => {
            let list = connect(&client)?.schedules(stale).await?;
            if json {
                print_json(&list)?;
            } else if list.schedules.is_empty() {
                println!("no schedules (add one with `flotilla schedule add NAME --cron EXPR -- CMD…`)");
            } else {
                println!(
                    "{:<20} {:<7} {:<18} {:<26} {:>8} {:>7}",
                    "NAME", "STATE", "CRON", "NEXT", "LAUNCHED", "SKIPPED"
                );
                for s in &list.schedules {
                    let state = if s.paused { "paused" } else { "active" };
                    let next = s.next.as_deref().unwrap_or("-");
                    println!("{:<20} {state:<7} {:<18} {next:<26} {:>8} {:>7}", s.name, s.cron, s.launched, s.skipped);
                }
            }
        }
        ScheduleCmd::Pause { name, client, json } => {
            let s = connect(&client)?.set_schedule_paused(&name, true).await?;
            print(&s, json)?;
        }
        ScheduleCmd::Resume { name, client, json } => {
            let s = connect(&client)?.set_schedule_paused(&name, false).await?;
            print(&s, json)?;
        }
        ScheduleCmd::Remove { name, client, json } => {
            let s = connect(&client)?.remove_schedule(&name).await?;
            if json {
                print_json(&s)?;
            } else {
                println!("schedule {name} removed ({} jobs launched; they stay)", s.launched);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn overlap_name(o: flotilla_proto::api::OverlapPolicy) -> &'static str {
    match o {
        flotilla_proto::api::OverlapPolicy::Skip => "skip",
        flotilla_proto::api::OverlapPolicy::Allow => "allow",
    }
}

fn submit_request(a: &SubmitArgs) -> anyhow::Result<SubmitRequest> {
    let mut req = match &a.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<SubmitRequest>(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?
        }
        None => SubmitRequest::default(),
    };
    if !a.command.is_empty() {
        req.command = a.command.clone();
    }
    macro_rules! take {
        ($field:ident) => {
            if let Some(v) = &a.$field {
                req.$field = Some(v.clone());
            }
        };
    }
    take!(name);
    take!(array);
    take!(cpus);
    take!(retries);
    take!(timeout);
    take!(priority);
    take!(reduce);
    if let Some(sel) = &a.selector {
        req.selector = parse_labels(sel).context("--selector")?;
    }
    for r in &a.resources {
        req.resources.extend(parse_resources(r).context("--resource")?);
    }
    take!(memory);
    for p in &a.prefer {
        req.prefer.extend(parse_labels(p).context("--prefer")?);
    }
    for p in &a.avoid {
        req.avoid.extend(parse_labels(p).context("--avoid")?);
    }
    take!(spread);
    if a.limit_memory.is_some() || a.limit_files.is_some() || a.limit_processes.is_some() {
        let limits = req.limits.get_or_insert_with(Default::default);
        if let Some(m) = &a.limit_memory {
            limits.memory = Some(m.clone());
        }
        if let Some(n) = a.limit_files {
            limits.open_files = Some(n);
        }
        if let Some(n) = a.limit_processes {
            limits.processes = Some(n);
        }
    }
    for kv in &a.env {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--env '{kv}' is not KEY=VALUE"))?;
        req.env.insert(k.to_string(), v.to_string());
    }
    for (flag, given, field) in [
        ("--after", &a.after, &mut req.after),
        ("--after-finished", &a.after_finished, &mut req.after_finished),
        ("--each", &a.each, &mut req.each),
    ] {
        for text in given.iter().flat_map(|t| t.split(',')) {
            let id = job_id(text).with_context(|| flag.to_string())?;
            if !field.contains(&id) {
                field.push(id);
            }
        }
    }
    for rule in &a.needs {
        let (tasks, needed) =
            rule.split_once('=').ok_or_else(|| anyhow!("--needs '{rule}' is not TASKS=NEEDED (e.g. 10=1-9)"))?;
        req.needs.insert(tasks.trim().to_string(), needed.trim().to_string());
    }
    take!(output_quota);
    if a.replicas.is_some() {
        req.replicas = a.replicas;
    }
    if req.command.is_empty() {
        bail!("no command given: put it after --, for example `flotilla submit -- echo hello`");
    }
    // Catch bad input here with a clear message before anything is sent.
    req.to_spec().map_err(|e| anyhow!(e))?;
    req.to_options().map_err(|e| anyhow!(e))?;
    Ok(req)
}

async fn submit(a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let req = submit_request(&a)?;
    let client = connect(&a.client)?;
    let submitted = client.submit(&req).await?;
    if a.wait {
        if !a.json {
            println!("{}", submitted.id);
            std::io::stdout().flush()?;
        }
        return wait(&client, submitted.id, false, a.json).await;
    }
    if a.json {
        print_json(&submitted)?;
    } else {
        println!("{}", submitted.id);
    }
    Ok(ExitCode::SUCCESS)
}

async fn job(cmd: JobCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCmd::List { client, limit, all, state, name, json, stale } => {
            let state = match state.as_deref() {
                None => None,
                Some(s) => Some(JobState::from_name(s).ok_or_else(|| {
                    let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                    anyhow!("--state {s:?}: expected one of {}", names.join(", "))
                })?),
            };
            if limit == 0 {
                bail!("--limit must be at least 1");
            }
            let client = connect(&client)?;
            let page_size = if all { JobQuery::MAX_LIMIT } else { limit.min(JobQuery::MAX_LIMIT) };
            let mut query = JobQuery { limit: Some(page_size), before: None, state, name };
            let mut jobs = Vec::new();
            let mut more = false;
            loop {
                let page = client.jobs_page(&query, stale).await?;
                jobs.extend(page.jobs);
                match page.next {
                    Some(next) if all || (jobs.len() as u64) < limit => query.before = Some(next),
                    Some(_) => {
                        more = true;
                        break;
                    }
                    None => break,
                }
            }
            if !all {
                more |= jobs.len() as u64 > limit;
                jobs.truncate(limit as usize);
            }
            if json {
                print_json(&jobs)?;
            } else {
                println!(
                    "{:>6}  {:<10} {:>9} {:>9} {:>9} {:>9}  NAME",
                    "ID", "STATE", "TOTAL", "DONE", "RUNNING", "FAILED"
                );
                for j in jobs {
                    println!(
                        "{:>6}  {:<10} {:>9} {:>9} {:>9} {:>9}  {}",
                        j.id,
                        j.state,
                        j.tasks.total,
                        j.tasks.succeeded,
                        j.tasks.running + j.tasks.assigned,
                        j.tasks.failed,
                        j.name.unwrap_or_default()
                    );
                }
                if more {
                    eprintln!("(more jobs: --limit N or --all)");
                }
            }
        }
        JobCmd::Show { id, client, json, stale } => {
            let job = connect(&client)?.job(job_id(&id)?, stale).await?;
            if json {
                print_json(&job)?;
            } else {
                print_job(&job);
            }
        }
        JobCmd::Wait { id, client, quiet, json } => {
            return wait(&connect(&client)?, job_id(&id)?, quiet, json).await;
        }
        JobCmd::Result { id, client, json } => {
            let id = job_id(&id)?;
            let r = connect(&client)?.result(id, false).await?;
            if json {
                print_json(&r)?;
                return Ok(ExitCode::SUCCESS);
            }
            match r.result {
                Some(text) => {
                    print!("{text}");
                    if r.truncated {
                        eprintln!("note: the result was truncated to 64 KiB");
                    }
                }
                None => bail!("job {id} has no result: it is {}", r.state),
            }
        }
        JobCmd::Results { id, client, json, offset, limit, stale } => {
            let rows = connect(&client)?.results(job_id(&id)?, offset, limit, stale).await?;
            if json {
                print_json(&rows)?;
            } else {
                println!("{:>8}  {:<10} {:>5} {:>8}  {:<16} STDOUT", "INDEX", "STATE", "EXIT", "ATTEMPTS", "WORKER");
                for r in rows {
                    let exit = r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                    let first_line: String = r.stdout.lines().next().unwrap_or("").chars().take(60).collect();
                    println!(
                        "{:>8}  {:<10} {:>5} {:>8}  {:<16} {}",
                        r.index,
                        r.state,
                        exit,
                        r.attempts,
                        r.worker.unwrap_or_else(|| "-".into()),
                        first_line
                    );
                }
            }
        }
        JobCmd::Outputs { id, client, json } => {
            return crate::fetch::list(&connect(&client)?, job_id(&id)?, json).await;
        }
        JobCmd::Fetch { id, client, task, output, json } => {
            return crate::fetch::fetch(&connect(&client)?, job_id(&id)?, task.as_deref(), &output, json).await;
        }
        JobCmd::Logs { id, client, task, stderr, follow, json } => {
            return task_logs(&connect(&client)?, job_id(&id)?, &task, stderr, follow, json).await;
        }
        JobCmd::Cancel { id, client, json } => {
            let c = connect(&client)?.cancel(job_id(&id)?).await?;
            if json {
                print_json(&c)?;
            } else {
                println!("job {} cancelled ({} running attempts stopped)", c.id, c.stopped);
            }
        }
        JobCmd::Purge { ids, client, json } => {
            let ids = ids.iter().map(|i| job_id(i)).collect::<anyhow::Result<Vec<u64>>>()?;
            let out = connect(&client)?.purge(&ids).await?;
            if json {
                print_json(&out)?;
            } else {
                let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
                if !out.purged.is_empty() {
                    println!("purged: {}", list(&out.purged));
                }
                if !out.already_removed.is_empty() {
                    println!("already removed: {}", list(&out.already_removed));
                }
                if !out.unfinished.is_empty() {
                    eprintln!("not finished (cancel first): {}", list(&out.unfinished));
                }
                if !out.unknown.is_empty() {
                    eprintln!("no such job: {}", list(&out.unknown));
                }
            }
            if !out.unfinished.is_empty() || !out.unknown.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        JobCmd::Retention { client, max_age, max_finished, json } => {
            return job_retention(&client, max_age.as_deref(), max_finished, json).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn job_retention(
    client: &ClientArgs,
    max_age: Option<&str>,
    max_finished: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = connect(client)?;
    let max_age_ms = match max_age {
        None => None,
        Some("none" | "off") => Some(None),
        Some(text) => Some(Some(
            parse_duration(text).map_err(|e| anyhow!("--max-age {text:?}: {e} (or `none`)"))?.as_millis() as u64,
        )),
    };
    let view = if max_age_ms.is_some() || max_finished.is_some() {
        let now = client.job_retention(false).await?;
        let wanted = flotilla_proto::api::JobRetention {
            max_age_ms: max_age_ms.unwrap_or(now.max_age_ms),
            max_finished: max_finished.unwrap_or(now.max_finished),
        };
        wanted.validate().map_err(|e| anyhow!(e))?;
        client.set_job_retention(&wanted).await?
    } else {
        client.job_retention(false).await?
    };
    if json {
        print_json(&view)?;
    } else {
        let age = view.max_age_ms.map(flotilla_core::units::format_millis).unwrap_or_else(|| "no limit".into());
        println!("finished jobs kept: at most {}, for {age} after they finish", view.max_finished);
        println!("kept now:           {} finished, {} jobs in all", view.finished_kept, view.jobs_kept);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_job(j: &JobDetail) {
    println!("job {}{}", j.id, j.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default());
    println!("  state:     {}", j.state);
    let t = &j.tasks;
    println!(
        "  tasks:     {} total, {} waiting, {} running, {} succeeded, {} failed, {} cancelled",
        t.total,
        t.waiting,
        t.running + t.assigned,
        t.succeeded,
        t.failed,
        t.cancelled
    );
    println!("  command:   {}", j.command.join(" "));
    if let Some(a) = &j.array {
        println!("  array:     {a}");
    }
    println!("  cpus:      {} per task; retries {}; priority {}", j.cpus, j.retries, j.priority);
    if let Some(ms) = j.timeout_ms {
        println!("  timeout:   {}", flotilla_core::units::format_millis(ms));
    }
    let pairs = |m: &std::collections::BTreeMap<String, String>| {
        m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    };
    if !j.selector.is_empty() {
        println!("  selector:  {}", pairs(&j.selector));
    }
    if !j.resources.is_empty() || j.memory.is_some() {
        let mut held: Vec<String> = j.resources.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(m) = j.memory {
            held.push(format!("memory={}", flotilla_core::units::format_bytes(m)));
        }
        println!("  resources: {} per task", held.join(","));
    }
    if !j.prefer.is_empty() {
        println!("  prefer:    {}", pairs(&j.prefer));
    }
    if !j.avoid.is_empty() {
        println!("  avoid:     {}", pairs(&j.avoid));
    }
    if let Some(label) = &j.spread {
        println!("  spread:    over {label}");
    }
    if let Some(l) = &j.limits {
        let mut parts = Vec::new();
        if let Some(m) = l.memory {
            parts.push(format!("memory {}", flotilla_core::units::format_bytes(m)));
        }
        if let Some(n) = l.open_files {
            parts.push(format!("{n} open files"));
        }
        if let Some(n) = l.processes {
            parts.push(format!("{n} processes"));
        }
        println!("  limits:    {} per task", parts.join(", "));
    }
    if let Some(r) = &j.reduce {
        println!("  reduce:    {r} ({})", j.reduce_state.map_or("-", |s| s.as_str()));
    }
    println!("  submitted: {}", j.submitted_at);
    if let Some(f) = &j.finished_at {
        println!("  finished:  {f}");
    }
    if let Some(f) = &j.failure {
        println!("  failure:   {f}");
    }
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    if !j.after.is_empty() {
        println!("  after:     {} (succeeded)", ids(&j.after));
    }
    if !j.after_finished.is_empty() {
        println!("  after:     {} (finished)", ids(&j.after_finished));
    }
    if !j.each.is_empty() {
        println!("  each:      task i after task i of job {}", ids(&j.each));
    }
    for (tasks, needed) in &j.needs {
        println!("  needs:     tasks {tasks} after tasks {needed}");
    }
    if !j.waiting_on.is_empty() {
        println!("  waits for: {}", ids(&j.waiting_on));
    }
    if let Some(held) = &j.held {
        println!("  held:      tasks {held} wait for tasks they need");
    }
    if let Some(u) = &j.upstream_failed {
        println!("  cancelled: job {} it needed {}", u.job, u.state);
    }
    if let Some(original) = j.rerun_of {
        println!("  re-runs:   tasks of job {original} whose every output copy was lost (their outputs go to it)");
    }
    if j.output_files > 0 {
        println!(
            "  outputs:   {} files, {} ({} copies on other workers; `flotilla job outputs {}`)",
            j.output_files,
            flotilla_core::units::format_bytes(j.output_bytes),
            j.replicas,
            j.id
        );
    }
    if let Some(u) = &j.unschedulable {
        println!("  cannot run: {u}");
    }
}

/// Polls a job until it finishes, showing progress on stderr ([`crate::progress`]); with
/// `json`, prints the finished job's detail on stdout.
async fn wait(client: &Client, id: u64, quiet: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut progress = crate::progress::Progress::new(quiet, std::io::stderr().is_terminal());
    let mut first = true;
    loop {
        // The first read answers at once; then long polls that return as soon as the job ends
        // (and at least every second, to show progress).
        let j = if std::mem::take(&mut first) {
            client.job(id, false).await?
        } else {
            client.job_when_finished(id, Duration::from_secs(1)).await?
        };
        progress.show(&j);
        if j.state.is_terminal() {
            if json {
                print_json(&j)?;
            }
            if j.state != JobState::Succeeded {
                if let Some(f) = &j.failure {
                    eprintln!("{f}");
                }
                if let Some(u) = &j.upstream_failed {
                    eprintln!("job {id} was cancelled: job {} it needed {}", u.job, u.state);
                }
                return Ok(ExitCode::from(1));
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
}

async fn status(client: &Client, json: bool, stale: bool) -> anyhow::Result<ExitCode> {
    let s = client.status(stale).await?;
    if json {
        print_json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    for w in &s.warnings {
        println!("warning: {w}");
    }
    println!("masters (term {}, leader {}):", s.term, s.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()));
    for m in &s.masters {
        let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  {:>3}  {:<22} {:<10} term {:<5} applied {:<8} {:<12} {}",
            m.id,
            m.address,
            if m.reachable { m.role.as_str() } else { "unreachable" },
            m.term.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            m.last_applied.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            // Measured by the master that answered (`answered_by`); none for itself.
            m.rtt_ms.map(|r| format!("rtt {r:.0} ms")).unwrap_or_default(),
            labels.join(",")
        );
    }
    println!("workers:");
    if s.workers.is_empty() {
        println!("  (none)");
    }
    for w in &s.workers {
        let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // Named resources as held/offered, shown only when the worker offers some.
        let resources: String = w
            .resources
            .iter()
            .map(|(name, offered)| format!(", {name} {}/{offered}", w.resources_held.get(name).copied().unwrap_or(0)))
            .collect();
        println!(
            "  {:<20} {:<6} cpus busy {}/{}, free {}, queued {}{resources}  {}{}",
            w.name,
            w.state,
            w.cpus_busy,
            w.cpus_total,
            w.cpus_free,
            w.cpus_queued,
            labels.join(","),
            w.last_heartbeat_ms_ago.map(|ms| format!("  (heard {ms} ms ago)")).unwrap_or_default()
        );
    }
    let jobs: Vec<String> = s.jobs.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!("jobs: {}", if jobs.is_empty() { "none".to_string() } else { jobs.join(", ") });
    Ok(ExitCode::SUCCESS)
}

/// `--since`/`--until` as a `[since, until)` window in Unix milliseconds; open ends default to
/// the journal's start and to after now.
fn time_window(since: Option<&str>, until: Option<&str>) -> anyhow::Result<(u64, u64)> {
    let now = flotilla_proto::time::now_ms();
    let point = |t: Option<&str>, flag: &str| -> anyhow::Result<Option<u64>> {
        t.map(|t| flotilla_proto::time::parse_point(t, now).map_err(|e| anyhow::anyhow!("{flag}: {e}"))).transpose()
    };
    Ok((point(since, "--since")?.unwrap_or(0), point(until, "--until")?.unwrap_or(u64::MAX)))
}

/// Every event the journal holds, oldest first.
pub async fn all_events(
    client: &flotilla_client::Client,
    stale: bool,
) -> anyhow::Result<Vec<flotilla_proto::api::EventView>> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let batch = client.events(after, 1000, Duration::ZERO, stale).await?;
        if batch.events.is_empty() {
            return Ok(all);
        }
        after = batch.last_seq;
        all.extend(batch.events);
    }
}

async fn incident_report(a: crate::cli::IncidentArgs) -> anyhow::Result<ExitCode> {
    let format = if a.json { "json" } else { a.format.as_str() };
    if !matches!(format, "md" | "markdown" | "html" | "json") {
        anyhow::bail!("--format: {format:?} is not md, html or json");
    }
    let (since, until) = time_window(a.since.as_deref(), a.until.as_deref())?;
    // The report prints its window: an open end is "now".
    let until = until.min(flotilla_proto::time::now_ms() + 1);
    let client = connect(&a.client)?;
    let events = all_events(&client, a.stale).await?;
    let report = crate::incident::build(&events, since, until);
    let text = match format {
        "html" => report.html(),
        "json" => serde_json::to_string_pretty(&report)? + "\n",
        _ => report.markdown(),
    };
    match &a.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("incident report written to {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn retention(a: RetentionArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.client)?;
    let max_age_ms = match a.max_age.as_deref() {
        None => None,
        Some("none" | "off") => Some(None),
        Some(text) => Some(Some(
            parse_duration(text).map_err(|e| anyhow!("--max-age {text:?}: {e} (or `none`)"))?.as_millis() as u64,
        )),
    };
    let view = if a.max_events.is_some() || max_age_ms.is_some() {
        let now = client.retention(false).await?;
        let wanted = Retention {
            max_events: a.max_events.unwrap_or(now.max_events),
            max_age_ms: max_age_ms.unwrap_or(now.max_age_ms),
        };
        wanted.validate().map_err(|e| anyhow!(e))?;
        client.set_retention(&wanted).await?
    } else {
        client.retention(false).await?
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        let age = view.max_age_ms.map(|ms| format!("{} s", ms / 1000)).unwrap_or_else(|| "no limit".to_string());
        println!("keeps at most:  {} events, age {age}", view.max_events);
        println!("kept now:       {} of {} recorded", view.kept, view.recorded);
        println!("oldest kept:    {}", view.oldest.as_deref().unwrap_or("-"));
    }
    Ok(ExitCode::SUCCESS)
}

async fn scheduling(a: crate::cli::SchedulingArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.client)?;
    let view = match a.sharing.as_deref() {
        Some(name) => {
            let sharing = flotilla_core::model::Sharing::from_name(name)
                .ok_or_else(|| anyhow!("--sharing {name:?}: expected `fair` or `fifo`"))?;
            client.set_scheduling(&flotilla_proto::api::Scheduling { sharing }).await?
        }
        None => client.scheduling(false).await?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        let what = match view.sharing {
            flotilla_core::model::Sharing::Fair => {
                "jobs of one priority take turns (the one holding the fewest tasks first)"
            }
            flotilla_core::model::Sharing::Fifo => "jobs of one priority run in submission order",
        };
        println!("sharing: {} ({what})", view.sharing.name());
    }
    Ok(ExitCode::SUCCESS)
}

async fn events(a: EventsArgs) -> anyhow::Result<ExitCode> {
    if let Some(EventsCmd::Retention(r)) = a.command {
        return retention(r).await;
    }
    let kinds = a
        .kind
        .iter()
        .map(|k| match serde_json::from_value::<flotilla_proto::api::EventType>(serde_json::json!(k.trim())) {
            Ok(flotilla_proto::api::EventType::Unknown) | Err(_) => {
                Err(anyhow!("--kind '{k}' is not an event kind (audit, leader_elected, worker_lost, job_submitted, …)"))
            }
            Ok(kind) => Ok(kind),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = connect(&a.client)?;
    let (since, until) = time_window(a.since.as_deref(), a.until.as_deref())?;
    let mut after = a.after;
    loop {
        let wait = if a.follow { Duration::from_secs(20) } else { Duration::ZERO };
        let batch = client.events(after, 1000, wait, a.stale).await?;
        let mut out = std::io::stdout().lock();
        let wanted = |e: &&flotilla_proto::api::EventView| kinds.is_empty() || kinds.contains(&e.kind);
        for e in batch.events.iter().filter(|e| e.at_ms >= since && e.at_ms < until).filter(wanted) {
            if a.json {
                serde_json::to_writer(&mut out, e)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{:>6}  {}  {:<19} {}", e.seq, e.time, e.kind, e.message)?;
            }
        }
        out.flush()?;
        after = after.max(batch.last_seq);
        if batch.events.is_empty() && !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        if !a.follow && batch.events.len() < 1000 {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

fn print_members(members: &[flotilla_proto::api::MemberView]) {
    println!("{:<6} {:<24} {:<8} LEADER", "ID", "ADDRESS", "ROLE");
    for m in members {
        println!("{:<6} {:<24} {:<8} {}", m.id, m.address, m.role.as_str(), if m.leader { "yes" } else { "" });
    }
}

async fn cluster(command: crate::cli::ClusterCmd) -> anyhow::Result<ExitCode> {
    use crate::cli::ClusterCmd;
    match command {
        ClusterCmd::Members { client, json } => {
            let members = connect(&client)?.members().await?;
            if json {
                print_json(&members)?;
            } else {
                print_members(&members);
            }
        }
        ClusterCmd::AddMaster { member, client, json } => {
            let (id, address) =
                member.split_once('=').ok_or_else(|| anyhow!("'{member}' is not of the form ID=HOST:PORT"))?;
            let id: u64 = id.trim().parse().map_err(|_| anyhow!("master id '{id}' is not a number"))?;
            let members = connect(&client)?.add_master(id, address.trim()).await?;
            if json {
                print_json(&members)?;
            } else {
                println!("master {id} caught up and votes");
                print_members(&members);
            }
        }
        ClusterCmd::RemoveMaster { id, client, json } => {
            let members = connect(&client)?.remove_master(id).await?;
            if json {
                print_json(&members)?;
            } else {
                println!("master {id} removed; stop its process now");
                print_members(&members);
            }
        }
        ClusterCmd::TransferLeadership { to, client, json } => {
            let moved = connect(&client)?.transfer_leadership(to).await?;
            if json {
                print_json(&moved)?;
            } else {
                println!(
                    "leadership moved from master {} to master {} (term {}) in {} ms",
                    moved.from, moved.to, moved.term, moved.took_ms
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn token(command: crate::cli::TokenCmd) -> anyhow::Result<ExitCode> {
    use crate::cli::TokenCmd;
    use flotilla_proto::api::TokenRole;
    match command {
        TokenCmd::Create { role, name, client, json } => {
            let role = TokenRole::from_name(&role).ok_or_else(|| {
                let names: Vec<&str> = TokenRole::ALL.iter().map(|r| r.name()).collect();
                anyhow!("--role '{role}' is not one of {}", names.join(", "))
            })?;
            let created = connect(&client)?.create_token(&name, role).await?;
            if json {
                print_json(&created)?;
            } else {
                println!("{}", created.token);
            }
        }
        TokenCmd::List { client, json } => {
            let tokens = connect(&client)?.tokens().await?;
            if json {
                print_json(&tokens)?;
            } else {
                println!("{:<24} {:<9} {:<24} CREATED", "NAME", "ROLE", "BY");
                for t in &tokens {
                    let created = match t.created_ms {
                        Some(ms) => flotilla_proto::time::rfc3339(ms),
                        None => "(the masters' admin.token or --token-file)".to_string(),
                    };
                    let by = t.created_by.as_deref().unwrap_or("-");
                    println!("{:<24} {:<9} {:<24} {created}", t.name, t.role.name(), by);
                }
            }
        }
        TokenCmd::Revoke { name, client, json } => {
            let revoked = connect(&client)?.revoke_token(&name).await?;
            if json {
                print_json(&revoked)?;
            } else {
                println!("token '{}' (role {}) revoked", revoked.name, revoked.role.name());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_workers(workers: &[flotilla_proto::api::WorkerView]) {
    println!("{:<20} {:<9} {:>7} {:>7} {:>5}  NOTE", "NAME", "STATE", "RUNNING", "QUEUED", "CPUS");
    for w in workers {
        let note = match (&w.drain_deadline, w.stopping) {
            (Some(d), _) => format!("running tasks stopped at {d}"),
            (None, true) => "stopping (SIGTERM)".to_string(),
            _ => String::new(),
        };
        println!("{:<20} {:<9} {:>7} {:>7} {:>5}  {note}", w.name, w.state.as_str(), w.running, w.queued, w.cpus);
    }
}

async fn worker(command: crate::cli::WorkerCmd) -> anyhow::Result<ExitCode> {
    use crate::cli::WorkerCmd;
    let (name, client, json, action, deadline_ms) = match command {
        WorkerCmd::List { client, json, stale } => {
            let workers = connect(&client)?.workers(stale).await?;
            if json {
                print_json(&workers)?;
            } else {
                print_workers(&workers);
            }
            return Ok(ExitCode::SUCCESS);
        }
        WorkerCmd::Cordon { name, client, json } => (name, client, json, "cordon", None),
        WorkerCmd::Uncordon { name, client, json } => (name, client, json, "uncordon", None),
        WorkerCmd::Drain { name, deadline, client, json } => {
            let deadline_ms = match deadline.trim() {
                "none" => None,
                d => Some(parse_duration(d).context("--deadline")?.as_millis() as u64),
            };
            (name, client, json, "drain", deadline_ms)
        }
    };
    let view = connect(&client)?.maintain_worker(&name, action, deadline_ms).await?;
    if json {
        print_json(&view)?;
    } else {
        print_workers(std::slice::from_ref(&view));
    }
    Ok(ExitCode::SUCCESS)
}

fn certs(command: crate::cli::CertsCmd) -> anyhow::Result<ExitCode> {
    use crate::cli::CertsCmd;
    let (dir, files, json) = match command {
        CertsCmd::Init { dir, hosts, json } => {
            let created = flotilla_tls::authority::init(&dir, &hosts)?;
            (dir, created.files, json)
        }
        CertsCmd::Issue { dir, role, hosts, json } => {
            let role = flotilla_tls::Role::parse(&role)
                .ok_or_else(|| anyhow!("--role '{role}' is not master, worker or client"))?;
            let files = flotilla_tls::authority::issue(&dir, role, &hosts)?;
            (dir, files, json)
        }
    };
    if json {
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        print_json(&serde_json::json!({ "dir": dir.display().to_string(), "files": files }))?;
    } else {
        for f in &files {
            println!("wrote {}", f.display());
        }
        println!("use it: export FLOTILLA_CERTS={}", std::path::absolute(&dir).unwrap_or(dir).display());
    }
    Ok(ExitCode::SUCCESS)
}
