"""The one check for every path, URL and model name a client of the app sends (docs/security.md, "The app").

A client may name:

* a file or folder on the server: only by a path whose *real* location (every symlink resolved) lies under an
  allowed folder (``--allow-dir``) and outside the app's private folders (the upload folder, the session folders,
  the exports), even where an allowed folder holds them; files found by walking a folder are checked the same way;
* an upload: only one of its own session's (`Access.upload`);
* a model: a name from the registry or a timm model id (`check_model_name`); an MAE: a name from the MAE list.

Anything else (a path outside, a URL, ``..``, a name that is a path) is refused with one message per field that is
the same whether the file exists, is unreadable or is missing, so a refusal tells nothing about the server's files.

The session is the Gradio session of the event being served (`SESSION`, set by `app.ui.session.session_bound`).
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ssl_core.errors import BadRequest
from ssl_core.models.registry import MAE_SOURCES, all_specs

SESSION: ContextVar[str | None] = ContextVar("patchlens_session", default=None)
TIMM_ID = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)?")
MODEL_REFUSED = ("Refused: the model must be one from the list or a timm model id (such as "
                 "vit_small_patch16_224.augreg_in21k); a weights file goes in the weights box. No paths, no URLs.")
OUTSIDE = "leads outside the allowed folders, not read"
PRIVATE = "lies in the app's own folders, not read"


@contextmanager
def session(session_id: str | None) -> Iterator[None]:
    """Serve what runs inside as session ``session_id`` (None: no session, so no uploads)."""
    token = SESSION.set(session_id)
    try:
        yield
    finally:
        SESSION.reset(token)


def real_path(path: str | os.PathLike) -> Path | None:
    """The absolute path with every symlink resolved (None for text that is no path: a NUL byte, too long)."""
    try:
        return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    except (OSError, ValueError):
        return None


def is_within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_model_name(name: str) -> str:
    """``name`` if it names an encoder of the registry or a timm model (with a known pretrained tag), else the one
    refusal: a model name is never a path or a URL."""
    if name in {spec.name for spec in all_specs()}:
        return name
    import timm
    from timm.models import get_arch_pretrained_cfgs

    arch, _, tag = name.partition(".")
    if TIMM_ID.fullmatch(name) and timm.is_model(arch) and (not tag or name in get_arch_pretrained_cfgs(arch)):
        return name
    raise BadRequest(MODEL_REFUSED)


def check_mae_name(name: str | None, with_weights: bool) -> str | None:
    """An MAE name as `ssl_core.mim.mae_checkpoints.open_mae` takes it, never a path, URL or hub repository:
    one of `MAE_SOURCES`, or with a weights file a timm architecture for its encoder."""
    if not name or name in MAE_SOURCES:
        return name or None
    import timm

    if with_weights and TIMM_ID.fullmatch(name) and timm.is_model(name):
        return name
    raise BadRequest(MODEL_REFUSED)


class Access:
    """What the clients of one app may read and write: allowed folders, private folders, each session's uploads."""

    def __init__(self, allow_dirs: Sequence[Path], upload_dirs: Sequence[Path] = (), private_dirs: Sequence[Path] = ()):
        self.allow_dirs = [p for p in map(real_path, allow_dirs) if p is not None]
        self.upload_dirs = [p for p in map(real_path, upload_dirs) if p is not None]
        self.sessions_root = Path(os.path.realpath(tempfile.mkdtemp(prefix="patchlens-sessions-")))
        atexit.register(shutil.rmtree, self.sessions_root, True)
        private = [*self.upload_dirs, *map(real_path, private_dirs), self.sessions_root]
        self.private = [p for p in private if p is not None]
        self._claims: dict[str, dict[Path, Path]] = {}  # session -> {upload path as sent: its file in the session}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ the check
    def problem(self, path: str | os.PathLike) -> str:
        """Why the app may not read or write ``path`` ("" when it may): its real location decides."""
        real = real_path(path)
        session_id = SESSION.get()
        if real is not None and session_id and is_within(real, [self._folder_of(session_id)]):
            return ""
        if real is None or not is_within(real, self.allow_dirs):
            return OUTSIDE
        return PRIVATE if is_within(real, self.private) else ""

    def walk_problem(self, path: Path) -> str:
        """For a folder walk: "" when a file found may be read, else the line that reports it (a file of the app's own
        folders is not named: it may be another session's)."""
        problem = self.problem(path)
        if problem == PRIVATE:
            return "files in the app's own folders, not read"
        return f"{path}: {problem}" if problem else ""

    def refusal(self, what: str, options: str = "", write: bool = False) -> BadRequest:
        """The one message for a path refused in a field: it names the field, never the file."""
        allowed = ", ".join(map(str, self.allow_dirs)) or "none: start the app with --allow-dir DIR"
        verb = "written" if write else "named"
        return BadRequest(f"Refused: {what} can only be {options or ''}a path under the allowed folders ({allowed}). "
                          f"Nothing outside the allowed folders is {verb}, and no URL.")

    def readable(self, text: str | os.PathLike, what: str, options: str = "") -> Path:
        """The real path of a file or folder a client names, or the field's refusal; then "No such" if missing
        (said only inside the allowed folders, where the client may look anyway)."""
        text = os.fspath(text).strip()
        if not text or "://" in text or self.problem(text):
            raise self.refusal(what, options)
        real = real_path(text)
        if not real.exists():
            raise BadRequest(f"No such {what.removeprefix('the ')}: {text}")
        return real

    def writable(self, text: str | os.PathLike, what: str) -> Path:
        """The real path of a folder to write, under the allowed folders and holding no link out of them."""
        text = os.fspath(text).strip()
        if not text or "://" in text or self.problem(text):
            raise self.refusal(what, write=True)
        real = real_path(text)
        self.check_links(real, what)
        return real

    def check_links(self, folder: Path, what: str, depth: int = 2) -> None:
        """Refuse a folder (an index) holding, ``depth`` levels down, a link that leads where the app may not go."""
        if not folder.is_dir():
            return
        bad = []
        for top, dirs, files in os.walk(folder):
            level = len(Path(top).relative_to(folder).parts)
            bad += [str(Path(top, n).relative_to(folder)) for n in [*dirs, *files]
                    if os.path.islink(os.path.join(top, n)) and self.problem(os.path.join(top, n))]
            if level + 1 >= depth:
                dirs.clear()
        if bad:
            raise BadRequest(f"Refused: {what} holds links that lead outside the allowed folders "
                             f"({', '.join(sorted(bad)[:5])}).")

    def check_listed(self, paths: Sequence[str], what: str) -> None:
        """Refuse an index whose images lie where the app may not read (showing a match reads its image)."""
        outside = [p for p in paths if self.problem(p)]
        if outside:
            raise BadRequest(f"Refused: {what} lists {len(outside)} of its {len(paths)} images outside the allowed "
                             f"folders (showing a match reads its image); allow their folder with --allow-dir.")

    # ------------------------------------------------------------------------------------------ sessions
    def session_folder(self, session_id: str | None = None) -> Path:
        """This session's private folder (its uploads, the files it writes for the index); created on demand."""
        session_id = session_id or SESSION.get()
        if not session_id:
            raise BadRequest("Refused: this request belongs to no browser session.")
        folder = self._folder_of(session_id)
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def _folder_of(self, session_id: str) -> Path:
        return self.sessions_root / hashlib.sha256(session_id.encode()).hexdigest()[:24]  # never the client's text

    def upload(self, path: str | os.PathLike, what: str) -> Path:
        """The file of an upload of this session, or the field's one refusal.

        Gradio keeps every upload in one folder for all sessions. The first event of a session that sends an upload
        moves it from there into that session's folder: from then on the path it sent means that file to this
        session only, and to every other session nothing (there is no file there any more).
        """
        session_id = SESSION.get()
        source = Path(os.path.abspath(os.fspath(path)))
        with self._lock:
            claims = self._claims.setdefault(session_id, {}) if session_id else {}
            real = real_path(source)
            if session_id and real is not None and real.is_file() and is_within(real, self.upload_dirs):
                claims[source] = self._move_in(real, source.name)
            target = claims.get(source)
        if target is None or not target.is_file():
            raise BadRequest(f"Refused: {what} must be a file uploaded in this browser session.")
        return target

    def _move_in(self, real: Path, name: str) -> Path:
        target = Path(tempfile.mkdtemp(dir=self.session_folder())) / name
        shutil.move(real, target)
        try:
            real.parent.rmdir()  # Gradio's folder for that upload, now empty
        except OSError:
            pass
        return target

    def end_session(self, session_id: str | None) -> None:
        """Forget a session that closed, and delete its folder."""
        if not session_id:
            return
        with self._lock:
            self._claims.pop(session_id, None)
        shutil.rmtree(self._folder_of(session_id), ignore_errors=True)


__all__ = ["Access", "SESSION", "session", "check_model_name", "check_mae_name", "real_path", "is_within",
           "MODEL_REFUSED"]
