"""`Client`: the masters' HTTP/JSON API from Python, with the Rust client's rules.

It asks each master address in turn, follows `421 not_leader` answers to the leader they
name, remembers the leader for the next request, learns masters it was not given from the
`x-flotilla-masters` header (so it outlives the replacement of every master it was given),
and while no leader is elected or the masters it asks are down it retries with backoff
(25 ms doubling to 500 ms) until `retry_for` seconds have passed. Answers the cluster gave
otherwise are raised at once as typed exceptions (`flotilla.errors`).
"""

import http.client
import json
import os
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlencode

from . import _schema
from ._schema import Cancelled, EventView, JobDetail, JobResult, Status, TaskResultView, WorkerView
from .errors import ConfigurationError, JobFailed, ProtocolError, Unavailable, WaitTimeout, from_answer

# The name every master's certificate carries: masters are verified by it, not by address,
# so a client reaches them by any address (as the Rust client does).
MASTER_NAME = "master.flotilla"
MASTERS_HEADER = "x-flotilla-masters"
# Per-attempt timeout of ordinary requests: a paused master must not stall the client long.
ATTEMPT_TIMEOUT = 3.0
# The longest long poll the masters hold (they cap `wait_ms` at 30 s); shorter keeps a
# client responsive to a failover without costing requests.
LONG_POLL = 10.0
TERMINAL_STATES = ("succeeded", "failed", "cancelled")

JobRef = Union[int, Dict[str, Any]]


def _job_id(job: JobRef) -> int:
    """A job id from an id or anything with an `id` (a job's detail or summary)."""
    if isinstance(job, dict):
        job = job.get("id")
    if isinstance(job, bool) or not isinstance(job, int):
        if isinstance(job, str) and job.isdigit():
            return int(job)
        raise ConfigurationError(f"a job is named by its id (a number), not {job!r}")
    return job


def _split_address(address: str) -> Tuple[str, int]:
    text = address.strip()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"a master address is HOST:PORT, not {address!r}")
    return host, int(port)


def _read_token_file(path: Union[str, Path]) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigurationError(f"cannot read token file {path}: {e}") from e
    if not token:
        raise ConfigurationError(f"token file {path} is empty")
    return token


class _MasterConnection(http.client.HTTPSConnection):
    """HTTPS whose certificate is checked for the masters' name, whatever address is dialled."""

    def __init__(self, host, port, context, timeout):
        super().__init__(host, port, timeout=timeout, context=context)
        self._tls = context

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=MASTER_NAME)


