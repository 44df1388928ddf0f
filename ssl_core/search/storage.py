"""Durable index folders: one commit point, checksums of every file, a writer lock, and crash points for tests.

A folder holds generations; exactly one is committed, named by the pointer file::

    photos.index/
      CURRENT           the commit point: the committed generation and the size and sha256 of its manifest
      gen-000007/       the committed generation: data files and a manifest listing their sizes and checksums
      .lock             the writer lock: pid, host and start time of the holder while a write runs (else empty)
      shards/, work/    a sharded build's embedded shards and resumable index stages (`ssl_core.scale`), if any

A write (`write_generation`, under `WriterLock`) makes a new ``gen-N`` folder, writes and fsyncs its files and the
folder, writes the pointer to a temporary file, fsyncs it, and ``os.replace``-s it onto ``CURRENT``, then fsyncs the
index folder: that one rename is the commit. Old generations are deleted afterwards. A write killed at any point
leaves either the old pointer (and the old generation, still whole) or the new one; `recover` deletes what no
pointer names (uncommitted generations, pointer temp files) the next time the folder is opened or written.

`read_pointer` and `check_file` turn every kind of damage (missing, truncated, altered bytes) into an
`IndexFormatError` that names the file. ``PATCHLENS_CRASH_AT=<step>[:<n>]`` makes the process exit with status 137
the n-th time (default: first) it reaches `crash_point(step)`: the crash-injection tests use it.
"""
from __future__ import annotations

import datetime
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ssl_core.errors import BadRequest, IndexFormatError, NotAnIndex

POINTER_FILE, LOCK_FILE, GENERATION_PREFIX = "CURRENT", ".lock", "gen-"
SHARDS_DIR, WORK_DIR = "shards", "work"  # a sharded build's embedded shards and its resumable index stages
POINTER_VERSION = 2
CRASH_ENV = "PATCHLENS_CRASH_AT"
CRASH_STEPS = ("locked", "generation-created", "data-written", "manifest-written", "synced", "pointer-written",
               "committed", "cleanup")
_GENERATION = re.compile(r"gen-(\d{6,})")
_POINTER_TEMP = re.compile(r"\.CURRENT\.tmp-[0-9a-f]+")
_crash_counts: dict[str, int] = {}
logger = logging.getLogger(__name__)


class IndexLocked(BadRequest):
    """Another process is writing the index (the lock is held by a live process)."""


# --------------------------------------------------------------------------------------------------- checksums
@dataclass(frozen=True)
class FileRecord:
    size: int  # bytes
    sha256: str  # hex digest


def file_record(path: Path) -> FileRecord:
    """Size and sha256 of a file, read in 4 MiB chunks (sha256: about 2 GB/s with the CPU's SHA instructions)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
            size += len(chunk)
    return FileRecord(size, digest.hexdigest())


def check_file(path: Path, expected: FileRecord, label: str, contents: bool = True) -> None:
    """Refuse a file that is missing, of another size or with other contents than recorded (`IndexFormatError`).

    ``contents=False`` checks the size only (memory-mapped files of many GB, whose checksums `index verify` reads).
    """
    if not path.is_file():
        raise IndexFormatError(f"{path}: {label} is missing; the index is damaged")
    size = path.stat().st_size
    if size != expected.size:
        raise IndexFormatError(f"{path}: {label} is damaged: {size:,} bytes, {expected.size:,} were written "
                               f"(truncated or extended)")
    if not contents:
        return
    actual = file_record(path)
    if actual.sha256 != expected.sha256:
        raise IndexFormatError(f"{path}: {label} is damaged: its checksum does not match the one recorded when it "
                               f"was written (the bytes were altered)")


def crash_point(step: str) -> None:
    """Exit at once (status 137, no cleanup) when ``PATCHLENS_CRASH_AT`` names this step (and its n-th visit)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != step:
        return
    _crash_counts[step] = _crash_counts.get(step, 0) + 1
    if _crash_counts[step] == int(nth or 1):
        os._exit(137)


# --------------------------------------------------------------------------------------------------- the pointer
@dataclass(frozen=True)
class Pointer:
    generation: str  # folder name, e.g. "gen-000007"
    manifest: FileRecord  # size and checksum of the generation's manifest

    def to_bytes(self) -> bytes:
        body = {"format_version": POINTER_VERSION, "generation": self.generation, "manifest": asdict(self.manifest)}
        return (json.dumps({**body, "check": _check(body)}, indent=1) + "\n").encode()


