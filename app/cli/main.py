"""The ``patchlens`` command line. Each subcommand parses arguments, calls ``ssl_core`` and prints."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence

Runner = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], Runner], str]] = {}


def command(name: str, help_text: str):
    """Register a subcommand: the decorated function adds its arguments and returns the runner."""
    def wrap(fn: Callable[[argparse.ArgumentParser], Runner]):
        COMMANDS[name] = (fn, help_text)
        return fn
    return wrap


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (batch sizes, counts, steps)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, unless there is none to show (None, a flag's False, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


def add_model_args(parser: argparse.ArgumentParser, default: str | None = None, default_text: str | None = None,
                   ) -> None:
    """--model, --weights, --image-size and --device; ``default_text`` says what an unset --model means when that is
    not the bundled default model (e.g. "the index's model")."""
    from ssl_core.data.images import MAX_SHORT_SIDE
    from ssl_core.models.registry import default_model_name

    default_text = default_text or f"the bundled default model, {default_model_name()}"
    parser.add_argument("--model", default=default, help="model name (see `patchlens models`) or a timm id"
                        + ("" if default else f" (default: {default_text})"))
    parser.add_argument("--weights", default=None, help="local weights file (.safetensors, or .pth read with "
                        "weights_only)" + ("" if default else "; without --model: for the default's architecture"))
    parser.add_argument("--image-size", type=int, default=None, help="short side images are resized to, from one "
                        f"patch to {MAX_SHORT_SIDE} px (default: the model's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")


def load_model_from_args(args: argparse.Namespace):
    from ssl_core import default_model_name, load_encoder

    return load_encoder(args.model or default_model_name(), weights=args.weights, device=args.device,
                        image_size=args.image_size)


def tqdm_progress(desc: str, unit: str = "img"):
    """A progress callback (done, total) drawing one tqdm bar on stderr. The bar's clock starts when the callback is
    made (just before the work), not at its first report, so a first report of many items shows a true rate."""
    import time

    from tqdm import tqdm

    bar, started = None, time.time()

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
            bar.start_t = bar.last_print_t = started
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


# ------------------------------------------------------------------------------------------------- models
@command("models", "print the model table")
def _models(parser: argparse.ArgumentParser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(args: argparse.Namespace) -> int:
        from ssl_core.features.encoder import count_params
        from ssl_core.models.registry import all_specs, default_model_name
        from ssl_core.models.weights import available_offline

        default = default_model_name()
        rows, shown = [], []  # JSON: names as --model takes them; the table: marked untrained / default
        for spec in all_specs():
            if spec.source == "bundled" and not spec.trained:
                continue
            source = {"hub": f"hub: {spec.hub_id}", "url": f"official file: {spec.url}",
                      "bundled": f"bundled: assets/models/{spec.bundled_file}", "random": "random init (untrained)"}[spec.source]
            rows.append({"name": spec.name, "default": spec.name == default, "trained": spec.trained,
                         "architecture": spec.arch, "family": spec.family, "objective": spec.objective,
                         "weights": source, "params_M": round(count_params(spec) / 1e6, 1),
                         "offline": available_offline(spec)})
            shown.append(rows[-1] | {"name": spec.display_name + (" [default]" if spec.name == default else ""),
                                     "offline": "yes" if rows[-1]["offline"] else "no (download)"})
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        cols = ["name", "architecture", "params_M", "offline", "family", "weights"]
        widths = {c: max(len(c), *(len(str(r[c])) for r in shown)) for c in cols}
        print("  ".join(c.ljust(widths[c]) for c in cols))
        for r in shown:
            print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
        print_mae_sources()
        return 0
    return run


def print_mae_sources() -> None:
    """The MAE checkpoints with their decoder, for `patchlens reconstruct --model NAME` (and the Reconstruct view)."""
    from ssl_core.models.registry import MAE_SOURCES
    from ssl_core.models.weights import offline_mae_names

    ready = set(offline_mae_names())
    print("\nMAEs with their decoder (patchlens reconstruct --model NAME):")
    width = max(len(name) for name in MAE_SOURCES)
    for source in MAE_SOURCES.values():
        state = "offline" if source.name in ready else "download"
        print(f"  {source.name.ljust(width)}  {state:<8}  {source.description}")


# ------------------------------------------------------------------------------------------------- embed
@command("embed", "write patch tokens of images to a .npz file")
def _embed(parser: argparse.ArgumentParser):
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    add_model_args(parser)
    parser.add_argument("--layers", default="", help="comma-separated block indices to save too (e.g. 3,7,-1) or 'all'")
    parser.add_argument("--out", required=True, help="output .npz file (layout: see README)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images loaded and embedded at once")
    parser.add_argument("--facet", default=None, choices=["query", "key", "value", "token"],
                        help="also save this facet of --facet-block (dino-vit-features' key/query/value tokens)")
    parser.add_argument("--facet-block", type=int, default=-1, help="block of --facet (negative counts from the end)")

    def run(args: argparse.Namespace) -> int:
        from ssl_core.data.images import expand_image_paths, load_images_reporting
        from ssl_core.features.export import save_features_npz
        from ssl_core.features.facets import facet_tokens

        layers = parse_layers(args.layers)  # a bad list is refused before the model loads
        encoder = load_model_from_args(args)
        print(encoder.describe(), file=sys.stderr)
        resolved = encoder.resolve_layers(layers)
        paths = expand_image_paths(args.images)
        names, features, failed, facets = [], [], [], []
        progress = tqdm_progress("embedding")
        for start in range(0, len(paths), args.batch_size):  # loaded and embedded batch by batch
            loaded, problems = load_images_reporting(paths[start:start + args.batch_size])
            failed += problems
            for problem in problems:
                print(f"skipped {problem}", file=sys.stderr)
            features += encoder.extract([image for _, image in loaded], layers=resolved, batch_size=args.batch_size)
            if args.facet:
                facets += facet_tokens(encoder, [image for _, image in loaded], args.facet, args.facet_block)
            names += [name for name, _ in loaded]
            progress(min(start + args.batch_size, len(paths)), len(paths))
        if not features:
            reason = f"none of the {len(failed)} inputs is a readable image" if failed else "no image files found"
            print(f"patchlens embed: error: {reason}; nothing was written", file=sys.stderr)
            return 1
        path = save_features_npz(args.out, names, features, encoder, resolved, failed, facets)
        print(f"wrote {len(features)} images ({sum(f.grid_hw[0] * f.grid_hw[1] for f in features)} patches) to {path}"
              + (f"; skipped {len(failed)} bad inputs" if failed else ""), file=sys.stderr)
        return 0
    return run


def parse_layers(text: str) -> list[int] | str:
    """Block indices "3,7,-1" (negative counts from the end) as a list, or "all"; `BadRequest` for anything else."""
    from ssl_core.errors import BadRequest

    text = (text or "").strip()
    if text == "all":
        return "all"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadRequest(f"layers {text!r}: give block indices separated by commas (e.g. 3,7,-1; negative ones count "
                         f"from the end) or 'all'") from None


# ------------------------------------------------------------------------------------------------- serve
@command("serve", "start the PatchLens app")
def _serve(parser: argparse.ArgumentParser):
    from ssl_core.models.registry import default_model_name

    parser.add_argument("--model", default=None, help=f"model selected at start (default: the bundled default, "
                        f"{default_model_name()})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (the default answers this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                        help="a directory the app may read galleries and weights files from (repeatable)")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest accepted upload")
    parser.add_argument("--concurrency", type=positive_int, default=1,
                        help="requests that may run at once in each queue, views and long jobs (at least 2 each)")
    parser.add_argument("--max-models", type=positive_int, default=4,
                        help="encoders kept loaded (least recently used go first)")
    parser.add_argument("--cache-mb", type=float, default=None, help="memory for cached features (default 2048)")
    parser.add_argument("--max-forward-passes", type=positive_int, default=None, metavar="N",
                        help="most images or crops one job (BagSSL, map, index build, CKA) may embed (default 2000)")

    def run(args: argparse.Namespace) -> int:
        check_serve_args(args)  # before the app is built: a bad name or folder is refused here, not in the browser
        from app.ui.app import serve

        serve(model=args.model, host=args.host, port=args.port, allow_dirs=args.allow_dir,
              max_upload_mb=args.max_upload_mb, concurrency=args.concurrency, max_models=args.max_models,
              cache_mb=args.cache_mb, max_forward_passes=args.max_forward_passes)
        return 0
    return run


def check_serve_args(args: argparse.Namespace) -> None:
    """A --model the registry does not know (a known hub model need not be downloaded: offline, the app offers the
    bundled ones) and an --allow-dir that is not a directory are refused with `BadRequest`."""
    from pathlib import Path

    from ssl_core.errors import BadRequest
    from ssl_core.models.registry import resolve_spec

    if args.model:
        resolve_spec(args.model)
    for folder in args.allow_dir:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise BadRequest(f"--allow-dir {folder}: {'not a directory' if path.exists() else 'no such directory'}")


# Subcommands of other areas live in their own modules, which register themselves with `command` on import.
COMMAND_MODULES: tuple[str, ...] = ("app.cli.mim", "app.cli.train", "app.cli.gallery", "app.cli.maps", "app.cli.lab",
                                   "app.cli.tile", "app.cli.heads")


def installed_version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" when run from a tree not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("patchlens")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="patchlens", formatter_class=HelpFormatter,
                                     description="Look inside vision transformers one patch at a time.")
    parser.add_argument("--version", action="version", version=f"patchlens {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (configure, help_text) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        child.set_defaults(_run=configure(child))
    return parser


def select_device(name: str) -> None:
    """Check a --device value (`ssl_core.features.encoder.resolve_device`: `BadRequest` for one this machine lacks);
    a GPU named by its number (cuda:1) becomes the current one, so that what torch puts on "the" GPU by default
    (pinned memory for copies, a loader's pinning thread) goes there too, not to GPU 0."""
    import torch

    from ssl_core.features.encoder import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    from ssl_core import CheckpointError, ImageLoadError, ModelUnavailable

    try:
        if getattr(args, "device", None):
            select_device(args.device)
        return int(args._run(args) or 0)
    except (ModelUnavailable, CheckpointError, ImageLoadError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"patchlens {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # `python -m app.cli.main`: run the imported module, whose command table the
    from app.cli import main as cli  # subcommand modules fill (this file runs as __main__, a second copy)

    raise SystemExit(cli.main())
