"""Where the real provider recordings are: the repository's copies first, then the shared ones.

`tests/fixtures/wire` holds every recording whose license allows it in an MIT repository; the
AGPL-3.0 ones (coder/aibridge) stay in `../shared/fixtures/wire` beside the checkout (see
tests/fixtures/wire/SOURCES.md). A test reading one that is nowhere skips and names it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
WIRE_DIRS = (
    _REPO / "tests" / "fixtures" / "wire",
    _REPO.parent / "shared" / "fixtures" / "wire",
    Path("/work/shared/fixtures/wire"),
)


def wire_path(name: str) -> Path:
    """The recording `name` (a file name in SOURCES.md); skips the calling test when absent."""
    for d in WIRE_DIRS:
        if (d / name).is_file():
            return d / name
    pytest.skip(f"wire recording not available: {name} (not in tests/fixtures/wire: the AGPL-3.0 ones are kept in "
                "../shared/fixtures/wire only, see its SOURCES.md)")


def wire_bytes(name: str) -> bytes:
    return wire_path(name).read_bytes()