def _check(body: dict) -> str:
    return hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=16).hexdigest()


def read_pointer(directory: Path) -> Pointer:
    """The committed generation of an index folder; `IndexFormatError` for a missing, damaged or foreign pointer."""
    path = directory / POINTER_FILE
    if not path.is_file():
        _raise_no_pointer(directory)
    try:
        data = json.loads(path.read_bytes())
        body = {k: data[k] for k in ("format_version", "generation", "manifest")}
        intact = data["check"] == _check(body)
        manifest = FileRecord(int(body["manifest"]["size"]), str(body["manifest"]["sha256"]))
        pointer = Pointer(str(body["generation"]), manifest)
    except (ValueError, KeyError, TypeError) as err:
        raise IndexFormatError(f"{path}: the commit record is damaged ({type(err).__name__}: {err})") from None
    if not intact:
        raise IndexFormatError(f"{path}: the commit record is damaged (its own checksum does not match)")
    if body["format_version"] != POINTER_VERSION:
        raise IndexFormatError(f"{path}: index format version {body['format_version']!r}, this PatchLens reads "
                               f"{POINTER_VERSION}")
    if not _GENERATION.fullmatch(pointer.generation):
        raise IndexFormatError(f"{path}: the commit record names {pointer.generation!r}, not a generation folder")
    return pointer


def _raise_no_pointer(directory: Path) -> None:
    """Why a folder has no commit record: `IndexFormatError` (missing, an old format, or damaged) or `NotAnIndex`."""
    if not directory.is_dir():
        raise IndexFormatError(f"{directory}: no such index directory")
    if (directory / "manifest.json").is_file():
        raise IndexFormatError(f"{directory}: an index of format version 1 (an older PatchLens, without checksums); "
                               f"rebuild it with `patchlens index build ... --out NEW_FOLDER`")
    found = sorted(p.name for p in directory.iterdir() if _GENERATION.fullmatch(p.name))
    if found:
        raise IndexFormatError(f"{directory}: {POINTER_FILE} is missing, so no generation ({', '.join(found)}) is "
                               f"committed: the index is damaged, or its first write never finished")
    raise NotAnIndex(f"{directory}: not an index folder (no {POINTER_FILE} and no generations); build one with "
                     f"`patchlens index build`")


# --------------------------------------------------------------------------------------------------- the writer lock
class WriterLock:
    """An exclusive lock on an index folder for one writer: ``fcntl.flock`` on ``.lock``, which names its holder.

    The kernel drops a flock when its holder dies, so a lock left by a killed writer is stale by construction:
    the next writer takes it, finds the dead holder's pid and host still written in the file (``stale_holder``)
    and overwrites them. A lock held by a live process is waited for up to ``timeout`` seconds, then
    `IndexLocked` names the holder. The file itself is never deleted (deleting a flock file races).
    """

    def __init__(self, directory: Path, timeout: float = 600.0, poll: float = 0.05):
        self.path = Path(directory) / LOCK_FILE
        self.timeout, self.poll = timeout, poll
        self.fd: int | None = None
        self.stale_holder: str = ""  # "pid N on HOST since T" of a dead holder whose lock was broken

    def acquire(self, wait: bool = True) -> bool:
        import fcntl

        deadline = time.monotonic() + (self.timeout if wait else 0.0)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = _describe_holder(os.pread(fd, 4096, 0))
                    os.close(fd)
                    if not wait:
                        return False
                    raise IndexLocked(f"{self.path.parent}: another write holds the index ({holder}) and did not "
                                      f"finish within {self.timeout:.0f} s; nothing was written") from None
                time.sleep(self.poll)
        self.stale_holder = _describe_holder(os.pread(fd, 4096, 0)) if os.fstat(fd).st_size else ""
        if self.stale_holder:
            logger.warning("%s: broke a stale lock left by a writer that died (%s)", self.path.parent, self.stale_holder)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return True

    def release(self) -> None:
        import fcntl

        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(raw: bytes) -> str:
    try:
        holder = json.loads(raw)
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


# --------------------------------------------------------------------------------------------------- writing
def generations(directory: Path) -> list[str]:
    """Generation folders present (committed or not), oldest first."""
    found = [p.name for p in directory.iterdir() if p.is_dir() and _GENERATION.fullmatch(p.name)]
    return sorted(found, key=lambda name: int(name[len(GENERATION_PREFIX):]))


