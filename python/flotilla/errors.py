"""The exceptions the client raises, one class per kind of failure.

Answers the cluster gave carry its typed `code` (one of `API_ERROR_CODES`) and map onto a
class by it, never by parsing the message:

    not_found            NotFound
    gone                 Gone (a NotFound: the job was removed by retention)
    bad_request          InvalidRequest
    too_large            InvalidRequest
    unauthorized         Unauthorized
    forbidden            Forbidden
    conflict             Conflict
    not_leader           followed to the leader named, like the Rust client
    no_leader, unavailable
                         retried until the client's deadline, then Unavailable
    internal, timeout, unknown
                         ApiError
"""

from typing import Optional


class FlotillaError(Exception):
    """The base of every error the client raises."""


class ConfigurationError(FlotillaError, ValueError):
    """The client was given something it cannot use: no master address, an unreadable token
    file, a certificates directory without `ca.pem`."""


class ApiError(FlotillaError):
    """The cluster answered with an error. `code` is the API's error code, `status` the HTTP
    status, `message` the cluster's explanation."""

    def __init__(self, message: str, code: str = "unknown", status: int = 0, address: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.address = address


class InvalidRequest(ApiError):
    """The request was malformed or refused (`bad_request`, `too_large`)."""


class Unauthorized(ApiError):
    """No token, or one the cluster does not know (`unauthorized`)."""


class Forbidden(ApiError):
    """The token's role may not do this (`forbidden`)."""


class NotFound(ApiError):
    """No such job, worker, master, token, schedule or pool (`not_found`)."""


class Gone(NotFound):
    """The job existed but retention has removed it (`gone`)."""


class Conflict(ApiError):
    """The request conflicts with the cluster's state (`conflict`): a name in use, say."""


class Unavailable(FlotillaError):
    """No master could answer before the client's deadline: all down, no leader elected, or
    the cluster kept saying it could not serve yet (`no_leader`, `unavailable`).
    `tried` lists the addresses asked, `last` the last failure seen."""

    def __init__(self, message: str, tried=(), last: str = ""):
        super().__init__(message)
        self.tried = list(tried)
        self.last = last


class ProtocolError(FlotillaError):
    """A master's answer could not be understood (not JSON, or not the expected shape)."""


class WaitTimeout(FlotillaError, TimeoutError):
    """`wait` ran out of time before the job finished. `job` is the job's last state seen."""

    def __init__(self, message: str, job=None):
        super().__init__(message)
        self.job = job


class JobFailed(FlotillaError):
    """The job ended without succeeding (`failed` or `cancelled`): it has no result.
    `job` is its detail (`state`, `failure`, `upstream_failed`, …)."""

    def __init__(self, message: str, job=None):
        super().__init__(message)
        self.job = job

    @property
    def state(self) -> Optional[str]:
        return (self.job or {}).get("state")


_BY_CODE = {
    "not_found": NotFound,
    "gone": Gone,
    "bad_request": InvalidRequest,
    "too_large": InvalidRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "conflict": Conflict,
}


def from_answer(status: int, body: dict, address: str) -> ApiError:
    """The exception for an error answer (an `ApiError` body)."""
    code = str(body.get("code", "unknown"))
    message = str(body.get("error", f"HTTP {status}"))
    return _BY_CODE.get(code, ApiError)(message, code=code, status=status, address=address)
