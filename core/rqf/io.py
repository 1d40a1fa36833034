"""Writing files so that an interrupted process never leaves a half-written one, one writer
per folder (an OS lock that dies with its process), and one-line answers to a full disk."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from rqf.errors import RqfError

# below this many free bytes a failed write is taken for a full disk even when the library
# that failed (torch's zip writer, HDF5) did not pass the errno on
_NEARLY_FULL = 1 << 20


class DiskFullError(RqfError):
    """The device ran out of space; what was being written is named, nothing half-written."""


def is_disk_full(exc: BaseException, directory: Path | str | None = None) -> bool:
    """Whether ``exc`` (or what caused it) is the device running out of space."""
    if isinstance(exc, RqfError) and not isinstance(exc, DiskFullError):
        return False  # rqf's own refusal says what happened; never guess a full disk over it
    for seen in _chain(exc):
        if isinstance(seen, DiskFullError):
            return True
        if getattr(seen, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "errno = 28" in text:
            return True
    if directory is not None:
        try:
            st = os.statvfs(directory)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < _NEARLY_FULL
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it, outermost first."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def disk_full(path: Path | str) -> DiskFullError:
    return DiskFullError(f"no space left on device while writing {path}")


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it to read it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or not a pid we can judge): leave it
    return True


def _writer_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files ``atomic_path`` left for ``path`` in processes that are gone
    (killed before their rename): each one's name holds its writer's pid and host, and a file
    whose writer is alive, runs on another host (a shared file system), or cannot be told,
    stays."""
    removed, host = [], socket.gethostname()
    for tmp in temporaries_of(path.parent, path.name):
        tag = tmp.name[len(path.name) + 2:-len(".tmp")].rsplit(".", 1)[0]
        pid, _, where = tag.partition("@")
        if pid.isdigit() and where == host and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    The file gets the mode a plain ``open`` would give it (the umask's, or the mode of the
    file it replaces), not ``mkstemp``'s 0600, so others can read what rqf writes as they can
    read what any program writes. The temporary is named with its writer's pid and host, and
    temporaries a killed process on this host left for ``path`` are removed first. A full
    disk ends in one ``DiskFullError`` naming ``path``, with the temporary file gone; a file
    over the process's size limit (``ulimit -f``) in one line naming it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp",
                                   dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    try:
        mode = os.stat(path).st_mode & 0o777 if path.is_file() else 0o666 & ~_umask()
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if not isinstance(exc, DiskFullError) and isinstance(exc, Exception) \
                and is_disk_full(exc, path.parent):
            raise disk_full(path) from None
        if _too_large(exc):
            raise RqfError(f"{path}: larger than this process may write (its file size "
                           "limit, ulimit -f); nothing was written") from None
        raise


def _too_large(exc: BaseException) -> bool:
    return any(getattr(seen, "errno", None) == errno.EFBIG or "File too large" in str(seen)
               for seen in _chain(exc))


@contextlib.contextmanager
def atomic_h5(path: Path | str) -> Iterator[Any]:
    """An HDF5 file built in memory, written to ``path`` under a temporary name and renamed.

    HDF5 writes its buffers when objects are released, so a full disk met inside the library
    surfaces late, from destructors, and can take the process down; built in memory, the one
    write to disk is a plain one that fails cleanly. For files that fit in memory twice.
    """
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        yield f
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as out:
            out.write(buffer.getbuffer())
            out.flush()
            os.fsync(out.fileno())


def temporaries_of(directory: Path, name: str) -> list[Path]:
    """The temporary files ``atomic_path`` makes for ``directory/name`` (left by a kill)."""
    return sorted(Path(directory).glob(f".{name}.*.tmp"))


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: Path | str, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


class FolderLock:
    """An exclusive OS lock on a folder, held by one writer at a time.

    The lock is ``flock`` on ``directory/<name>`` (through ``filelock``), so the kernel drops
    it when the holder dies, however it dies: a killed writer never leaves the folder locked.
    Who holds it (pid, host, since when) is written beside it, so the writer that is refused
    can say who holds it. Readers never take it.
    """

    def __init__(self, directory: Path | str, what: str, name: str = ".rqf-writer.lock") -> None:
        self.directory = Path(directory)
        self.what = what
        self.path = self.directory / name
        self.holder_path = self.directory / (name + ".holder")
        self._lock = None

    def acquire(self) -> "FolderLock":
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RqfError(f"{self.directory}: another {self.what} is writing here "
                           f"({self._holder()}); one writer at a time") from None
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(self.path) from None
            raise RqfError(f"{self.directory}: cannot take the writer lock ({exc})") from None
        self._lock = lock
        try:
            write_text_atomic(self.holder_path, json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        except BaseException:
            self.release()
            raise
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(self.holder_path.read_text())
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
            return f"process {int(info['pid'])} on {info['host']}, since {since}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that has not yet said which"

    def release(self) -> None:
        if self._lock is None:
            return
        self.holder_path.unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def busy(self) -> str | None:
        """Who holds the lock now (another live process), or None; creates no file."""
        if self._lock is not None or not self.path.exists():
            return None
        from filelock import FileLock, Timeout

        probe = FileLock(self.path, timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return self._holder()
        except OSError:
            return None
        probe.release()
        return None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def stored_outside(group: Any, name: str) -> str | None:
    """How the dataset ``group[name]`` keeps its values outside its HDF5 file (an external
    link, a virtual dataset, external raw storage), or None when they are in the file.

    rqf reads only what a file holds: such a dataset could make a reader follow a path
    anywhere on the machine.
    """
    import h5py

    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return f"is an external link to {link.filename}:{link.path}"
    obj = group.get(name)
    if isinstance(obj, h5py.Dataset):
        if obj.is_virtual:
            return "is a virtual dataset mapped from other files"
        if obj.external:
            return f"keeps its values in an external file ({obj.external[0][0]})"
    return None


def check_output(out: Path, force: bool, reads: Iterable[tuple[str, Path]] = ()) -> None:
    """Refuse an output path before anything is written: one that is, holds or lies inside
    something the command reads (``reads``: what to say of it, its path), a symlink or hard link
    to one of them, one inside a run folder (``rqf run`` alone writes there), an existing
    folder, or an existing file without ``force``."""
    from rqf.rundir import MARKER  # the run folder's own module names its marker

    out = Path(out)
    target = out.resolve()
    for folder in target.parents:
        if (folder / MARKER).is_file():
            raise RqfError(f"--out {out}: inside the run folder {folder}; only rqf run writes "
                           "there (its exports are redone by rqf run --resume): choose another "
                           "--out")
    for what, path in reads:
        path = Path(path)
        source = path.resolve()
        same = out.exists() and path.exists() and os.path.samefile(out, path)
        if same or target == source or source in target.parents or target in source.parents:
            raise RqfError(f"--out {out}: {what}; rqf never writes over or into what a command "
                           "reads: choose another --out")
    if out.exists() or out.is_symlink():
        if out.is_dir():
            raise RqfError(f"--out {out}: an existing folder; the output goes to a new file or "
                           "folder (remove it, or choose another --out)")
        if not force:
            raise RqfError(f"--out {out}: exists; pass --force to replace it")