def write_generation(directory: Path, write_data: Callable[[Path], list[str]],
                     write_manifest: Callable[[Path, dict[str, FileRecord]], str],
                     known: dict[str, FileRecord] | None = None) -> Pointer:
    """Write and commit a new generation; the caller holds the `WriterLock`.

    ``write_data(folder)`` writes the data files and returns their names; ``write_manifest(folder, records)``
    writes the manifest (which lists the records) and returns its name. Returns the committed pointer.
    ``known`` holds records already computed for some names (files linked from committed shards), not re-read.
    """
    known = {} if known is None else known
    existing = [int(name[len(GENERATION_PREFIX):]) for name in generations(directory)]
    folder = directory / f"{GENERATION_PREFIX}{max(existing, default=0) + 1:06d}"
    folder.mkdir()
    crash_point("generation-created")
    names = write_data(folder)
    crash_point("data-written")
    manifest_name = write_manifest(folder, {name: known.get(name) or file_record(folder / name) for name in names})
    crash_point("manifest-written")
    for name in [*names, manifest_name]:
        fsync_path(folder / name)
    fsync_path(folder)
    fsync_path(directory)
    crash_point("synced")
    pointer = Pointer(folder.name, file_record(folder / manifest_name))
    temp = directory / f".{POINTER_FILE}.tmp-{uuid.uuid4().hex[:12]}"
    with open(temp, "wb") as f:
        f.write(pointer.to_bytes())
        f.flush()
        os.fsync(f.fileno())
    crash_point("pointer-written")
    os.replace(temp, directory / POINTER_FILE)  # the commit
    fsync_path(directory)
    crash_point("committed")
    remove_uncommitted(directory, pointer.generation)
    return pointer


def remove_uncommitted(directory: Path, committed: str | None) -> list[str]:
    """Delete generations other than ``committed`` and pointer temp files (caller holds the lock); their names."""
    removed = []
    for entry in sorted(directory.iterdir()):
        if entry.name == committed:
            continue
        if entry.is_dir() and _GENERATION.fullmatch(entry.name):
            shutil.rmtree(entry)
        elif entry.is_file() and _POINTER_TEMP.fullmatch(entry.name):
            entry.unlink()
        else:
            continue
        removed.append(entry.name)
        crash_point("cleanup")
    return removed


def recover(directory: Path) -> list[str]:
    """Clean what interrupted writes left (only when no write is running and the folder is writable)."""
    if not (directory / POINTER_FILE).is_file():
        return []
    lock = WriterLock(directory)
    try:
        if not lock.acquire(wait=False):
            return []
    except OSError:  # a read-only folder: nothing can be cleaned, and nothing needs to be for reading
        return []
    try:
        return remove_uncommitted(directory, read_pointer(directory).generation)
    except (IndexFormatError, OSError):
        return []  # a damaged pointer: keep everything, loading reports the damage
    finally:
        lock.release()


def is_index_directory(directory: Path) -> bool:
    """Whether a folder holds a (committed) index of this format."""
    return (Path(directory) / POINTER_FILE).is_file()


def check_writable_target(directory: Path) -> None:
    """Refuse to write an index into a folder that holds other things (it would be mixed with them)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise BadRequest(f"{directory}: exists and is not a folder; choose a new folder for the index")
    ours = {POINTER_FILE, LOCK_FILE, SHARDS_DIR, WORK_DIR}
    foreign = [p.name for p in directory.iterdir() if p.name not in ours and not _GENERATION.fullmatch(p.name)
               and not _POINTER_TEMP.fullmatch(p.name)]
    if "manifest.json" in foreign:
        raise BadRequest(f"{directory}: holds an index of format version 1 (an older PatchLens); write the new index "
                         f"to another folder, or delete this one first")
    if foreign:
        raise BadRequest(f"{directory}: the folder holds other files ({', '.join(sorted(foreign)[:5])}), so it is not "
                         f"an index folder; choose a new or empty folder for the index")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = ["FileRecord", "Pointer", "WriterLock", "IndexLocked", "file_record", "check_file", "read_pointer",
           "write_generation", "remove_uncommitted", "recover", "generations", "crash_point", "is_index_directory",
           "check_writable_target", "fsync_path", "POINTER_FILE", "LOCK_FILE", "SHARDS_DIR", "WORK_DIR", "CRASH_ENV", "CRASH_STEPS"]
