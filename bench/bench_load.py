"""Many users at once on one live app (127.0.0.1): latency per kind of request, correctness, server memory.

    python bench/bench_load.py [--clients 20] [--requests 10] [--rounds 5] [--cache-mb 64] [--concurrency 1]

Each client is a browser session speaking the Gradio queue protocol as the page does (the same events, its own
session hash, select events with their pixel): it uploads two images of its own, builds a gallery index of them
and shows the overview, then sends ``--requests`` requests mixed across the views — a click on the image (patch
choice, then the similarity maps), a choice of the other image (its overview, then the gallery's query picture), a
reconstruction (own mask ratio and seed) and
a gallery search from a click. Every answer is then checked against the same view computed here, in this process:
it must be the answer to its own request (the notes carry the image name, the clicked patch, the loss, the hits).
A round is ``--clients`` x ``--requests`` requests; each client keeps its tab over the rounds and starts each round
by clearing its images and adding two new ones (and indexing them). The server's resident memory is read after each
round: over the rounds the feature cache fills to its limit (``--cache-mb``) and memory must level off.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]  # this checkout first
from browser import LiveApp  # noqa: E402
from conftest import smooth_image  # noqa: E402
from machine import record  # noqa: E402

from ssl_core.render.tables import markdown_table  # noqa: E402

MODEL = "random-tiny"
KINDS = ("click", "overview", "reconstruct", "search")
SELECT = {"value": None, "selected": True}


# ------------------------------------------------------------------------------------------------- the protocol
class AppAPI:
    """The running app's events (by name) and components, from its config."""

    def __init__(self, url: str):
        self.url = url
        config = httpx.get(url + "config", timeout=30).json()
        self.components = {c["id"]: c for c in config["components"]}
        self.events: dict[str, dict] = {}
        for dependency in config["dependencies"]:
            self.events.setdefault(dependency.get("api_name") or "", dependency)

    def elem_id(self, component: int) -> str | None:
        return self.components[component].get("props", {}).get("elem_id")


