"""Who is calling an admin route, and the error a route raises to answer with a status code."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling. `admin` sees the whole organization.

    `source` says how the name was established: "admin-token" (the name is only a label),
    "token" (a spendgate token), or the identity source the proxy used (proxy_auth, api_key,
    client_ip, local_user). Only "token" and "proxy_auth" may decide requests
    (spendgate.workflow.approvals.DECIDING_SOURCES).
    """

    name: str
    admin: bool
    source: str = field(default="", compare=False)


class ApiError(Exception):
    """A route's refusal: `status` is the HTTP status to answer with, the message its error text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
