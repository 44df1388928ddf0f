"""Which browser session an event serves: Gradio hands each callback that asks for it the event's `gr.Request`,
whose ``session_hash`` names the session; `session_bound` asks for it on a callback's behalf and sets
`app.access.SESSION` while the callback runs, so `app.access.Access` knows whose uploads and folder are whose."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import gradio as gr

from app.access import session

REQUEST_PARAMETER = "patchlens_request"


def session_bound(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with the event's `gr.Request` as an extra first parameter (Gradio fills it in by its annotation, as it
    fills in a `gr.Progress` or `gr.SelectData` by theirs: those of ``fn`` keep their places, one further on)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def bound(*args: Any, **kwargs: Any) -> Any:
        request, *rest = args
        with session(getattr(request, "session_hash", None)):
            return fn(*rest, **kwargs)

    first = inspect.Parameter(REQUEST_PARAMETER, inspect.Parameter.POSITIONAL_ONLY, annotation=gr.Request)
    bound.__signature__ = signature.replace(parameters=[first, *signature.parameters.values()])
    bound.__annotations__ = {**getattr(fn, "__annotations__", {}), REQUEST_PARAMETER: gr.Request}
    return bound


__all__ = ["session_bound"]
