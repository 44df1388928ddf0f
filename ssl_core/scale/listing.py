"""Which image files a sharded build reads: folders, globs, list files, local paths and fsspec URLs.

    files, skipped = list_sources(["photos/", "more/*.jpg", "list.txt", "s3://bucket/gallery/"])

* **A local folder** is walked as the single-process build walks it (`ssl_core.search.sources.gallery_files`:
  image suffixes, symlinked folders and loops named in ``skipped``, not followed); **a local glob**
  (``photos/**/*.jpg``) is expanded with ``glob`` (matched folders are walked).
* **A list file** (``.txt`` / ``.lst``: one path or URL a line, ``#`` comments; ``.parquet``: a ``path`` column)
  names files, not folders; relative entries are relative to the list file's folder.
* **A URL** (``s3://``, ``gs://``, ``https://``, ``file://`` ...) is listed with fsspec: a folder recursively (image
  suffixes), a glob, or one file. The workers read it with fsspec too, so it must be readable from every node.

Each file carries a ``version`` from the listing (size and modification time, or the store's ETag), which goes
into the name of its shard: a file changed in place lands in a new shard and is embedded again. Entries of a list
file that are URLs are not looked up one by one (that is one request per file): their version is empty.
Local paths are resolved (as the single-process index stores them); the result is sorted by path.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ssl_core.data.images import IMAGE_SUFFIXES, is_url
from ssl_core.errors import BadRequest
from ssl_core.search.sources import gallery_files

LIST_SUFFIXES = (".txt", ".lst", ".parquet")
GLOB_CHARS = ("*", "?", "[")
_VERSION_KEYS = ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag", "md5Hash")


@dataclass(frozen=True)
class SourceFile:
    path: str  # resolved local path or URL
    version: str  # what the listing says of its state ("size-mtime"); "" when not looked up


def list_sources(sources: Sequence[str | os.PathLike]) -> tuple[list[SourceFile], list[str]]:
    """(the image files the sources name, sorted and without repeats; ["path: reason" for links not followed])."""
    found: dict[str, SourceFile] = {}
    skipped: list[str] = []
    for source in map(str, sources):
        if is_url(source) and not source.lower().endswith(LIST_SUFFIXES):
            files = _list_url(source)
        elif source.lower().endswith(LIST_SUFFIXES) and (is_url(source) or Path(source).is_file()):
            files = _list_file(source)
        else:
            files, skips = _list_local(source)
            skipped += skips
        for file in files:
            found.setdefault(file.path, file)
    return [found[path] for path in sorted(found)], skipped


def local_file(path: str | os.PathLike) -> SourceFile:
    """A local file, resolved, with its size and modification time (a missing file: empty version; its read
    reports it)."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError:
        return SourceFile(str(resolved), "")
    return SourceFile(str(resolved), f"{stat.st_size}-{stat.st_mtime_ns}")


def _list_local(source: str) -> tuple[list[SourceFile], list[str]]:
    if any(c in source for c in GLOB_CHARS) and not Path(source).exists():
        matches = sorted(glob.glob(source, recursive=True))
        if not matches:
            raise BadRequest(f"{source}: the pattern matches no file")
    else:
        matches = [source]
    paths, skipped, _ = gallery_files(matches)  # no `readable`: the CLI reads what its user names
    return [local_file(p) for p in paths], skipped


def _list_url(source: str) -> list[SourceFile]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    try:
        if any(c in root for c in GLOB_CHARS):
            entries = fs.glob(root, detail=True)
        elif fs.isdir(root):
            entries = fs.find(root, detail=True)
        else:
            entries = {root: fs.info(root)}
    except FileNotFoundError:
        return [SourceFile(source, "")]  # reading it reports "no such file" in the failure list
    except (OSError, ValueError) as err:
        raise BadRequest(f"{source}: cannot list it ({type(err).__name__}: {err})") from None
    single = len(entries) == 1 and root in entries
    return [SourceFile(fs.unstrip_protocol(name), _version(info)) for name, info in sorted(entries.items())
            if info.get("type", "file") == "file" and (single or Path(name).suffix.lower() in IMAGE_SUFFIXES)]


def _version(info: dict) -> str:
    stamp = next((str(info[key]) for key in _VERSION_KEYS if info.get(key) is not None), "")
    return f"{info.get('size', '')}-{stamp}"


def _list_file(source: str) -> list[SourceFile]:
    entries = _read_list(source)
    base = None if is_url(source) else Path(source).resolve().parent
    files = []
    for entry in entries:
        if is_url(entry):
            files.append(SourceFile(entry, ""))
        elif base is None:
            raise BadRequest(f"{source}: a list read from a URL must name URLs, not the local path {entry!r}")
        else:
            files.append(local_file(base / entry))
    return files


def _read_list(source: str) -> list[str]:
    """The entries of a list file: lines of a text file, or the ``path`` column of a Parquet file."""
    import fsspec

    try:
        with fsspec.open(source, "rb") as f:
            data = f.read()
    except OSError as err:
        raise BadRequest(f"{source}: cannot read the list ({type(err).__name__}: {err})") from None
    if not source.lower().endswith(".parquet"):
        lines = (line.strip() for line in data.decode("utf-8", errors="replace").splitlines())
        return [line for line in lines if line and not line.startswith("#")]
    import io

    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as err:  # pyarrow raises its own family (ArrowInvalid ...) for a file that is not Parquet
        raise BadRequest(f"{source}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    if "path" not in table.column_names:
        raise BadRequest(f"{source}: a Parquet list needs a 'path' column (it has {', '.join(table.column_names)})")
    return [str(p) for p in table.column("path").to_pylist() if p]


__all__ = ["SourceFile", "list_sources", "local_file", "LIST_SUFFIXES"]
