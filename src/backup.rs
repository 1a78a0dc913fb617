//! `flotilla snapshot save|restore|inspect` and `flotilla master recover`: backups and
//! disaster recovery, over `flotilla_raft::backup`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use sha2::{Digest, Sha256};

use flotilla_master::config::parse_peers;
use flotilla_raft::backup::{self, BackupInfo};

use crate::cli::{MasterCmd, SnapshotCmd};
use crate::commands::connect;

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn describe(info: &BackupInfo) {
    let masters: Vec<String> = info.masters.iter().map(|(id, a)| format!("{id}={a}")).collect();
    println!("  state as of entry {} (term {})", info.index, info.term);
    println!("  {} jobs, {} workers known", info.jobs, info.workers);
    println!("  cluster {}, masters {}", info.cluster, masters.join(","));
    println!("  {} bytes, sha256 {}", info.bytes, info.sha256);
}

/// The new cluster's identity, the same for every master restored from the same backup into
/// the same group (so they accept each other), and never the old cluster's.
fn new_identity(sha256: &str, masters: &BTreeMap<u64, String>, salt: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(sha256.as_bytes());
    for (id, address) in masters {
        h.update(format!("{id}={address};").as_bytes());
    }
    let digest = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(id).max(1)
}

pub async fn snapshot(command: SnapshotCmd) -> anyhow::Result<ExitCode> {
    match command {
        SnapshotCmd::Save { file, client, json } => {
            let client = connect(&client)?;
            let from = client.save_snapshot(&file).await?;
            let info = match backup::verify(&file) {
                Ok(info) => info,
                Err(e) => {
                    let _ = std::fs::remove_file(&file);
                    bail!("the backup from {from} does not check out: {e}");
                }
            };
            if json {
                print_json(&info)?;
            } else {
                println!("saved {} from the leader at {from}", file.display());
                describe(&info);
            }
        }
        SnapshotCmd::Inspect { file, json } => {
            let info = backup::verify(&file)?;
            if json {
                print_json(&info)?;
            } else {
                println!("{}: checksum ok", file.display());
                describe(&info);
            }
        }
        SnapshotCmd::Restore { file, data_dir, id, peers, json } => {
            let masters = parse_peers(&peers).map_err(|e| anyhow!("--peers: {e}"))?;
            let checked = backup::verify(&file)?;
            let cluster = new_identity(&checked.sha256, &masters, "restore");
            let info = backup::seed(&file, &data_dir, id, &masters, cluster).await?;
            if json {
                print_json(&info)?;
            } else {
                println!("seeded {} as master {id} of a new cluster {}", data_dir.display(), info.cluster);
                describe(&info);
                println!(
                    "next: restore every master of --peers the same way, then start each with\n  \
                     flotilla master --id N --listen HOST:PORT --data-dir DIR --peers {peers}"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn master(command: MasterCmd) -> anyhow::Result<ExitCode> {
    let MasterCmd::Recover { data_dir, id, peers, json } = command;
    let masters = parse_peers(&peers).map_err(|e| anyhow!("--peers: {e}"))?;
    let salt = format!("recover-{}", flotilla_proto::time::now_ms());
    let cluster = new_identity(&data_dir.display().to_string(), &masters, &salt);
    let recovered = backup::recover(&data_dir, id, &masters, cluster).await?;
    if json {
        print_json(&recovered)?;
        return Ok(ExitCode::SUCCESS);
    }
    let r = &recovered;
    eprintln!("UNSAFE RECOVERY of master {id} from {}", data_dir.display());
    println!("rebuilt the group from this master's data: state as of entry {}", r.last);
    println!("  this master knew entries up to {} committed", r.committed);
    if r.last > r.committed {
        println!(
            "  entries {}..{} were in its log but not known committed: kept (clients may have been told they failed)",
            r.committed + 1,
            r.last
        );
    }
    println!("  anything the lost masters committed without this master is lost");
    println!("  new cluster {}; old files in {}", r.info.cluster, r.moved_to.display());
    println!(
        "next: start this master (flotilla master --id {id} --listen … --data-dir {} --peers {peers}),\n  \
         and each other master of --peers with an empty data directory and --await-add",
        data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
