"""The Python client against a real local cluster (see conftest.py)."""

import inspect
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import flotilla
from conftest import ROOT, Cluster, poll

SUM = "awk '{s+=$1} END {print s}'"


def test_generated_types_match_the_openapi_description():
    """Invariant: python/flotilla/_schema.py is what gen_schema.py makes of docs/openapi.json
    now, so no field of the API is missing from the client or described differently."""
    run = subprocess.run([sys.executable, str(ROOT / "python/tools/gen_schema.py"), "--check"], capture_output=True)
    assert run.returncode == 0, run.stderr.decode()
    spec = json.loads((ROOT / "docs/openapi.json").read_text())
    fields = set(spec["components"]["schemas"]["SubmitRequest"]["properties"])
    params = set(inspect.signature(flotilla.Client.submit).parameters) - {"self", "wait"}
    assert params == fields
    assert flotilla.API_VERSION == spec["info"]["version"]


def test_versions_agree_with_the_workspace():
    cargo = (ROOT / "Cargo.toml").read_text()
    version = next(line.split('"')[1] for line in cargo.splitlines() if line.startswith("version ="))
    pyproject = (ROOT / "python/pyproject.toml").read_text()
    assert f'version = "{version}"' in pyproject
    assert flotilla.__version__ == version


def test_array_job_with_reduce(cluster):
    c = cluster.client()
    job = c.submit(["sh", "-c", "echo $FLOTILLA_TASK_INDEX"], array="1-20", reduce=SUM, name="py-sum")
    assert isinstance(job, int)
    detail = c.wait(job, timeout=120)
    assert detail["state"] == "succeeded", detail
    assert c.result(job).strip() == "210"
    rows = list(c.results(job, page_size=7))  # three pages
    assert [r["index"] for r in rows] == list(range(1, 21))
    assert all(r["state"] == "succeeded" and r["exit_code"] == 0 for r in rows)
    assert rows[4]["stdout"].strip() == "5"
    assert c.result_detail(job)["truncated"] is False
    assert any(j["id"] == job for j in c.jobs(name="py-sum"))


def test_shell_string_env_and_submit_wait(cluster):
    c = cluster.client()
    job = c.submit("echo $GREETING-$FLOTILLA_TASK_INDEX", array=3, env={"GREETING": "hi"}, wait=120)
    assert c.job(job)["state"] == "succeeded"
    assert c.result(job).split() == ["hi-1", "hi-2", "hi-3"]


def test_same_request_id_makes_one_job(cluster):
    """Invariant: a submission retried with the same request id creates the job once."""
    c = cluster.client()
    first = c.submit(["true"], request_id="py-idempotent-1")
    again = c.submit(["true"], request_id="py-idempotent-1")
    assert first == again
    other = c.submit(["true"])
    assert other != first


def test_failed_job_and_cancel(cluster):
    c = cluster.client()
    job = c.submit(["sh", "-c", "exit 3"], retries=0)
    assert c.wait(job, timeout=120)["state"] == "failed"
    with pytest.raises(flotilla.JobFailed) as failed:
        c.result(job)
    assert failed.value.state == "failed"
    assert next(iter(c.results(job)))["exit_code"] == 3

    long = c.submit(["sleep", "300"])
    poll("the sleep running", lambda: c.job(long)["tasks"]["running"] >= 1, 60)
    c.cancel(long)
    assert c.wait(long, timeout=60)["state"] == "cancelled"
    with pytest.raises(flotilla.WaitTimeout):
        c.wait(c.submit(["sleep", "30"]), timeout=0.5)


