//! `flotilla master --config FILE` and `flotilla worker --config FILE`: a TOML file of the
//! role's flags (`data_dir = "/var/lib/flotilla"` for `--data-dir`, `cpus = 16`, …).
//!
//! The file's keys become flags placed before the command line's own, so that flags given on
//! the command line win (clap keeps the last occurrence) and so do `FLOTILLA_*` variables: a
//! key whose flag has a variable set in the environment is left out. A key that names no flag
//! of the role is an error that names it.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use clap::CommandFactory;

/// Expands `--config FILE` (or `--config=FILE`) of `flotilla master` or `flotilla worker`
/// into flags; any other command line is returned as it is.
pub fn expand(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(role) = args.get(1).and_then(|a| a.to_str()).map(str::to_string) else { return Ok(args) };
    if role != "master" && role != "worker" {
        return Ok(args);
    }
    let mut path = None;
    let mut rest = Vec::with_capacity(args.len());
    let mut it = args.iter().skip(2);
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--config") => {
                let value = it.next().ok_or_else(|| anyhow!("--config needs a file"))?;
                path = Some(std::path::PathBuf::from(value));
            }
            Some(a) if a.starts_with("--config=") => path = Some(a["--config=".len()..].into()),
            _ => rest.push(arg.clone()),
        }
    }
    let Some(path) = path else { return Ok(args) };
    let flags = flags_from_file(&role, &path)?;
    let mut out = vec![args[0].clone(), args[1].clone()];
    out.extend(flags);
    out.extend(rest);
    Ok(out)
}

fn flags_from_file(role: &str, path: &Path) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| anyhow!("config file {} is not valid TOML: {e}", path.display()))?;
    let cli = crate::cli::Cli::command();
    let command = cli.find_subcommand(role).ok_or_else(|| anyhow!("no {role} command"))?;
    let known: Vec<&clap::Arg> =
        command.get_arguments().filter(|a| a.get_long().is_some_and(|l| l != "config")).collect();
    let mut flags = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = known.iter().find(|a| a.get_long() == Some(long.as_str())) else {
            let mut names: Vec<String> =
                known.iter().filter_map(|a| a.get_long()).map(|l| l.replace('-', "_")).collect();
            names.sort();
            bail!("unknown key '{key}' in config file {} ({role} takes: {})", path.display(), names.join(", "));
        };
        // A FLOTILLA_* variable in the environment overrides the file.
        if arg.get_env().is_some_and(|env| std::env::var_os(env).is_some()) {
            continue;
        }
        let flag = format!("--{long}");
        match value {
            toml::Value::Boolean(true) => flags.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => flags.extend([flag.into(), s.into()]),
            toml::Value::Integer(i) => flags.extend([flag.into(), i.to_string().into()]),
            toml::Value::Float(f) => flags.extend([flag.into(), f.to_string().into()]),
            toml::Value::Array(items) => {
                let parts: Result<Vec<String>, _> = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        toml::Value::Integer(i) => Ok(i.to_string()),
                        _ => {
                            Err(anyhow!("key '{key}' in {}: a list may hold only strings and numbers", path.display()))
                        }
                    })
                    .collect();
                flags.extend([flag.into(), parts?.join(",").into()]);
            }
            toml::Value::Table(t) => {
                // `labels = { zone = "a" }`, `peers = { 1 = "h:7001" }`: KEY=VALUE,…
                let parts: Result<Vec<String>, _> = t
                    .iter()
                    .map(|(k, v)| match v {
                        toml::Value::String(s) => Ok(format!("{k}={s}")),
                        toml::Value::Integer(i) => Ok(format!("{k}={i}")),
                        _ => Err(anyhow!("key '{key}.{k}' in {}: want a string or a number", path.display())),
                    })
                    .collect();
                flags.extend([flag.into(), parts?.join(",").into()]);
            }
            toml::Value::Datetime(_) => bail!("key '{key}' in {}: a date is not a flag value", path.display()),
        }
    }
    Ok(flags)
}
