//! `flotilla job outputs` and `flotilla job fetch`: a job's task outputs, listed or written
//! to `DIR/INDEX/PATH`.
//!
//! Every file is written beside its destination first and moved into place only once its
//! SHA-256 matches the one the masters recorded, so a file at its final name is always whole
//! and right. That is also how a fetch resumes: a file already there with the right bytes
//! is kept, anything else is fetched again.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

use flotilla_client::Client;
use flotilla_core::workflow::{valid_output_path, Digest};
use flotilla_proto::api::{JobOutputs, TaskOutputsView};

/// What `job fetch --json` prints: one entry per file.
#[derive(Serialize)]
struct Fetched {
    index: Option<u64>,
    path: String,
    written_to: PathBuf,
    size: u64,
    sha256: String,
    /// `fetched`, or `kept` (already there with the right bytes).
    action: &'static str,
}

fn slot_name(index: Option<u64>) -> String {
    index.map_or_else(|| "reduce".to_string(), |i| i.to_string())
}

/// `--task N` or `--task reduce`: `Some(Some(N))`, `Some(None)`.
fn wanted_task(task: Option<&str>) -> anyhow::Result<Option<Option<u64>>> {
    match task {
        None => Ok(None),
        Some("reduce") => Ok(Some(None)),
        Some(text) => text
            .parse()
            .map(|i| Some(Some(i)))
            .map_err(|_| anyhow!("--task '{text}' is not a task index (a number, or `reduce`)")),
    }
}

fn selected(outputs: JobOutputs, task: Option<&str>) -> anyhow::Result<Vec<TaskOutputsView>> {
    let wanted = wanted_task(task)?;
    let tasks: Vec<TaskOutputsView> =
        outputs.tasks.into_iter().filter(|t| wanted.is_none_or(|w| t.index == w)).collect();
    if let (Some(w), true) = (wanted, tasks.is_empty()) {
        bail!("task {} of job {} left no outputs (or has not succeeded yet)", slot_name(w), outputs.job);
    }
    Ok(tasks)
}

pub async fn list(client: &Client, job: u64, json: bool) -> anyhow::Result<ExitCode> {
    let outputs = client.job_outputs(job).await?;
    if json {
        crate::commands::print_json(&outputs)?;
        return Ok(ExitCode::SUCCESS);
    }
    if outputs.tasks.is_empty() {
        println!("job {job} has no outputs (yet)");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:>8}  {:>10}  {:<16}  {:<24}  PATH", "INDEX", "SIZE", "SHA256", "HOLDERS");
    for t in &outputs.tasks {
        let holders = t
            .holders
            .iter()
            .map(|h| if t.available.contains(h) { h.clone() } else { format!("{h}(gone)") })
            .collect::<Vec<_>>()
            .join(",");
        for f in &t.files {
            println!(
                "{:>8}  {:>10}  {:<16}  {:<24}  {}",
                slot_name(t.index),
                flotilla_core::units::format_bytes(f.size),
                &f.sha256[..16.min(f.sha256.len())],
                holders,
                f.path
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn matches(path: &Path, size: u64, digest: &Digest) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
        && flotilla_blobs::store::hash_file(path).is_ok_and(|d| d == *digest)
}

pub async fn fetch(client: &Client, job: u64, task: Option<&str>, dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let outputs = client.job_outputs(job).await?;
    let tasks = selected(outputs, task)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut done = Vec::new();
    for t in &tasks {
        for f in &t.files {
            // The masters keep only names a worker accepted, but a name read off the network
            // is checked again before it becomes a path here.
            if !valid_output_path(&f.path) {
                bail!("job {job} task {}: refusing the output name {:?}", slot_name(t.index), f.path);
            }
            let digest = Digest::parse(&f.sha256)
                .ok_or_else(|| anyhow!("the masters gave {:?} as the hash of {}", f.sha256, f.path))?;
            let dest = dir.join(slot_name(t.index)).join(&f.path);
            let action = if matches(&dest, f.size, &digest) {
                "kept"
            } else {
                download(client, job, t, f, &digest, &dest).await?;
                "fetched"
            };
            if !json {
                println!("{action} {} ({})", dest.display(), flotilla_core::units::format_bytes(f.size));
            }
            done.push(Fetched {
                index: t.index,
                path: f.path.clone(),
                written_to: dest,
                size: f.size,
                sha256: f.sha256.clone(),
                action,
            });
        }
    }
    if json {
        crate::commands::print_json(&done)?;
    } else if done.is_empty() {
        eprintln!("job {job} has no outputs (yet)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Fetches one file into place, from each holder in turn until a copy passes its check.
async fn download(
    client: &Client,
    job: u64,
    task: &TaskOutputsView,
    file: &flotilla_proto::api::OutputFileView,
    digest: &Digest,
    dest: &Path,
) -> anyhow::Result<()> {
    let parent = dest.parent().ok_or_else(|| anyhow!("{} has no parent directory", dest.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    // A partial file of an earlier, interrupted fetch is replaced whole.
    let part = parent.join(format!(
        ".{}.flotilla-part",
        dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let tries = task.available.len().max(1) as u32 + 1;
    let mut why = Vec::new();
    for attempt in 0..tries {
        let got =
            client.fetch_output(job, &file.sha256, attempt, &part, flotilla_blobs::client::allowance(file.size)).await;
        match got {
            Ok(_) if matches(&part, file.size, digest) => {
                std::fs::rename(&part, dest)
                    .with_context(|| format!("cannot move {} to {}", part.display(), dest.display()))?;
                return Ok(());
            }
            Ok(_) => why.push("a copy did not match its SHA-256".to_string()),
            Err(e) => why.push(e.to_string()),
        }
        let _ = std::fs::remove_file(&part);
    }
    bail!("cannot fetch {} of job {job} task {}: {}", file.path, slot_name(task.index), why.join("; "))
}
