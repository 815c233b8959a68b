"""Writing a file atomically, and the error every reader and writer of :mod:`fundl.io` raises."""

from __future__ import annotations

import os
import re
import secrets
import socket
from typing import Any, Callable, Union

__all__ = ["CheckpointError", "PathLike", "atomic_write"]

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read, or that does not match ``like``.

    The message names the file and, where it applies, the tree path.
    """


# --- encoding ---------------------------------------------------------------------


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> None:
    """``write(f)`` into a temporary file beside ``path``, then move it over ``path``.

    The rules of :func:`save`: fsynced before ``os.replace`` (a crash leaves the
    old file), a symlink's target replaced (the link stays), a new file's mode
    from the umask and an old one's kept, stale temporary files of dead writers
    removed.
    """
    target = os.path.realpath(os.fspath(path))  # through symlinks: replace the file
    directory, name = os.path.split(target)
    _remove_stale_temps(directory, name)
    mode = (os.stat(target).st_mode & 0o777) if os.path.exists(target) else None
    fd, tmp = _create_temp(directory, name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _host_tag() -> str:
    """This host's name as it appears in temporary file names (``[A-Za-z0-9-]`` only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _create_temp(directory: str, name: str) -> "tuple[int, str]":
    """A new, empty temporary file for ``name``, created like ``open()`` creates files.

    ``O_CREAT | O_EXCL`` with mode ``0o666``: the kernel applies the umask (and any
    default ACL), exactly as for a plain ``open(path, "wb")``.
    """
    prefix = f".{name}.{_host_tag()}.{os.getpid()}."
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(directory, prefix + secrets.token_hex(4) + ".tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another save of this process (a thread) may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process, or unknowable: keep the file
    return True


def _remove_stale_temps(directory: str, name: str) -> None:
    """Delete ``name``'s temporary files left by dead writers of this host.

    A temporary file records its writer's host and pid; one whose pid is not a
    running process of this host was left by a killed save and can never be
    renamed into place.  Files of other hosts (a shared file system) and of
    live pids (possibly a reused pid: then the file waits for a later save)
    are left alone.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.{re.escape(_host_tag())}"
                         r"\.([0-9]+)\.[0-9a-f]+\.tmp")
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass


def _fsync_dir(directory: str) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- reading: the archive -----------------------------------------------------------