class Session:
    """One browser tab: its session hash, the values its controls hold, and events sent over the queue."""

    def __init__(self, api: AppAPI, http: httpx.Client):  # (one http client may serve many sessions)
        self.api, self.http, self.hash = api, http, uuid.uuid4().hex[:11]
        self.values: dict[str, Any] = {"model": MODEL, "image-size": 0}  # control values by elem_id

    def upload(self, name: str, data: bytes) -> dict:
        [path] = self.http.post(self.api.url + "gradio_api/upload", files=[("files", (name, data, "image/png"))]).json()
        return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def inputs(self, event: dict) -> list:
        """The event's input values as the page sends them: states stay on the server, named controls hold what
        this session set, the others their initial values."""
        data = []
        for component in event["inputs"]:
            props = self.api.components[component].get("props", {})
            if self.api.components[component]["type"] == "state":
                data.append(None)
            else:
                elem_id = props.get("elem_id")
                data.append(self.values[elem_id] if elem_id in self.values else props.get("value"))
        return data

    def call(self, name: str, select: tuple[float, float] | None = None) -> dict[str, Any]:
        """Send event ``name`` (a select at pixel x, y when given); its outputs by elem_id once it has answered."""
        event = self.api.events[name]
        body = {"data": self.inputs(event), "fn_index": event["id"], "session_hash": self.hash, "trigger_id": None,
                "event_data": None if select is None else {"index": list(select), **SELECT}}
        event_id = self.http.post(self.api.url + "gradio_api/queue/join", json=body).json()["event_id"]
        with self.http.stream("GET", self.api.url + "gradio_api/queue/data",
                              params={"session_hash": self.hash}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(f"{name} failed: {message.get('output')}")
                    outputs = message["output"]["data"]
                    return {self.api.elem_id(c): v for c, v in zip(event["outputs"], outputs)}
        raise RuntimeError(f"{name}: the stream ended without an answer")


# ------------------------------------------------------------------------------------------------- one client
@dataclass
class Answer:
    kind: str
    seconds: float
    params: dict
    shown: dict  # what the page would show: notes, captions


@dataclass
class Client:
    """One user: their images and what they asked and were answered."""

    index: int
    round: int
    images: dict[str, bytes] = field(default_factory=dict)  # name -> PNG bytes
    answers: list[Answer] = field(default_factory=list)
    display_hw: dict[str, tuple[int, int]] = field(default_factory=dict)  # picture sizes the clicks land on
    expected_index: Any = None  # the gallery index its images give, built here

    def run(self, session: Session, requests: int) -> "Client":
        rng = random.Random(self.round * 1000 + self.index)
        self.setup(session)
        for r in range(requests):
            kind = KINDS[(self.index + r) % len(KINDS)]
            start = time.monotonic()
            params, shown = getattr(self, kind)(session, rng)
            self.answers.append(Answer(kind, time.monotonic() - start, params, shown))
        return self

    def setup(self, session: Session) -> None:
        """This round's images in the session (the last round's cleared), their index, query picture and overview."""
        if self.round:
            session.call("clear_images")
        session.values["uploads"] = [session.upload(name, data) for name, data in self.images.items()]
        names = list(self.images)
        assert session.call("add_images")["inspect-image-choice"]["value"] == names[-1]
        session.values["inspect-image-choice"] = names[-1]
        session.call("build_index")
        session.values["gallery-query"] = session.call("show_query")["gallery-query"]
        session.values["inspect-image"] = session.call("overview")["inspect-image"]

    def click(self, session: Session, rng: random.Random) -> tuple[dict, dict]:
        name = session.values["inspect-image-choice"]
        x, y = self.point(rng, name, "overview")
        session.call("click_patch", select=(x, y))
        out = session.call("similarity")
        return {"image": name, "x": x, "y": y}, {"notes": out["similarity-info"]}

    def overview(self, session: Session, rng: random.Random) -> tuple[dict, dict]:
        name = next(n for n in self.images if n != session.values["inspect-image-choice"])
        session.values["inspect-image-choice"] = name
        out = session.call("overview")
        session.values["inspect-image"] = out["inspect-image"]
        session.values["gallery-query"] = session.call("show_query")["gallery-query"]  # the page refreshes it too
        return {"image": name}, {"notes": out["inspect-info"]}

    def reconstruct(self, session: Session, rng: random.Random) -> tuple[dict, dict]:
        ratio, seed = rng.choice([0.25, 0.5, 0.75]), rng.randrange(1000)
        session.values.update({"mask-kind": "random", "mask-ratio": ratio, "mask-seed": seed})
        out = session.call("reconstruct")
        return {"image": session.values["inspect-image-choice"], "ratio": ratio, "seed": seed}, {"notes": out["rec-info"]}

    def search(self, session: Session, rng: random.Random) -> tuple[dict, dict]:
        name = session.values["inspect-image-choice"]  # the query is the image chosen at the top
        x, y = self.point(rng, name, "query")
        out = session.call("search", select=(x, y))
        captions = [hit.get("caption") for hit in out["gallery-hits"] or []]
        return {"image": name, "x": x, "y": y}, {"notes": out["gallery-hit-info"], "captions": captions}

    def point(self, rng: random.Random, name: str, picture: str) -> tuple[float, float]:
        h, w = self.display_hw[f"{picture}:{name}"]
        return rng.uniform(0, w - 1), rng.uniform(0, h - 1)


# ------------------------------------------------------------------------------------------------- expected answers
class Reference:
    """The views computed here, in this process, for the same requests."""

    def __init__(self, scratch: Path):
        from ssl_core import load_encoder
        from ssl_core.mim.mae_checkpoints import open_mae

        self.encoder, self.mae, self.scratch = load_encoder(MODEL, cache=None), open_mae(None), scratch

    def loaded(self, client: Client) -> list:
        from app.ui.state import AppConfig, load_uploads

        folder = self.scratch / f"r{client.round}c{client.index}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in client.images.items():
            (folder / name).write_bytes(data)
        images, problems = load_uploads([str(folder / name) for name in client.images],
                                        AppConfig(upload_dirs=[self.scratch]))
        assert not problems, problems
        return images

    def display_sizes(self, client: Client) -> None:
        from app.views import gallery, inspect

        images = self.loaded(client)
        for image in images:
            client.display_hw[f"overview:{image.name}"] = inspect.overview(self.encoder, image.image).pictures["image"].shape[:2]
        client.expected_index = self.index(client, images)
        for image in images:
            query = gallery.query_picture(client.expected_index, self.encoder, image.image).pictures["query"]
            client.display_hw[f"query:{image.name}"] = query.shape[:2]

    def index(self, client: Client, images: list):
        from app.ui.state import write_images
        from ssl_core.search.patch_index import PatchIndex

        index, _ = PatchIndex.build(write_images(images, self.scratch / f"index-r{client.round}c{client.index}"),
                                    self.encoder)
        return index

    def check(self, client: Client) -> list[str]:
        """The answers of ``client`` that differ from the expected ones (empty when all are right)."""
        from app.views import gallery, inspect, reconstruct
        from app.views.result import Click, patch_at

        images = {image.name: image.image for image in self.loaded(client)}
        names, pictures = list(images), list(images.values())
        wrong = []
        for answer in client.answers:
            p = answer.params
            if answer.kind == "overview":
                expected = {"notes": inspect.overview(self.encoder, images[p["image"]]).markdown}
            elif answer.kind == "click":
                shown_hw = client.display_hw[f"overview:{p['image']}"]
                grid = inspect.patch_grid(self.encoder, images[p["image"]])
                row, col = patch_at(Click(p["x"], p["y"], shown_hw), grid)
                expected = {"notes": inspect.similarity_view(self.encoder, pictures, names, names.index(p["image"]),
                                                             row, col, None).markdown}
            elif answer.kind == "reconstruct":
                expected = {"notes": reconstruct.reconstruct_view(self.mae, images[p["image"]], "random", p["ratio"],
                                                                  p["seed"]).markdown}
            else:
                click = Click(p["x"], p["y"], client.display_hw[f"query:{p['image']}"])
                result = gallery.search_click(client.expected_index, self.encoder, images[p["image"]], click, 8)
                expected = {"notes": result.markdown, "captions": [c for _, c in result.galleries["hits"]]}
            if expected != answer.shown:
                wrong.append(f"{answer.kind} {p}: expected {expected}, got {answer.shown}")
        return wrong


# ------------------------------------------------------------------------------------------------- the run
def rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(args: argparse.Namespace) -> None:
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="patchlens-bench-load-"))
    reference = Reference(scratch)
    server = LiveApp("--model", MODEL, "--concurrency", str(args.concurrency), "--cache-mb", str(args.cache_mb))
    with server as app, httpx.Client(timeout=120, limits=httpx.Limits(max_connections=4 * args.clients)) as http:
        api = AppAPI(app.url)
        sessions = [Session(api, http) for _ in range(args.clients)]  # one tab per client, kept over the rounds
        reference_clients = []
        memory = [("started", rss_mb(app.process.pid))]
        rounds, start = [], time.monotonic()
        warmup = max(1, args.warmup_rounds)  # models loaded, sessions made, caches and per-grid model copies filled
        for r in range(warmup + args.rounds):
            clients = [Client(c, r) for c in range(args.clients)]
            for client in clients:  # the images are made and measured before the load starts
                prepare(client, reference)
            with ThreadPoolExecutor(max_workers=args.clients) as pool:
                done = list(pool.map(lambda c: c.run(sessions[c.index], args.requests), clients))
            reference_clients += done
            timed = r + 1 - warmup  # timed rounds so far
            if timed > 0:
                rounds.append(done)
            memory.append((f"after round {timed} ({timed * args.clients * args.requests:,} requests)" if timed > 0
                           else f"after warm-up round {r + 1}", rss_mb(app.process.pid)))
            start = time.monotonic() if timed == 0 else start
        elapsed = time.monotonic() - start
        log = app.output()
    wrong = [w for client in reference_clients for w in reference.check(client)]
    checked = sum(len(client.answers) for client in reference_clients)
    report(args, rounds, memory, elapsed, (checked, wrong), "unexpected error" in log)


