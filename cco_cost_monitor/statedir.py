"""What the daemon trusts in its state directory: permissions, symlinks, private files.

Everything the daemon writes there (``daemon.pid``, ``daemon.json``, ``monitor.log``,
``monitor.db`` and its ``-wal``/``-shm``) is created ``0600`` in a ``0700`` directory, and
opened with ``O_NOFOLLOW`` so that a symlink planted in its place cannot redirect the write
to another file (``daemon.json.tmp`` is also ``O_EXCL``: it is always a new file). The state
directory and the config file must not be writable by group or others: whoever can edit
``config.toml`` chooses the ``alerts.command`` the daemon runs, and whoever can write the
directory can swap any of these files. A ``monitor.db`` that is a dangling symlink is
refused (SQLite would create its target with the umask's mode).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from cco_cost_monitor.errors import ConfigError, StartupError

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "check_config_file",
    "check_database_path",
    "check_state_dir",
    "make_private",
    "open_private",
]

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
_GROUP_OTHER = 0o077
#: make_private looks at no more entries than this (a state dir holds about ten).
ENTRY_LIMIT = 1000


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def check_state_dir(path: Path) -> None:
    """Refuse a state directory that is not a directory or is writable by group/others."""
    try:
        st = path.stat()
    except OSError as exc:
        raise StartupError(f"state dir {path} is unusable: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"state dir {path} is not a directory")
    if st.st_mode & _GROUP_OTHER_WRITE:
        raise StartupError(
            f"state dir {path} is writable by group or others (mode {_mode(st)}): anyone "
            f"who can write it can replace the daemon's files; run: chmod go-w {path}"
        )


def check_config_file(path: Path) -> None:
    """Refuse a config file writable by group/others: it chooses the alert command."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    if st.st_mode & _GROUP_OTHER_WRITE:
        raise ConfigError(
            f"config file {path} is writable by group or others (mode {_mode(st)}): it "
            f"chooses the command run on alerts; run: chmod go-w {path}"
        )


def check_database_path(path: Path) -> None:
    """Refuse a ``monitor.db`` that is a symlink to nowhere."""
    if path.is_symlink() and not path.exists():
        raise StartupError(
            f"database {path} is a symlink to a missing file ({os.readlink(path)}); "
            "remove the link or restore its target"
        )


def open_private(path: Path, flags: int, *, exclusive: bool = False) -> int:
    """``os.open`` with mode 0600, ``O_NOFOLLOW``, ``O_CLOEXEC`` (and ``O_EXCL`` if asked).

    A file that exists already keeps its contents but loses any group/other permission (an
    older version, or a copy made under umask 022, left it readable). A symlink in
    ``path``'s place raises :class:`StartupError` naming the file.
    """
    flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if exclusive:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, PRIVATE_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and path.is_symlink()):
            raise StartupError(
                f"{path} is a symlink: refusing to write through it (remove it)"
            ) from None
        raise
    _tighten(fd)
    return fd


def _tighten(fd: int) -> int | None:
    """Drop group/other bits from an open file this user owns; its old mode if changed."""
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if not mode & _GROUP_OTHER or st.st_uid != os.geteuid():
        return None
    os.fchmod(fd, mode & ~_GROUP_OTHER)
    return mode


def make_private(state_dir: Path) -> list[str]:
    """Take group/other permissions off the state dir and the regular files in it.

    Files are created private (0600 in a 0700 dir, under umask 077), but a state dir from an
    older version, restored from a backup or shared by mistake keeps whatever mode it had:
    the database, the log and ``daemon.json`` (the port, the pid) readable by every local
    user. Only what this user owns is changed; symlinks and special files are left alone (a
    symlink is refused where it is opened). Returns ``name old-mode`` for each change, for
    the log.
    """
    changed: list[str] = []
    st = state_dir.stat()
    if st.st_mode & _GROUP_OTHER and st.st_uid == os.geteuid():
        state_dir.chmod(stat.S_IMODE(st.st_mode) & ~_GROUP_OTHER)
        changed.append(f"{state_dir.name}/ {_mode(st)}")
    with os.scandir(state_dir) as entries:
        for index, entry in enumerate(entries):
            if index >= ENTRY_LIMIT:
                break
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue  # gone, or not ours to read: nothing to tighten
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode) and (old := _tighten(fd)) is not None:
                    changed.append(f"{entry.name} {old:04o}")
            finally:
                os.close(fd)
    return changed
