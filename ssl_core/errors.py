"""One family of errors for everything a user can cause and fix: a `PatchLensError` is shown as its message.

Anything else that escapes is a bug: the app shows a short message *and* logs the traceback. Each class also
derives from the builtin it refines (``ValueError``, ``RuntimeError``), so callers catching those keep working.
"""
from __future__ import annotations


class PatchLensError(Exception):
    """A problem with what the user asked for or supplied; the message says what and how to fix it."""


class BadRequest(PatchLensError, ValueError):
    """An argument out of range, a name that means nothing, a path outside the allowed folders."""


class ImageLoadError(PatchLensError, ValueError):
    """An input could not be read as an image. The message names the input and the reason."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class CheckpointError(PatchLensError, ValueError):
    """A weights file does not fit the model: missing keys, wrong shapes, or not a state dict."""


class ModelUnavailable(PatchLensError, RuntimeError):
    """The weights of a model could not be fetched (offline, unreachable host, or no such file)."""


class AttentionUnavailableError(PatchLensError, RuntimeError):
    """The model's attention weights could not be captured (an architecture without the explicit path)."""


class IndexMismatch(PatchLensError, ValueError):
    """An index was built with another model, weights or layer than the one querying it."""


class IndexFormatError(PatchLensError, ValueError):
    """A folder is not a PatchLens index, is damaged, or was written by an unknown format version."""


class NotAnIndex(IndexFormatError):
    """A folder with nothing of an index in it (no commit record, no generation): nothing is damaged."""


class Cancelled(PatchLensError, RuntimeError):
    """A long job was stopped (by its user, or because its session ended) before it finished."""


class TooMuchWork(BadRequest):
    """A request would take more work (forward passes, scenes) than one job may: refused before it starts."""


__all__ = ["PatchLensError", "BadRequest", "ImageLoadError", "CheckpointError", "ModelUnavailable",
           "AttentionUnavailableError", "IndexMismatch", "IndexFormatError", "NotAnIndex", "Cancelled", "TooMuchWork"]
