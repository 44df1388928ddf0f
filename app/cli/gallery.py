"""Gallery subcommands: ``patchlens index build|add|search|info|verify`` and ``patchlens cka`` (``patchlens umap``:
`app.cli.maps`).

Registered with `app.cli.main.command` when this module is imported (``app.cli.main.COMMAND_MODULES``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.cli.main import (
    HelpFormatter,
    add_model_args,
    command,
    load_model_from_args,
    parse_layers,
    positive_int,
    tqdm_progress,
)

OUTPUT_SUFFIXES = (".html", ".png")


def check_output(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out {path}: the file must end in .html (interactive plotly) or .png (picture)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def load_images(inputs: list[str]):
    """Images of files and folders; bad ones are printed and skipped."""
    from ssl_core.data.images import expand_image_paths, load_images_reporting

    loaded, failed = load_images_reporting(expand_image_paths(inputs))
    for problem in failed:
        print(f"skipped {problem}", file=sys.stderr)
    if not loaded:
        raise ValueError(f"no readable images among {len(failed)} inputs")
    return loaded


def layer_arg(text: str | None) -> int | None:
    """--layer: a block index (negative counts from the end), or empty / "final" for the final normed tokens."""
    if text is None or text.strip() in ("", "final"):
        return None
    layers = parse_layers(text)
    if not isinstance(layers, list) or len(layers) != 1:
        raise ValueError(f"--layer takes one block index or 'final', not {text!r}")
    return layers[0]


# ------------------------------------------------------------------------------------------------- index
@command("index", "build, extend and search a nearest-patch index over a gallery of images")
def _index(parser: argparse.ArgumentParser):
    sub = parser.add_subparsers(dest="index_command", required=True)
    build = sub.add_parser("build", formatter_class=HelpFormatter,
                           help="embed every patch of a gallery and save the index")
    build.add_argument("folder", nargs="+", help="image folders (searched recursively) or files; with --engine ray "
                       "or --kind ivfpq also globs, list files (.txt, .parquet with a 'path' column) and fsspec URLs")
    add_model_args(build)
    build.add_argument("--out", required=True, help="index directory to write")
    build.add_argument("--overwrite", action="store_true", help="replace an index already in --out (without it, an "
                       "existing index is kept: use `index add` to grow it)")
    build.add_argument("--layer", default=None, help="block index to embed (default: the final normed tokens)")
    build.add_argument("--kind", default="auto", choices=["auto", "exact", "ivf", "hnsw", "ivfpq"],
                       help="exact cosine search, approximate IVF / HNSW, or IVF-PQ on disk (sharded builds); auto: "
                       "exact up to 200k patches, IVF above, and IVF-PQ past 2M in a sharded build")
    build.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass")
    _add_scale_args(build)
    add = sub.add_parser("add", formatter_class=HelpFormatter,
                         help="embed images not indexed yet and add them to an index")
    add.add_argument("dir", help="index directory")
    add.add_argument("images", nargs="+", help="image files or folders")
    add_model_args(add, default_text="the index's model")
    add.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass")
    search = sub.add_parser("search", formatter_class=HelpFormatter,
                            help="the gallery patches (or images) nearest to a query image's patch (or all of it)")
    search.add_argument("dir", help="index directory")
    search.add_argument("image", help="query image")
    search.add_argument("--patch", default=None, metavar="ROW,COL", help="query patch; without it the whole image is "
                        "the query and gallery images are ranked")
    search.add_argument("--k", type=positive_int, default=10, help="how many nearest patches (or images) to list")
    search.add_argument("--exclude-self", action="store_true", help="leave the query image out of the results")
    search.add_argument("--json", action="store_true", help="print JSON")
    add_model_args(search, default_text="the index's model")
    info = sub.add_parser("info", formatter_class=HelpFormatter, help="describe an index")
    info.add_argument("dir")
    verify = sub.add_parser("verify", formatter_class=HelpFormatter,
                            help="check every file of an index against its checksum; --deep: re-embed a "
                            "sample of indexed images and compare their stored vectors")
    verify.add_argument("dir", help="index directory")
    verify.add_argument("--deep", action="store_true", help="re-embed a sample of the indexed images that are at hand")
    verify.add_argument("--sample", type=positive_int, default=8, help="images re-embedded by --deep")
    add_model_args(verify, default_text="the index's model")

    def run(args: argparse.Namespace) -> int:
        return {"build": _index_build, "add": _index_add, "search": _index_search, "info": _index_info,
                "verify": _index_verify}[args.index_command](args)
    return run


def _add_scale_args(build: argparse.ArgumentParser) -> None:
    from ssl_core.scale.build import DEFAULT_SHARD_SIZE, ENGINES

    scale = build.add_argument_group("sharded builds (docs/scale.md)")
    scale.add_argument("--engine", default="local", choices=ENGINES, help="ray: embed shards with Ray Data (tasks "
                       "decode, an actor pool embeds); local: one process (sharded only with --kind ivfpq)")
    scale.add_argument("--address", default=None, help="Ray cluster to join ('auto', 'ray://head:10001'); default: "
                       "start a local Ray")
    scale.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    scale.add_argument("--object-store-mb", type=int, default=None, help="object store of a local Ray")
    scale.add_argument("--actors", type=int, default=None, help="encoder actors (default: one per GPU, else half "
                       "the CPUs)")
    scale.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per shard (about)")


def _index_build_sharded(args: argparse.Namespace) -> int:
    from ssl_core import default_model_name
    from ssl_core.scale.build import EncoderArgs, RayOptions, ShardedBuild, build_sharded
    from ssl_core.search.patch_index import PatchIndex

    ray = RayOptions(args.address, args.num_cpus, args.object_store_mb, args.actors)
    config = ShardedBuild(args.engine, args.kind, args.shard_size, args.batch_size, args.device, ray)
    encoder_args = EncoderArgs(args.model or default_model_name(), args.weights, args.image_size)
    report = build_sharded(args.folder, args.out, encoder_args, layer_arg(args.layer), config,
                           log=lambda line: print(line, file=sys.stderr))
    _report_problems(report)
    if not report.patches:
        print(f"patchlens index build: error: nothing indexed ({_nothing_reason(report, args.folder)})",
              file=sys.stderr)
        return 1
    print(f"{report.summary()}; wrote {args.out}: {PatchIndex.load(args.out, device='cpu').describe()}",
          file=sys.stderr)
    return 0


def _report_problems(report) -> None:
    for problem in report.failed + report.skipped:
        print(f"skipped {problem}", file=sys.stderr)


def _nothing_reason(report, sources: list[str]) -> str:
    if report.failed:
        return f"{len(report.failed)} new image files could not be read"
    if report.skipped:
        return f"only symlinks that are not followed in {', '.join(sources)}"
    return f"no image files in {', '.join(sources)}"


def _index_build(args: argparse.Namespace) -> int:
    from ssl_core.errors import BadRequest
    from ssl_core.search.patch_index import PatchIndex
    from ssl_core.search.storage import check_writable_target, is_index_directory

    if args.engine == "ray" or args.kind == "ivfpq" or args.address:
        return _index_build_sharded(args)  # an index already there is a build to resume (docs/scale.md)
    check_writable_target(Path(args.out))  # before any embedding
    if is_index_directory(Path(args.out)) and not args.overwrite:
        raise BadRequest(f"{args.out} already holds an index; add images to it with `patchlens index add {args.out} "
                         f"IMAGES`, or pass --overwrite to replace it with a new one")
    encoder = load_model_from_args(args)
    print(encoder.describe(), file=sys.stderr)
    index, report = PatchIndex.build(args.folder, encoder, layer_arg(args.layer), args.kind,
                                     progress=tqdm_progress("indexing"), batch_size=args.batch_size)
    _report_problems(report)
    if not len(index):
        print(f"patchlens index build: error: nothing indexed ({_nothing_reason(report, args.folder)}); "
              f"nothing was written", file=sys.stderr)
        return 1
    path = index.save(args.out)
    print(f"{report.summary()}; wrote {path}: {index.describe()}", file=sys.stderr)
    return 0


def _index_encoder(args: argparse.Namespace, index):
    """The encoder for an existing index: the index's model unless --model says otherwise."""
    args.model = args.model or index.manifest.model
    args.image_size = args.image_size or index.manifest.image_size
    return load_model_from_args(args)


