"""Which image files a gallery source names: files as given, folders walked, and links that are not followed named.

A folder's symlinked subfolders are not walked (a link to an enclosing folder would loop for ever), and a link
that resolves to itself is no file: both are reported ("path: reason") instead of vanishing without a word.
A caller that may read only some folders (the app: `app.access.Access.walk_problem`) passes ``readable``: each
file found is kept only where that says nothing against it, and reported by the line it returns otherwise.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, Sequence

from ssl_core.data.images import expand_image_paths

Readable = Callable[[Path], str]  # "" when a file may be read, else the line that reports it


def gallery_files(sources: Sequence[str | os.PathLike], readable: Readable | None = None,
                  ) -> tuple[list[Path], list[str], list[str]]:
    """(image files of files and folders as `expand_image_paths` finds them, ["path: reason" for links skipped],
    [what ``readable`` reports for the files it refuses])."""
    paths: list[Path] = []
    skipped: list[str] = []
    refused: list[str] = []
    for source in map(Path, sources):
        links = [source] if source.is_symlink() else []
        if source.is_dir():
            links += sorted(p for p in source.rglob("*") if p.is_symlink())
        loops = set()
        for link in links:
            reason = link_problem(link)
            if reason:
                skipped.append(f"{link}: {reason}")
                loops.add(link)
        for path in expand_image_paths([source]):
            problem = readable(path) if readable is not None and path not in loops else ""
            if problem:
                refused.append(problem)
            elif path not in loops:
                paths.append(path)
    return paths, skipped, refused


def link_problem(link: Path) -> str:
    """Why a symlink is not followed ("" when it is an ordinary link to a file, or dangling)."""
    try:
        target = link.resolve(strict=True)
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        return "symlink loop, skipped"
    except OSError as err:
        return "symlink loop, skipped" if err.errno == errno.ELOOP else ""  # dangling: the image loader says so
    if target.is_dir():
        parent = link.parent.resolve()
        if target == parent or target in parent.parents:
            return "symlink to an enclosing folder (a loop), not followed"
        return "symlinked folder, not followed (pass it as a source to index it)"
    return ""


__all__ = ["gallery_files", "link_problem"]
