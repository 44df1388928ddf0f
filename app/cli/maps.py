"""``patchlens umap``: a 2-D map of patch embeddings (of images or of an index) as a plotly figure or picture, or
served in Embedding Atlas for maps of millions of patches (docs/scale.md).

Registered with `app.cli.main.command` when this module is imported (``app.cli.main.COMMAND_MODULES``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli.gallery import check_output, layer_arg, load_images
from app.cli.main import add_model_args, command, load_model_from_args, positive_int, tqdm_progress
from ssl_core.errors import BadRequest


# ------------------------------------------------------------------------------------------------- umap
@command("umap", "a 2-D map (UMAP or PCA) of the patch embeddings of images or of an index, as .html or .png, or "
         "served in Embedding Atlas (--engine atlas)")
def _umap(parser: argparse.ArgumentParser):
    from ssl_core.analyses.maps import COLOURINGS, DEFAULT_FIT_LIMIT, METHODS
    from ssl_core.render.atlas import THUMBNAIL_SIDE

    parser.add_argument("images", nargs="*", help="image files or folders (or --index)")
    parser.add_argument("--index", default=None, help="map every patch of this index instead of images")
    add_model_args(parser)
    parser.add_argument("--out", default=None, help="output file: .html (interactive) or .png; with --engine atlas, "
                        "optionally .parquet (the map's table)")
    parser.add_argument("--layer", default=None, help="block index (default: the final normed tokens)")
    parser.add_argument("--method", default="umap", choices=METHODS, help="how the points are placed")
    parser.add_argument("--colour", default="image", choices=COLOURINGS, help="colour points by ... (plotly)")
    parser.add_argument("--parts", type=positive_int, default=8, help="k (parts clustered) for --colour part")
    parser.add_argument("--seed", type=int, default=0, help="seed of the map and of its samples")
    parser.add_argument("--fit-limit", type=positive_int, default=DEFAULT_FIT_LIMIT,
                        help="above this many patches, fit on a seeded sample and transform the rest")
    atlas = parser.add_argument_group("maps of millions of patches (docs/scale.md)")
    atlas.add_argument("--engine", default="plotly", choices=["plotly", "atlas", "auto"],
                       help="plotly: a figure file; atlas: serve Embedding Atlas; auto: atlas above 100,000 patches")
    atlas.add_argument("--host", default="127.0.0.1", help="address Embedding Atlas listens on")
    atlas.add_argument("--port", type=int, default=0, help="port of Embedding Atlas (0: a free one)")
    atlas.add_argument("--thumbnail-side", type=int, default=THUMBNAIL_SIDE, help="pixels of the patch thumbnails "
                       "in Embedding Atlas (0: none)")

    def run(args: argparse.Namespace) -> int:
        from app.views.atlas import engine_for

        check_map_args(args)
        if args.index:
            return _umap_index(args)
        from ssl_core.features.patch_table import PatchTable

        encoder = load_model_from_args(args)
        print(encoder.describe(), file=sys.stderr)
        loaded = load_images(args.images)
        table, features = PatchTable.embed(encoder, [name for name, _ in loaded], [image for _, image in loaded],
                                           layer_arg(args.layer), attention=args.colour == "attention",
                                           progress=tqdm_progress("embedding"))
        if engine_for(args.engine, len(table.image_ids)) == "atlas":
            from app.views.atlas import atlas_of_patches

            return _serve_atlas(args, atlas_of_patches(table, [f.image for f in features], args.method, args.seed,
                                                       args.fit_limit, args.thumbnail_side, **_map_progress(args)))
        return _plotly_map(args, table, features)
    return run


def check_map_args(args: argparse.Namespace) -> None:
    """Refuse option sets that cannot work before any image is embedded or any map is fitted."""
    if bool(args.images) == bool(args.index):
        raise BadRequest("give images or --index (one of them)")
    if args.index and (args.model or args.weights or args.layer is not None or args.image_size):
        raise BadRequest("--index maps the vectors the index stores (its own model and layer); --model, --weights, "
                         "--layer and --image-size apply to images only")
    if args.index and args.colour == "attention":
        raise BadRequest("--colour attention needs images: an index stores no attention")
    suffix = Path(args.out).suffix.lower() if args.out else None
    if args.engine == "plotly" and suffix is None:
        raise BadRequest("--out FILE (.html or .png) is needed for a plotly map")
    allowed = {"plotly": (".html", ".png"), "atlas": (".parquet",), "auto": (".html", ".png", ".parquet")}[args.engine]
    if suffix is not None and suffix not in allowed:
        raise BadRequest(f"--out {args.out}: with --engine {args.engine} the file must end in {' or '.join(allowed)}")


def _map_progress(args: argparse.Namespace) -> dict:
    """``progress`` and ``stage`` callbacks for a map's steps: a tqdm bar per step (placing points, thumbnails)."""
    bar = [tqdm_progress(f"{args.method} map", unit="patch")]

    def stage(text: str) -> None:
        print(text, file=sys.stderr)
        bar[0] = tqdm_progress(text.split(" of ")[0], unit="step")
    return {"progress": lambda done, total: bar[0](done, total), "stage": stage}


def _umap_index(args: argparse.Namespace) -> int:
    from app.views.atlas import atlas_of_index, engine_for
    from ssl_core.search.patch_index import PatchIndex

    index = PatchIndex.load(args.index, device="cpu")
    print(index.describe(), file=sys.stderr)
    if engine_for(args.engine, len(index)) == "atlas":
        return _serve_atlas(args, atlas_of_index(index, args.method, args.seed, args.fit_limit, args.thumbnail_side,
                                                 **_map_progress(args)))
    return _plotly_map(args, index.table(), None)


def _plotly_map(args: argparse.Namespace, table, features) -> int:
    from PIL import Image

    from ssl_core.analyses.maps import attention_per_patch, colour_patches, map_patches
    from ssl_core.render.figures import map_picture, umap_figure

    if args.out is None:
        raise ValueError("--out FILE (.html or .png) is needed for a plotly map")
    out = check_output(args.out)
    patch_map = map_patches(table.vectors, args.method, args.seed, args.fit_limit,  # the fit is one step: say it
                            progress=tqdm_progress(f"{args.method} map", unit="patch"),
                            stage=lambda text: print(text, file=sys.stderr))
    attention = attention_per_patch(features) if args.colour == "attention" and features is not None else None
    colouring = colour_patches(table, args.colour, attention, args.parts, args.seed)
    if out.suffix.lower() == ".html":
        hover = [f"{Path(table.names[i]).name} · row {r}, col {c}" for i, r, c in zip(table.image_ids, table.rows, table.cols)]
        umap_figure(patch_map, colouring, hover).write_html(out, include_plotlyjs=True)
    else:
        Image.fromarray(map_picture(patch_map, colouring).image).save(out)
    print(f"{patch_map.describe()}; wrote {out}", file=sys.stderr)
    return 0


def _serve_atlas(args: argparse.Namespace, atlas) -> int:
    """Write the map's table (--out .parquet), serve it in Embedding Atlas and wait for Ctrl-C."""
    import threading

    from app.atlas import serve_atlas

    print(atlas.describe(), file=sys.stderr)
    if args.out is not None:
        import pyarrow.parquet as pq

        if not args.out.lower().endswith(".parquet"):
            raise ValueError(f"--out {args.out}: with --engine atlas the file must end in .parquet (the map's table)")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(atlas.table, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    server = serve_atlas(atlas.table, args.host, args.port)
    print(f"Embedding Atlas: {server.url}  ({atlas.table.num_rows:,} points; Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
    return 0
