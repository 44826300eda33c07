"""Private files: created 0600 (directories 0700), written atomically, symlinks never followed.

Ledger, WAL, reservation journal, discovery file (it holds the admin token), exports and kit
files with credentials are state a local user other than the owner must not read or plant.
Temporary files come from `mkstemp` (O_EXCL, random name, 0600) in the target's directory and
replace the target with `os.replace`, so a symlink planted at the target name is replaced, not
followed. Small and dependency-free.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # 0 on Windows, where symlinks need privileges anyway
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
PRIVATE_UMASK = 0o077  # what the gateway process runs with: files 0600, directories 0700


class UnsafePath(OSError):
    """A state file path that is a symbolic link (or not a regular file)."""


def private_dir(path: Path) -> Path:
    """`path` and missing parents, the ones we create 0700; an existing directory is left alone."""
    missing = []
    p = Path(path)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
    return Path(path)


def refuse_symlink(path: Path) -> None:
    """Raise UnsafePath when `path` exists as a symlink or a non-regular file (FIFO, device)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symbolic link; spendgate does not follow links for its state files")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{path} is not a regular file")


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created inside (also by libraries such as DuckDB) are owner-only. Process-wide:
    use around start-up work, not while other threads create files they mean to share."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def tighten(path: Path, mode: int = 0o600) -> None:
    """Drop permission bits beyond `mode` from a file we own (an existing 0644 ledger, say)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~mode:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def prepare_private_file(path: Path) -> None:
    """Before a library creates or opens `path`: no symlink there (we never follow one), parent
    directories we create are 0700, an existing file of ours is tightened to 0600."""
    refuse_symlink(path)
    private_dir(Path(path).parent)
    tighten(path)


def open_append(path: Path, mode: int = 0o600) -> int:
    """An O_APPEND descriptor on a private file (created `mode`; links not followed)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, mode)
    try:
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) & ~mode and st.st_uid == os.geteuid():
            os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_atomic_chunks(path: Path, chunks: Iterable[bytes], mode: int = 0o600) -> int:
    """write_atomic for data arriving in chunks (never whole in memory); returns bytes written."""
    path = Path(path)
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return size


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` in one step: mkstemp next to it, chmod `mode`, fsync, os.replace."""
    write_atomic_chunks(path, (data,), mode)


def discovery_path(db_path: Path) -> Path:
    """The running gateway's discovery file next to its ledger (admin port and token, 0600). Here,
    not in spendgate.web.server, so CLI commands that only check for a gateway do not import the
    web package (~100 ms: app, approvals, budgets)."""
    return db_path.with_name(db_path.name + ".gateway.json")
