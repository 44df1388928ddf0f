"""What a browser keeps across a page reload: its images and choices.

The browser holds a small record in its localStorage (``gr.BrowserState``): a random token naming this session's
folder on the server, the loaded images' names, the image shown and the model chosen. The images themselves stay on
the server, in that folder (never served to browsers); a reload reads them back from there. A record whose token is
malformed or names no folder restores nothing.

Two tabs of one browser share its record, so two sessions may write one folder. Each write puts the images in a new
subfolder, then names it in the folder's ``current`` file (`os.replace`: the one commit point) and deletes the one
named before, under a lock that reads also take: a reader sees the images of one whole write, never a half-written
or half-deleted set.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.ui.state import AppConfig, LoadedImage, read_images, write_images

TOKEN = re.compile(r"[0-9a-f]{32}")
CURRENT = "current"  # names the subfolder of a session folder that holds its images
Saved = dict[str, Any]  # the browser's record: token, images (names), selected, model


@dataclass
class Restored:
    images: list[LoadedImage] = field(default_factory=list)
    selected: str | None = None
    model: str | None = None


class SessionStore:
    """This server's session folders, one per browser that loaded images."""

    def __init__(self, root: Path | None = None):
        self.root = root or Path(tempfile.mkdtemp(prefix="patchlens-restore-"))
        self._lock = threading.Lock()  # one server process holds every session: commits and reads take turns

    def folder(self, saved: Saved | None) -> Path | None:
        """The session folder a browser's record names, if the token is well formed and the folder exists."""
        token = (saved or {}).get("token")
        if not isinstance(token, str) or not TOKEN.fullmatch(token):
            return None
        folder = self.root / token
        return folder if folder.is_dir() else None

    def remember_images(self, images: list[LoadedImage], saved: Saved | None) -> Saved:
        """Write the session's images to its folder (a new one for a new browser) and the record that names it."""
        saved = dict(saved or {})
        folder = self.folder(saved)
        if folder is None:
            saved["token"] = secrets.token_hex(16)
            folder = self.root / saved["token"]
        written = folder / secrets.token_hex(8)
        try:
            write_images(images, written)
        except BaseException:
            shutil.rmtree(written, ignore_errors=True)
            raise
        with self._lock:
            previous = self._images_folder(folder)
            pointer = folder / f"{CURRENT}.{written.name}"
            pointer.write_text(written.name)
            os.replace(pointer, folder / CURRENT)  # the commit point
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
        saved["images"] = [image.name for image in images]
        return saved

    @staticmethod
    def _images_folder(folder: Path) -> Path | None:
        """The subfolder the last complete write named, if any."""
        try:
            name = (folder / CURRENT).read_text().strip()
        except OSError:
            return None
        return folder / name if re.fullmatch(r"[0-9a-f]{16}", name) else None

    @staticmethod
    def remember_choices(selected: str | None, model: str | None, saved: Saved | None) -> Saved:
        return {**(saved or {}), "selected": selected, "model": model}

    def restore(self, saved: Saved | None, config: AppConfig) -> Restored | None:
        """The images and choices a browser's record names; None when it names no session."""
        folder = self.folder(saved)
        if folder is None:
            return None
        selected, model = saved.get("selected"), saved.get("model")
        with self._lock:
            images_folder = self._images_folder(folder)
            images = read_images(images_folder, config) if images_folder is not None else []
        return Restored(images, selected if isinstance(selected, str) else None,
                        model if isinstance(model, str) and model else None)
