"""Serving the Blocks with uvicorn directly, so that a busy machine cannot stop the app from starting.

`gradio.Blocks.launch` has two timed self-checks that fail on a loaded machine although nothing is wrong: it gives
uvicorn's thread 5 s to come up ("Cannot find empty port"), then HEADs its own local URL with a 3-s timeout
(`gradio.networking.url_ok`) and aborts unless a public share link is made ("When localhost is not accessible, a
shareable link must be created"). No public launch() option lengthens or skips either; only the private
``launch(_frontend=False)`` skips the second. The public way round both is Gradio's documented
`gradio.mount_gradio_app`: the Blocks mounted on a FastAPI app that uvicorn serves here, started with no deadline
(Gradio's queue and startup events run in the app's lifespan, as under launch()).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import gradio as gr
import uvicorn
from fastapi import FastAPI

SHUTDOWN_GRACE_S = 5  # open event streams of browser pages get this long to close on Ctrl-C / SIGTERM


def web_server(demo: gr.Blocks, host: str, port: int, max_file_size: int, allowed_paths: Sequence[str],
               theme: gr.themes.Base | None = None) -> uvicorn.Server:
    """A uvicorn server for ``demo`` on host:port (not started)."""
    app = gr.mount_gradio_app(FastAPI(), demo, path="/", server_name=host, server_port=port, show_error=True,
                              max_file_size=max_file_size, allowed_paths=list(allowed_paths), theme=theme)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    return uvicorn.Server(config)


def start_in_background(server: uvicorn.Server, poll_s: float = 0.05) -> threading.Thread:
    """Run ``server`` in a daemon thread and wait, however long it takes, until it listens; stop it with
    ``server.should_exit = True``. Raises `OSError` if it stops before listening (the port is taken)."""
    thread = threading.Thread(target=server.run, name="patchlens-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise OSError(f"the server stopped before listening on {server.config.host}:{server.config.port} "
                          f"(is the port taken?)")
        time.sleep(poll_s)
    return thread


__all__ = ["web_server", "start_in_background"]
