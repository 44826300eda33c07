"""Fixtures every test directory shares: a real PostgreSQL cluster for the scale-out store.

`postgres` starts one throwaway cluster per session on first use (tests that never ask for it pay
nothing); `pg_url` is a fresh database per test. Without PostgreSQL the tests skip on a developer
machine and FAIL in CI (CI=true): a CI run must not pass by skipping the store it claims to test.
"""

from __future__ import annotations

import os

import pytest

from tests.support import clear_of_midnight
from tests.support.postgres import PostgresCluster, PostgresUnavailable

# the time zones whose days the tests' policies count in (UTC unless set; Europe/Berlin shares Paris's)
MIDNIGHTS = ("UTC", "Europe/Paris")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """No test straddles a day's end: tests charge "today" with rows up to five minutes old or
    requests made now, and read today's spend back. Within two minutes before a midnight, or six
    after it, a test first waits (at most once a run: the next tests start clear of it). The wait
    comes before pytest-timeout starts the test's clock (its hook wraps inside this one): as an
    autouse fixture it counted as the test's setup, and a wait of up to eight minutes passed the
    300 s limit, failing whichever test a run reached at 23:00 or 00:00 UTC."""
    for tz in MIDNIGHTS:
        clear_of_midnight(tz, before=120.0, after=360.0)
    yield


@pytest.fixture(scope="session")
def postgres():
    try:
        cluster = PostgresCluster().__enter__()
    except PostgresUnavailable as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"PostgreSQL is required in CI: {e}")
        pytest.skip(f"PostgreSQL unavailable: {e}")
    yield cluster
    cluster.cleanup()


@pytest.fixture
def pg_url(postgres) -> str:
    if not postgres.running:  # a test stopped it (store-unreachable tests) and failed before restarting
        postgres.start()
    return postgres.create_database()
