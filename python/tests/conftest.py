"""A real local Flotilla cluster for the client's tests: masters and workers are the real
`flotilla` binary (FLOTILLA_BIN, else the workspace's debug build), on free loopback ports,
in a temporary directory, with TLS and the admin token from `flotilla certs init`.

Every wait polls a condition with a generous deadline (the CI machine is slow and loaded)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

import flotilla  # noqa: E402

BIN = os.environ.get("FLOTILLA_BIN") or str(ROOT / "target" / "debug" / "flotilla")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(what, condition, timeout=60.0, every=0.2):
    """Returns condition()'s first truthy value; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except flotilla.FlotillaError as e:
            last = e
        time.sleep(every)
    pytest.fail(f"{what} within {timeout} s (last error: {last})")


class Cluster:
    """Masters 1..n and named workers; `stop()` kills every process it started."""

    def __init__(self, root: Path, masters=3, tls=True):
        if not Path(BIN).exists():
            pytest.fail(f"no flotilla binary at {BIN} (cargo build, or set FLOTILLA_BIN)")
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
        self.certs = None
        if tls:
            self.certs = root / "certs"
            subprocess.run(
                [BIN, "certs", "init", "--dir", str(self.certs), "--hosts", "127.0.0.1,localhost"],
                check=True,
                capture_output=True,
                env=self.env,
            )
            self.env["FLOTILLA_CERTS"] = str(self.certs)
        self.ports = {i: free_port() for i in range(1, masters + 1)}
        self.peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.ports.items())
        self.masters = {}
        self.workers = {}
        for i in self.ports:
            self.start_master(i)

    @property
    def addresses(self):
        return [f"127.0.0.1:{p}" for p in self.ports.values()]

    def _spawn(self, name, args):
        log = open(self.root / f"{name}.log", "ab")
        return subprocess.Popen([BIN] + args, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def start_master(self, i):
        args = ["master", "--id", str(i), "--listen", f"127.0.0.1:{self.ports[i]}"]
        args += ["--data-dir", str(self.root / f"m{i}"), "--peers", self.peers]
        if self.certs is None:
            args.append("--insecure-plaintext")
        self.masters[i] = self._spawn(f"m{i}", args)

    def start_worker(self, name, cpus=2):
        args = ["worker", "--masters", ",".join(self.addresses), "--cpus", str(cpus), "--name", name]
        args += ["--data-dir", str(self.root / f"w-{name}")]
        self.workers[name] = self._spawn(f"w-{name}", args)

    def client(self, **kwargs):
        kwargs.setdefault("certs", self.certs)
        return flotilla.Client(self.addresses, **kwargs)

    def leader(self, client, timeout=60.0):
        def find():
            s = client.status()
            return next((m["id"] for m in s["masters"] if m.get("role") == "leader"), None)

        return poll("a leader elected", find, timeout)

    def wait_workers(self, client, n, timeout=60.0):
        def ready():
            return sum(1 for w in client.status()["workers"] if w.get("state") == "ready") >= n

        poll(f"{n} workers ready", ready, timeout)

    def kill(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

    def stop(self):
        for proc in list(self.workers.values()) + list(self.masters.values()):
            self.kill(proc)

    def logs(self):
        return {p.name: p.read_text(errors="replace")[-2000:] for p in self.root.glob("*.log")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three masters with TLS and two workers of two cpus, shared by a module's tests."""
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        client = c.client()
        c.leader(client)
        c.start_worker("a")
        c.start_worker("b")
        c.wait_workers(client, 2)
        yield c
    except BaseException:
        print(json.dumps(c.logs(), indent=1))
        raise
    finally:
        c.stop()