class Client(_schema._SubmitFields):
    """A client of a Flotilla cluster.

    Every argument has the CLI's default, read from the same environment variables:

    - `masters`: `host:port` of one or more masters, as a list or a comma-separated string
      (`FLOTILLA_MASTERS`). One is enough: the others are learned from the answers.
    - `token`: the cluster token (`FLOTILLA_TOKEN`); or `token_file`, a file holding it
      (`FLOTILLA_TOKEN_FILE`, read first as the CLI does). With neither, the admin token in
      the certificates directory, when it has one.
    - `certs`: the directory `flotilla certs init` made (`FLOTILLA_CERTS`): TLS, with the
      cluster CA (`ca.pem`) and the client certificate when the directory holds one.
    - `retry_for`: seconds to keep retrying while no master can answer (15, as the CLI).
    """

    def __init__(
        self,
        masters: Union[str, Sequence[str], None] = None,
        token: Optional[str] = None,
        certs: Union[str, Path, None] = None,
        *,
        token_file: Union[str, Path, None] = None,
        retry_for: float = 15.0,
    ):
        if masters is None:
            masters = os.environ.get("FLOTILLA_MASTERS", "")
        if isinstance(masters, str):
            masters = masters.split(",")
        self._addresses: List[str] = [m.strip() for m in masters if m and m.strip()]
        if not self._addresses:
            raise ConfigurationError("no master address given (masters= or FLOTILLA_MASTERS)")
        for address in self._addresses:
            _split_address(address)
        if certs is None and os.environ.get("FLOTILLA_CERTS"):
            certs = os.environ["FLOTILLA_CERTS"]
        self._tls = self._tls_context(Path(certs)) if certs else None
        self._token = self._resolve_token(token, token_file, Path(certs) if certs else None)
        self.retry_for = float(retry_for)
        self._lock = threading.Lock()
        self._leader: Optional[str] = None
        self._learned: List[str] = []

    @staticmethod
    def _resolve_token(token, token_file, certs) -> Optional[str]:
        if token:
            return token.strip()
        if token_file is None and os.environ.get("FLOTILLA_TOKEN_FILE"):
            token_file = os.environ["FLOTILLA_TOKEN_FILE"]
        if token_file is not None:
            return _read_token_file(token_file)
        if os.environ.get("FLOTILLA_TOKEN", "").strip():
            return os.environ["FLOTILLA_TOKEN"].strip()
        if certs is not None and (certs / "admin.token").exists():
            return _read_token_file(certs / "admin.token")
        return None

    @staticmethod
    def _tls_context(certs: Path) -> ssl.SSLContext:
        ca = certs / "ca.pem"
        if not ca.exists():
            raise ConfigurationError(f"{ca} does not exist (the directory `flotilla certs init` made)")
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
            if (certs / "client.pem").exists() and (certs / "client.key").exists():
                context.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
        except (OSError, ssl.SSLError) as e:
            raise ConfigurationError(f"cannot use the certificates in {certs}: {e}") from e
        return context

    # -- transport -------------------------------------------------------------------------

    @property
    def addresses(self) -> List[str]:
        """Every address the client tries: those it was given, then those it learned."""
        with self._lock:
            return self._addresses + [a for a in self._learned if a not in self._addresses]

    def _exchange(self, method, address, path, body, timeout):
        host, port = _split_address(address)
        if self._tls is not None:
            conn = _MasterConnection(host, port, self._tls, timeout)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        headers = {"accept": "application/json"}
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            masters = response.getheader(MASTERS_HEADER) or ""
            return response.status, data, [m.strip() for m in masters.split(",") if m.strip()]
        finally:
            conn.close()

    def _learn(self, masters):
        if masters:
            with self._lock:
                self._learned = [m for m in masters if m not in self._addresses]

    def request(self, method: str, path: str, body: Any = None, timeout: float = ATTEMPT_TIMEOUT) -> Any:
        """Sends one request to the leader (found as described above) and returns its JSON
        answer; `timeout` is each attempt's. For API calls the methods do not cover."""
        data = None if body is None else json.dumps(body).encode()
        deadline = time.monotonic() + self.retry_for
        backoff = 0.025
        last = "no attempt made"
        while True:
            with self._lock:
                hint = self._leader
            order = ([hint] if hint else []) + [a for a in self.addresses if a != hint]
            redirects = 0
            i = 0
            while i < len(order):
                address = order[i]
                i += 1
                try:
                    status, raw, masters = self._exchange(method, address, path, data, timeout)
                except (OSError, http.client.HTTPException, ssl.SSLError) as e:
                    # Refused, reset, timed out or cut off: ask the next master.
                    last = f"{address}: {e or type(e).__name__}"
                    with self._lock:
                        if self._leader == address:
                            self._leader = None
                    continue
                self._learn(masters)
                if 200 <= status < 300:
                    with self._lock:
                        # Any master answers a read (followers ask the leader first), so only
                        # a write's answer, or the first answer at all, says where the leader is.
                        if method != "GET" or self._leader is None:
                            self._leader = address
                    try:
                        return json.loads(raw) if raw else None
                    except ValueError as e:
                        raise ProtocolError(f"{address}: cannot decode the answer: {e}") from e
                try:
                    error = json.loads(raw)
                    if not isinstance(error, dict):
                        raise ValueError("not an object")
                except ValueError:
                    text = raw[:200].decode("utf-8", "replace")
                    error = {"code": "unknown", "error": f"HTTP {status}: {text}"}
                if status == 421:
                    last = f"{address}: {error.get('error')}"
                    leader = error.get("leader")
                    if leader:
                        redirects += 1
                        if redirects <= 3:
                            order.insert(i, leader)
                            with self._lock:
                                self._leader = leader
                elif status == 503:
                    last = f"{address}: {error.get('error')}"
                else:
                    raise from_answer(status, error, address)
            if time.monotonic() + backoff > deadline:
                tried = self.addresses
                raise Unavailable(f"no master answered ({','.join(tried)}): {last}", tried=tried, last=last)
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    def _get(self, path: str, query: Optional[Dict[str, Any]] = None, timeout: float = ATTEMPT_TIMEOUT) -> Any:
        # Flags left at False or None are not sent (the masters' defaults are false).
        pairs = {k: ("true" if v is True else v) for k, v in (query or {}).items() if v is not None and v is not False}
        return self.request("GET", path + ("?" + urlencode(pairs) if pairs else ""), timeout=timeout)

    # -- jobs ------------------------------------------------------------------------------

    def _submit(self, command, fields, wait):
        if isinstance(command, str):
            command = ["sh", "-c", command]
        command = list(command)
        if not command or not all(isinstance(part, str) for part in command):
            raise ConfigurationError("command is a program and its arguments (strings), or a shell string")
        if isinstance(fields.get("array"), int) and not isinstance(fields["array"], bool):
            fields["array"] = f"1-{fields['array']}"
        body = dict(fields, command=command)
        body.setdefault("request_id", uuid.uuid4().hex)
        job = self.request("POST", "/v1/jobs", body)["id"]
        if wait is not None:
            self.wait(job, timeout=wait)
        return job

    def job(self, job: JobRef, *, stale: bool = False) -> JobDetail:
        """A job's detail: its state, its tasks' counts, what it was submitted with."""
        return self._get(f"/v1/jobs/{_job_id(job)}", {"stale": stale})

    def status(self, *, stale: bool = False) -> Status:
        """The cluster's status: masters and their roles, workers, queue."""
        return self._get("/v1/status", {"stale": stale})

    def jobs(self, *, state: Optional[str] = None, name: Optional[str] = None, stale: bool = False) -> Iterator[Dict[str, Any]]:
        """Every job the cluster keeps, newest first (a `JobSummary` each), page by page."""
        query: Dict[str, Any] = {"state": state, "name": name, "stale": stale}
        while True:
            page = self._get("/v1/jobs", query)
            yield from page.get("jobs", [])
            if page.get("next") is None:
                return
            query["before"] = page["next"]

    def workers(self, *, stale: bool = False) -> List[WorkerView]:
        """The workers and their state (`ready`, `cordoned`, `draining`, `drained`, `lost`)."""
        return self._get("/v1/workers", {"stale": stale})

    def cancel(self, job: JobRef) -> Cancelled:
        """Cancels a job: its waiting tasks will not run, its running ones are stopped."""
        return self.request("POST", f"/v1/jobs/{_job_id(job)}/cancel")

    def wait(self, job: JobRef, timeout: Optional[float] = None) -> JobDetail:
        """Waits until the job has finished and returns its detail (check its `state`).

        Raises `WaitTimeout` after `timeout` seconds (never, with `None`). Long polls the
        leader, so it returns as soon as the job ends, and rides out a failover: while no
        master answers it retries for `retry_for` seconds each time."""
        jid = _job_id(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        detail = self.job(jid)
        while detail.get("state") not in TERMINAL_STATES:
            poll = LONG_POLL
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(f"job {jid} has not finished after {timeout} s", job=detail)
                poll = min(poll, remaining)
            wait_ms = max(1, int(poll * 1000))
            detail = self._get(f"/v1/jobs/{jid}", {"wait_ms": wait_ms}, timeout=poll + ATTEMPT_TIMEOUT)
        return detail

    def result(self, job: JobRef, *, stale: bool = False) -> str:
        """The job's result: its reduce step's stdout, or its tasks' stdout one after another
        when it has no reduce. Raises `JobFailed` when the job failed or was cancelled;
        a job still running has no result yet (`JobFailed` is not raised, `ValueError` is:
        `wait` first). `result_detail` also says whether the result was truncated."""
        answer = self.result_detail(job, stale=stale)
        if answer.get("result") is not None:
            return answer["result"]
        if answer.get("state") in ("failed", "cancelled"):
            detail = self.job(job, stale=stale)
            why = detail.get("failure") or answer["state"]
            raise JobFailed(f"job {answer.get('id')} {answer['state']}: {why}", job=detail)
        raise ValueError(f"job {answer.get('id')} is {answer.get('state')}: it has no result yet (wait for it)")

    def result_detail(self, job: JobRef, *, stale: bool = False) -> JobResult:
        """The job's result as the API gives it: `state`, `result` (None until it succeeded)
        and `truncated`."""
        return self._get(f"/v1/jobs/{_job_id(job)}/result", {"stale": stale})

    def results(self, job: JobRef, *, page_size: int = 1000, stale: bool = False) -> Iterator[TaskResultView]:
        """Each task's state and recorded result, in index order, fetched a page at a time."""
        jid = _job_id(job)
        offset = 0
        while True:
            page = self._get(
                f"/v1/jobs/{jid}/results", {"offset": offset, "limit": page_size, "stale": stale}, timeout=30.0
            )
            yield from page
            if len(page) < page_size:
                return
            offset += len(page)

    def events(self, *, after: int = 0, follow: bool = False, stale: bool = False) -> Iterator[EventView]:
        """The cluster's journal (elections, workers joining and lost, jobs finishing, …)
        from event `after` on. With `follow`, waits for new events forever (stop iterating
        to end); without, ends with the last event kept now."""
        while True:
            wait_ms = int(LONG_POLL * 1000) if follow else 0
            page = self._get(
                "/v1/events",
                {"after": after, "limit": 1000, "wait_ms": wait_ms, "stale": stale},
                timeout=wait_ms / 1000 + ATTEMPT_TIMEOUT,
            )
            events = page.get("events", [])
            yield from events
            after = max(after, int(page.get("last_seq", after)))
            if not events and not follow:
                return

    def node(self, address: str) -> Dict[str, Any]:
        """One master's own view of itself (`/v1/node`), from that master only."""
        status, raw, _ = self._exchange("GET", address, "/v1/node", None, 1.0)
        if status != 200:
            raise ProtocolError(f"{address}: HTTP {status}")
        return json.loads(raw)


__all__ = ["Client"]
