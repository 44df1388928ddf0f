"""Serving a map in Apple's Embedding Atlas (`embedding-atlas` on PyPI, an optional dependency: the ``scale`` extra).

`serve_atlas` hands an Arrow table (`ssl_core.render.atlas.atlas_table`) to Embedding Atlas's own FastAPI server
(`embedding_atlas.server.make_server`, its frontend served from the wheel's ``static`` folder: nothing is fetched
from the network) and runs it with uvicorn in a daemon thread, bound to 127.0.0.1 by default. The table stays on
the server: its queries run in the server's DuckDB (``duckdb_uri="server"``), so the browser receives the x, y
columns of all points (8 bytes a point) and the other columns only of the rows it shows (tooltips, the table view).

Versions: embedding-atlas 0.24 and later draw the map with WebGPU only and ask for the ``shader-f16`` feature, which
Chromium on Linux without a GPU (software WebGPU: SwiftShader) and many virtual machines do not offer: the map
stays empty ("WebGPU is unavailable"). 0.22 falls back to WebGL 2, which works everywhere, headless Chromium
included; hence the pin ``embedding-atlas>=0.22,<0.24`` (docs/scale.md). Automatic labels (TF-IDF over the text
column, computed in the browser) are off: over a million captions they cost the browser minutes and say little.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ssl_core.errors import BadRequest

log = logging.getLogger("patchlens")
INSTALL_HINT = "Embedding Atlas is not installed: pip install 'embedding-atlas>=0.22,<0.24' (or the scale extra)"
LOCAL_HOST = "127.0.0.1"


@dataclass
class AtlasServer:
    """A running Embedding Atlas server."""

    url: str
    points: int
    server: object  # uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


class AtlasServers:
    """The Embedding Atlas servers an app runs: one per browser session (a session's new map replaces its last one),
    at most ``limit`` in all (the oldest stops first)."""

    def __init__(self, limit: int = 4):
        self.limit = limit
        self._by_session: dict[str, AtlasServer] = {}
        self._lock = threading.Lock()

    def serve(self, session: str, table) -> AtlasServer:
        with self._lock:
            stale = [self._by_session.pop(session)] if session in self._by_session else []
            while len(self._by_session) >= self.limit:
                stale.append(self._by_session.pop(next(iter(self._by_session))))
        for server in stale:
            server.stop()
        server = serve_atlas(table)
        with self._lock:
            self._by_session[session] = server
        return server


def atlas_available() -> bool:
    try:
        import embedding_atlas  # noqa: F401
    except ImportError:
        return False
    return True


def atlas_app(table, title: str = "PatchLens map"):
    """Embedding Atlas's FastAPI app over an Arrow table with id, x, y, patch and (optionally) thumbnail columns."""
    try:
        import embedding_atlas
        from embedding_atlas.data_source import DataSource
        from embedding_atlas.options import make_embedding_atlas_props
        from embedding_atlas.server import make_server
    except ImportError as error:
        raise BadRequest(INSTALL_HINT) from error
    props = make_embedding_atlas_props(row_id="id", x="x", y="y", text="patch", labels="disabled",
                                       image="thumbnail" if "thumbnail" in table.column_names else None)
    # the identifier keys Embedding Atlas's on-disk cache of the browser's state: one per table content
    identifier = hashlib.sha256(f"{title}:{table.num_rows}:{table.nbytes}:{time.time_ns()}".encode()).hexdigest()
    source = DataSource(identifier, table, {"props": props})
    static = Path(embedding_atlas.__file__).parent / "static"
    return make_server(source, static_path=str(static), duckdb_uri="server")


def serve_atlas(table, host: str = LOCAL_HOST, port: int = 0, start_timeout_s: float = 60.0) -> AtlasServer:
    """Serve the table in Embedding Atlas from a daemon thread (port 0: a free one); returns once it answers."""
    import uvicorn

    app = atlas_app(table)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="embedding-atlas", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"Embedding Atlas did not start on {host}:{port}")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://{host}:{bound}/"
    log.info("Embedding Atlas serves %s points at %s", f"{table.num_rows:,}", url)
    return AtlasServer(url, table.num_rows, server, thread)


__all__ = ["AtlasServer", "AtlasServers", "atlas_app", "serve_atlas", "atlas_available", "LOCAL_HOST", "INSTALL_HINT"]