def test_typed_errors(cluster):
    c = cluster.client()
    with pytest.raises(flotilla.NotFound) as missing:
        c.result(987654)
    assert missing.value.code == "not_found" and missing.value.status == 404
    with pytest.raises(flotilla.InvalidRequest):
        c.submit(["true"], array="9-x")
    with pytest.raises(flotilla.Unauthorized):
        cluster.client(token="not-a-token").status()
    reader = c.request("POST", "/v1/tokens", {"name": "py-reader", "role": "read"})["token"]
    read_only = cluster.client(token=reader)
    assert read_only.status()["masters"]
    with pytest.raises(flotilla.Forbidden):
        read_only.submit(["true"])
    with pytest.raises(flotilla.Unavailable):
        flotilla.Client(["127.0.0.1:1"], retry_for=0.3).status()
    with pytest.raises(flotilla.ConfigurationError):
        flotilla.Client([])
    with pytest.raises(flotilla.ConfigurationError):
        flotilla.Client(["no-port"])


def test_reads_the_cli_environment(cluster, monkeypatch):
    token_file = cluster.root / "token"
    token_file.write_text((cluster.certs / "admin.token").read_text())
    monkeypatch.setenv("FLOTILLA_MASTERS", cluster.addresses[0])
    monkeypatch.setenv("FLOTILLA_CERTS", str(cluster.certs))
    monkeypatch.setenv("FLOTILLA_TOKEN_FILE", str(token_file))
    c = flotilla.Client()
    assert c.status()["masters"]
    # One address given; the answers name the others.
    assert set(cluster.addresses) <= set(c.addresses)
    monkeypatch.delenv("FLOTILLA_TOKEN_FILE")
    monkeypatch.setenv("FLOTILLA_TOKEN", "wrong")
    with pytest.raises(flotilla.Unauthorized):
        flotilla.Client().status()


def test_events(cluster):
    c = cluster.client()
    kinds = {e["kind"] for e in c.events()}
    assert {"leader_elected", "worker_joined"} <= kinds
    last = max(e["seq"] for e in c.events())
    job = c.submit(["true"], name="py-events")
    seen = []
    for event in c.events(after=last, follow=True):
        seen.append(event)
        if event["kind"] == "job_finished" and event.get("job") == job:
            break
    assert all(e["seq"] > last for e in seen)
    assert any(e["kind"] == "job_submitted" and e.get("job") == job for e in seen)


def test_wait_rides_out_a_leader_kill(tmp_path):
    """Invariant: a `wait` in progress when the leader is SIGKILLed returns once the job has
    finished under the new leader, and every task's result is recorded exactly once."""
    cluster = Cluster(tmp_path)
    try:
        c = cluster.client()
        leader = cluster.leader(c)
        cluster.start_worker("a")
        cluster.start_worker("b")
        cluster.wait_workers(c, 2)
        job = c.submit(["sh", "-c", "sleep 0.2; echo $FLOTILLA_TASK_INDEX"], array="1-40", reduce=SUM)
        killed = threading.Event()

        def kill_leader():
            cluster.kill(cluster.masters[leader])
            killed.set()

        threading.Timer(1.0, kill_leader).start()
        started = time.monotonic()
        detail = c.wait(job, timeout=120)
        assert killed.is_set(), f"the job finished in {time.monotonic() - started:.1f} s, before the kill"
        assert detail["state"] == "succeeded", detail
        assert c.result(job).strip() == "820"
        rows = list(c.results(job))
        assert len(rows) == 40 and all(r["state"] == "succeeded" for r in rows)
        assert cluster.leader(c) != leader
    except BaseException:
        print(json.dumps(cluster.logs(), indent=1))
        raise
    finally:
        cluster.stop()


def test_plain_http_single_master(tmp_path):
    cluster = Cluster(tmp_path, masters=1, tls=False)
    try:
        c = cluster.client()
        cluster.leader(c)
        cluster.start_worker("solo", cpus=1)
        cluster.wait_workers(c, 1)
        assert c.result(c.submit(["echo", "plain"], wait=60)).strip() == "plain"
    finally:
        cluster.stop()


def test_pip_install_in_a_fresh_venv(tmp_path):
    """`pip install ./python` into a new virtual environment, then import it from there (pip
    fetches setuptools from the package index to build it, as on a user's machine)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(ROOT / "python")],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    out = subprocess.run(
        [str(py), "-c", "import flotilla, sys; print(flotilla.__version__, flotilla.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout.split()
    assert out[0] == flotilla.__version__
    assert str(venv) in out[1]
