"""Flotilla's Python client: submit jobs to a Flotilla cluster, wait for them, read results.

    import flotilla
    client = flotilla.Client()            # FLOTILLA_MASTERS, FLOTILLA_TOKEN, FLOTILLA_CERTS
    job = client.submit(["sh", "-c", "echo $FLOTILLA_TASK_INDEX"], array="1-10",
                        reduce="awk '{s+=$1} END {print s}'")
    client.wait(job, timeout=60)
    print(client.result(job))             # 55

The client follows the leader and rides out failovers as the `flotilla` CLI does; errors are
typed (`NotFound`, `Unauthorized`, `Forbidden`, `Unavailable`, `InvalidRequest`, …).
"""

from ._schema import API_VERSION
from .client import Client
from .errors import (
    ApiError,
    ConfigurationError,
    Conflict,
    FlotillaError,
    Forbidden,
    Gone,
    InvalidRequest,
    JobFailed,
    NotFound,
    ProtocolError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)

__version__ = "0.2.0"

__all__ = [
    "API_VERSION",
    "ApiError",
    "Client",
    "ConfigurationError",
    "Conflict",
    "FlotillaError",
    "Forbidden",
    "Gone",
    "InvalidRequest",
    "JobFailed",
    "NotFound",
    "ProtocolError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
]
