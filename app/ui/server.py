"""Starting the app on a busy machine: the launch() option that skips Gradio's 3-s self-check.

After `gradio.Blocks.launch` has started its server it GETs its own ``startup-events`` route with no timeout (so the
server is known to answer on localhost), then HEADs its own URL once more through `gradio.networking.url_ok`, with a
3-s timeout, and raises "When localhost is not accessible, a shareable link must be created" unless ``share=True``.
On a loaded machine that HEAD times out although nothing is wrong, and `patchlens serve` died. No public option
lengthens or skips it (``share=True`` would open a public tunnel); launch()'s private ``_frontend`` argument, which
Gradio's own `gradio.Server` passes on, guards that check and nothing else (Gradio 6.x), so `launch_options` passes
``_frontend=False`` where launch() takes it, and nothing is monkeypatched.

Not `gradio.mount_gradio_app` under our own uvicorn, although it is public and has no self-check: Blocks mounted that
way never count as launched, and Gradio then skips its check that a file sent to an input was uploaded
(`gradio.processing_utils._check_allowed`), so a client could make the server read any image by its path.

Imports before threads: handlers import scikit-learn lazily, from Gradio's worker threads and the UMAP warm-up
thread at once. scikit-learn imports narwhals, whose modules import each other in a cycle, and two threads entering
that cycle from both ends meet Python's import-lock deadlock (``_DeadlockError`` in one request, seen in the
browser tests). `import_before_threads` imports them once on the main thread before the server starts.

Left as it is: launch() gives its server thread 5 s to start listening; `tests/test_serve.py` starts the app while
two CPU burners per core run.
"""
from __future__ import annotations

import importlib
import inspect
import logging

import gradio as gr

log = logging.getLogger("patchlens")
SELF_CHECK_SWITCH = "_frontend"
# modules handlers import lazily whose first import from two threads at once can deadlock (see the docstring)
THREAD_SHARED_IMPORTS = ("sklearn.metrics", "sklearn.linear_model", "sklearn.pipeline", "sklearn.preprocessing")


def import_before_threads() -> None:
    """Import `THREAD_SHARED_IMPORTS` on this (the main) thread, before any worker thread runs."""
    for name in THREAD_SHARED_IMPORTS:
        importlib.import_module(name)


def launch_options() -> dict[str, bool]:
    """Keyword arguments for `gradio.Blocks.launch` that skip its timed self-check, where this Gradio has the switch."""
    if SELF_CHECK_SWITCH in inspect.signature(gr.Blocks.launch).parameters:
        return {SELF_CHECK_SWITCH: False}
    log.warning("this Gradio's launch() has no %s argument: on a busy machine it may abort with 'When localhost is "
                "not accessible, a shareable link must be created'", SELF_CHECK_SWITCH)
    return {}


__all__ = ["launch_options", "import_before_threads"]