def _index_add(args: argparse.Namespace) -> int:
    from ssl_core.search.patch_index import PatchIndex

    index = PatchIndex.load(args.dir, device=args.device)
    report = index.add(args.images, _index_encoder(args, index), progress=tqdm_progress("indexing"), batch_size=args.batch_size)
    _report_problems(report)
    if not report.changed and (report.failed or not report.unchanged):
        print(f"patchlens index add: error: nothing added ({_nothing_reason(report, args.images)}); the index is "
              f"unchanged", file=sys.stderr)
        return 1
    if report.changed:
        expected = len(index.images)
        index.save(args.dir)  # merged with what other processes committed since it was loaded
        if len(index.images) != expected:
            print(f"merged with {len(index.images) - expected} images another process added meanwhile", file=sys.stderr)
    print(f"{report.summary()}; {index.describe()}", file=sys.stderr)
    return 0


def _index_search(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ssl_core.search.patch_index import PatchIndex

    index = PatchIndex.load(args.dir, device=args.device)
    query = index.embed_query(_index_encoder(args, index), args.image)
    if args.patch:
        try:
            row, col = (int(v) for v in args.patch.split(","))
        except ValueError:
            raise ValueError(f"--patch takes ROW,COL (two integers), not {args.patch!r}") from None
        hits = index.search_patch(query, row, col, args.k, exclude_query_image=args.exclude_self)
        header = f"nearest patches to patch ({row}, {col}) of {args.image}"
        lines = [f"{i + 1:>3}  {h.score:.4f}  row {h.row:>3}  col {h.col:>3}  {h.image}" for i, h in enumerate(hits)]
    else:
        hits = index.search_image(query, args.k, exclude_query_image=args.exclude_self)
        h, w = query.grid_hw
        header = f"gallery images nearest to {args.image} (votes: of its {h * w} patches, how many find a top match there)"
        lines = [f"{i + 1:>3}  votes {h.votes:>4}  best {h.score:.4f} (query {h.query_row},{h.query_col} -> {h.row},{h.col})  "
                 f"{h.image}" for i, h in enumerate(hits)]
    if args.json:
        print(json.dumps([asdict(h) for h in hits], indent=1))
    else:
        print(header)
        print("\n".join(lines))
    return 0


def _index_info(args: argparse.Namespace) -> int:
    from ssl_core.search.patch_index import PatchIndex

    print(PatchIndex.load(args.dir).describe())
    return 0


def _index_verify(args: argparse.Namespace) -> int:
    from ssl_core.errors import IndexFormatError, NotAnIndex
    from ssl_core.search.verify import verify_index

    chosen = args.model is not None or getattr(args, "weights", None) is not None

    def encoder_for(index):
        encoder = _index_encoder(args, index)
        if chosen:  # a model the user named that is not the index's: refused, not reported as damage
            index.check_encoder(encoder)
        return encoder

    try:
        report = verify_index(args.dir, encoder_for if args.deep else None, args.sample)
    except NotAnIndex:
        raise  # nothing damaged: nothing of an index is there (an error, not a verdict)
    except IndexFormatError as err:
        print(f"patchlens index verify: DAMAGED: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------------------- cka
@command("cka", "layer-by-layer CKA between two encoders over images, as a heatmap (.html or .png)")
def _cka(parser: argparse.ArgumentParser):
    from ssl_core.analyses.cka import POOLINGS

    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--model-a", required=True, help="first model (rows)")
    parser.add_argument("--model-b", default=None, help="second model (columns; default: the first)")
    parser.add_argument("--weights-a", default=None, help="local weights file for model A")
    parser.add_argument("--weights-b", default=None, help="local weights file for model B")
    parser.add_argument("--image-size", type=int, default=None, help="short side images are resized to (both models)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True, help="output file: .html (interactive) or .png")
    parser.add_argument("--pooling", default="grid", choices=POOLINGS,
                        help="grid: tokens average-pooled to a common grid per image; mean: one mean token per image")
    parser.add_argument("--grid", type=int, default=4, help="pooled grid size for --pooling grid")
    parser.add_argument("--debiased", action="store_true", help="debiased CKA (unbiased HSIC), for few samples")

    def run(args: argparse.Namespace) -> int:
        from PIL import Image

        from ssl_core.analyses.cka import compare_encoders
        from ssl_core.render.figures import cka_figure, heatmap_picture

        out = check_output(args.out)

        def encoder(model: str, weights: str | None):
            return load_model_from_args(argparse.Namespace(model=model, weights=weights, image_size=args.image_size,
                                                           device=args.device))
        encoder_a = encoder(args.model_a, args.weights_a)
        same = args.model_b in (None, args.model_a) and args.weights_b == args.weights_a
        encoder_b = encoder_a if same else encoder(args.model_b, args.weights_b)
        loaded = load_images(args.images)
        result = compare_encoders(encoder_a, encoder_b, [image for _, image in loaded], args.pooling, args.grid,
                                  args.debiased,
                                  progress=tqdm_progress(f"CKA ({len(loaded)} images x {1 if same else 2} models)"))
        if out.suffix.lower() == ".html":
            cka_figure(result).write_html(out, include_plotlyjs=True)
        else:
            Image.fromarray(heatmap_picture(result.matrix, result.labels_a, result.labels_b, result.describe(),
                                            row_title=result.model_a, col_title=result.model_b,
                                            vmin=min(0.0, float(result.matrix.min())))).save(out)
        print(f"{result.describe()}; wrote {out}", file=sys.stderr)
        return 0
    return run


if __name__ == "__main__":  # `python -m app.cli.gallery index ...` (under `-m app.cli.main` these are not registered)
    from app.cli.main import main

    raise SystemExit(main(sys.argv[1:]))