def prepare(client: Client, reference: Reference) -> None:
    """Make the client's images and the picture sizes its clicks land on (as the page shows them)."""
    for j in range(2):
        pixels = smooth_image(72 + 8 * ((client.index + j) % 4), 96 + 16 * j,
                              seed=client.round * 100 + client.index * 2 + j)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        client.images[f"r{client.round}c{client.index}i{j}.png"] = buffer.getvalue()
    reference.display_sizes(client)


def report(args: argparse.Namespace, rounds: list[list[Client]], memory: list[tuple[str, float]], elapsed: float,
           checks: tuple[int, list[str]], errors_logged: bool) -> None:
    answers = [a for done in rounds for client in done for a in client.answers]
    rows = []
    for kind in KINDS:
        seconds = [a.seconds * 1000 for a in answers if a.kind == kind]
        rows.append([kind, len(seconds), f"{percentile(seconds, 50):.0f}", f"{percentile(seconds, 95):.0f}",
                     f"{max(seconds):.0f}"])
    table = markdown_table(["request", "count", "p50 ms", "p95 ms", "max ms"], rows)
    table += "\n\n" + markdown_table(["server memory", "RSS MB"], [[label, f"{mb:.0f}"] for label, mb in memory])
    checked, wrong = checks
    warmup = max(1, args.warmup_rounds)
    growth = memory[-1][1] - memory[warmup][1]
    notes = (f"{args.clients} clients x {args.requests} requests per round, {args.rounds} rounds after "
             f"{warmup} warm-up round(s) "
             f"({len(answers):,} requests timed, plus each client's setup per round: clear, upload, index build, "
             f"query picture, overview) in {elapsed:.0f} s against one `patchlens serve --model {MODEL} "
             f"--concurrency {args.concurrency} --cache-mb {args.cache_mb}` on 127.0.0.1. Each client sends its "
             f"requests one after another, all clients at once. Every answer, warm-up included, checked against the "
             f"view computed in the benchmark's process: {checked - len(wrong):,} of {checked:,} right"
             f"{'' if not errors_logged else '; the server logged an unexpected error'}. Server memory over the "
             f"{len(answers):,} timed requests: {growth:+.0f} MB (feature cache limit {args.cache_mb} MB; besides the cache, "
             f"an encoder keeps at most 4 copies of itself for grids other than its own, and the clients' images "
             f"come in 8 sizes). A click "
             f"is two events (the patch, then the similarity maps) and a choice of image two (its overview, then "
             f"the gallery's query picture), as the page sends them.")
    if wrong:
        notes += "\n\nWrong answers:\n" + "\n".join(f"- {w[:3000]}" for w in wrong[:10])
    record("Load: many sessions on one server", table, notes, print_only=args.print_only)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10, help="requests per client and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup-rounds", type=int, default=2, help="rounds before the timed ones (at least 1)")
    parser.add_argument("--cache-mb", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--print-only", action="store_true", help="print the result without recording it")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
