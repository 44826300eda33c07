"""Who is calling an admin route, and the error a route raises to answer with a status code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling. `admin` sees the whole organization."""

    name: str
    admin: bool


class ApiError(Exception):
    """A route's refusal: `status` is the HTTP status to answer with, the message its error text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
