//! Each node of a chaos cluster lives in its own network namespace, linked to a bridge in a
//! hub namespace where the harness itself runs; real kernel sockets carry all traffic.
//! Partitions are blackhole routes inside a node's namespace: new connections fail and
//! established ones stall, in one direction or both.
//!
//! ```text
//!   [ns m1 10.77.0.11]──veth──┐
//!   [ns m2 10.77.0.12]──veth──┤ br0 (ns hub, 10.77.0.1: the harness)
//!   [ns w1 10.77.0.101]─veth──┘
//! ```
//! Needs root and iproute2's `ip`. Namespaces are named `fl<pid>-…` and removed on drop;
//! leftovers of a crashed run are removed at the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{bail, Context};

pub struct Net {
    prefix: String,
    nodes: BTreeMap<String, Ipv4Addr>,
    cuts: BTreeSet<(String, String)>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Deletes namespaces left by chaos runs whose process is gone.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("fl") else { continue };
        let Some((pid, _)) = rest.split_once('-') else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Net {
    /// Creates the hub and one namespace per node. `tag` keeps parallel runs apart.
    pub fn create(tag: &str, nodes: &[(String, Ipv4Addr)]) -> anyhow::Result<Net> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the chaos harness needs root (network namespaces)");
        }
        let prefix = format!("fl{}-{tag}", std::process::id());
        let net = Net { prefix, nodes: nodes.iter().cloned().collect(), cuts: BTreeSet::new() };
        let hub = net.ns("hub");
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", "10.77.0.1/24", "dev", "br0"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (name, addr) in nodes {
            let ns = net.ns(name);
            let host_side = format!("h-{name}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &hub, "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &hub, "link", "set", &host_side, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &host_side, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn addr(&self, name: &str) -> Ipv4Addr {
        self.nodes[name]
    }

    /// Moves the calling thread into a namespace (call before starting threads that should
    /// live there, or in a child between fork and exec).
    pub fn enter(&self, name: &str) -> anyhow::Result<()> {
        enter_ns(&self.ns(name))
    }

    /// Traffic from `from` to `to` is dropped from now on.
    pub fn cut(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        if self.cuts.insert((from.to_string(), to.to_string())) {
            ip(&["-n", &self.ns(from), "route", "add", "blackhole", &format!("{}/32", self.addr(to))])?;
        }
        Ok(())
    }

    pub fn heal(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        if self.cuts.remove(&(from.to_string(), to.to_string())) {
            ip(&["-n", &self.ns(from), "route", "del", "blackhole", &format!("{}/32", self.addr(to))])?;
        }
        Ok(())
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&mut self, a: &[String], b: &[String]) -> anyhow::Result<()> {
        for x in a {
            for y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        for (from, to) in self.cuts.clone() {
            self.heal(&from, &to)?;
        }
        Ok(())
    }
}

/// `setns` into a named namespace for the calling thread.
pub fn enter_ns(ns: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("no namespace {ns}"))?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in self.nodes.keys().cloned().collect::<Vec<_>>() {
            let _ = ip(&["netns", "del", &self.ns(&name)]);
        }
        let _ = ip(&["netns", "del", &self.ns("hub")]);
    }
}
