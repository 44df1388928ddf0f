"""``patchlens lab``: the Lab's probes on encoders over held-out parts-world scenes, written as markdown and JSON.

    patchlens lab --models patchlens-sup patchlens-dino random-tiny --n-train 300 --n-test 150 --seed 0 --out docs/lab.md

writes ``docs/lab.md`` (the exact command, the machine, what holds of each paper's claim, and the tables of
`ssl_core.lab.LabReport.to_markdown`) and ``docs/lab.json`` (the numbers) next to it. Default models: the bundled
models whose weights exist (the untrained ``random-tiny`` when none does). Any model name, timm id or hub model works.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from app.cli.main import command, positive_int, tqdm_progress

READING_NOTES = """How to read the numbers:

- About four patches in five are background, so a part probe's plain accuracy sits near the background rate for
  every model; compare balanced accuracies (chance: 1 / part labels present).
- A probe that finds nothing predicts the majority class, so the location probe's accuracy equals the majority rate
  (the share of tokens not swapped) unless a model encodes the swaps; its ROC AUC (chance 0.5) is the informative
  number.
- The pooled ARI asks one k-means cluster to mean the same part in every scene; the background (most patches) is
  split by its texture and colour, so pooled ARIs are low for every model. The ARI per scene is the part-map number.
- `random-tiny`, when listed, is the untrained baseline: what colours and layout give with no learning at all.
  `random-tiny-sincos` is the same network with MAE's 2D sin-cos position table, where the MAE, CAE, DINO and
  DILEMMA start training: compare those with it, since a position table by itself changes what the tokens carry.
- The bundled models were trained with a small CPU budget (see their model cards in `assets/models/`): the
  numbers describe these small runs, not the papers' models."""


def lab_command_line(args: argparse.Namespace) -> str:
    """The ``patchlens lab`` command that repeats this run (every setting spelled out)."""
    parts = ["patchlens", "lab", "--models", *args.models, "--n-train", str(args.n_train), "--n-test", str(args.n_test),
             "--seed", str(args.seed), "--out", str(args.out)] + (["--threads", str(args.threads)] if args.threads else [])
    return shlex.join(parts)


def missing_bundled() -> list[str]:
    """Bundled models whose weights are not there yet."""
    from ssl_core.models.registry import bundled_names

    trained = set(bundled_names())
    return [name for name in bundled_names(trained_only=False) if name not in trained]


def machine_line() -> str:
    import sklearn

    from ssl_core.system import machine_summary

    return machine_summary(**{"scikit-learn": sklearn.__version__})


def weights_line(encoder) -> str:
    """Where an encoder's weights are (repository-relative when inside the working directory) and their fingerprint."""
    if encoder.weights_file is None:
        return encoder.weights_label
    path = Path(encoder.weights_file).resolve()
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    return f"{encoder.spec.source} weights `{shown}` (fingerprint {encoder.fingerprint})"


def lab_markdown(report, command_line: str, machine: str, encoders: dict, missing: list[str]) -> str:
    """The whole docs page: command, machine, models, findings, tables."""
    from ssl_core.lab import findings

    lines = ["# PatchLens Lab", "",
             "The papers' findings measured on PatchLens's encoders over held-out parts-world scenes (never drawn in "
             "training). Written by `patchlens lab`; the method of every measure is in the docstrings of "
             "`ssl_core/lab/` (one module per measure).", "",
             f"Command: `{command_line}`  ", f"Machine: {machine}  ",
             f"Run time: {report.seconds:.1f} s in all (each encoder's own time is in its table).", "", "Models:", ""]
    lines += [f"- `{name}`: {weights_line(encoder)}" for name, encoder in encoders.items()]
    if missing:
        lines += ["", f"Not measured (bundled weights missing when this was run): {', '.join(missing)}."]
    lines += ["", "## What holds here", ""]
    lines += [f"- {finding}" for finding in findings(report)]
    lines += ["", READING_NOTES, "", "## Results", "", report.to_markdown()]
    return "\n".join(lines)


@command("lab", "measure the papers' findings on encoders over held-out parts-world scenes")
def _lab(parser: argparse.ArgumentParser):
    from ssl_core.lab import LabConfig

    defaults = LabConfig()
    parser.add_argument("--models", nargs="+", default=None, help="model names or timm ids (default: the bundled "
                        "models whose weights exist)")
    parser.add_argument("--n-train", type=int, default=defaults.n_train, help="held-out scenes the probes are fitted on")
    parser.add_argument("--n-test", type=int, default=defaults.n_test, help="held-out scenes they are scored on")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="picks the scenes, swaps, masks and subsamples")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="images per forward pass")
    parser.add_argument("--out", default="lab.md", help="markdown report (a bare name is written in the current "
                        "folder); the numbers go to the same name .json")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")

    def run(args: argparse.Namespace) -> int:
        from ssl_core import load_encoder
        from ssl_core.lab import run_lab
        from ssl_core.models.registry import bundled_names

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        args.models = args.models or bundled_names() or ["random-tiny"]
        config = LabConfig(n_train=args.n_train, n_test=args.n_test, seed=args.seed, batch_size=args.batch_size)
        encoders = {}
        for name in args.models:
            encoders[name] = load_encoder(name, device=args.device)
            print(encoders[name].describe(), file=sys.stderr)
        missing = [name for name in missing_bundled() if name not in encoders]
        if missing:
            print(f"bundled models without weights (not measured): {', '.join(missing)}", file=sys.stderr)
        report = run_lab(encoders, config, progress=tqdm_progress("lab", unit="img"))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        command_line, machine = lab_command_line(args), machine_line()
        out.write_text(lab_markdown(report, command_line, machine, encoders, missing))
        numbers = {"command": command_line, "machine": machine, "missing": missing, **report.to_dict()}
        json_path = out.with_suffix(".json")
        json_path.write_text(json.dumps(numbers, indent=1) + "\n")
        print(f"wrote {out} and {json_path} ({report.seconds:.1f} s)", file=sys.stderr)
        return 0
    return run


@command("layers", "which layer? part probe, part-map ARI, BagSSL cosine, CKA to the last block and attention "
                   "range, per block")
def _layers(parser: argparse.ArgumentParser):
    from app.cli.main import add_model_args

    add_model_args(parser)
    parser.add_argument("--n-train", type=int, default=80, help="held-out scenes whose patches train the part probe")
    parser.add_argument("--n-test", type=int, default=40, help="held-out scenes that score it (and the part maps and "
                        "attention range)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help=".html (plotly curves), .md or .json (default: print a table)")

    def run(args: argparse.Namespace) -> int:
        from app.cli.main import load_model_from_args
        from ssl_core.lab import LabConfig
        from ssl_core.lab.layers import SWEEP_COLUMNS, layer_sweep
        from ssl_core.render.figures import layer_sweep_figure
        from ssl_core.render.tables import markdown_table

        encoder = load_model_from_args(args)
        print(encoder.describe(), file=sys.stderr)
        config = LabConfig(n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                           patch_train_images=args.n_train, patch_test_images=args.n_test,
                           part_map_images=args.n_test)
        sweep = layer_sweep(encoder, config, progress=tqdm_progress("layers", unit="img"))
        table = markdown_table(SWEEP_COLUMNS, sweep.rows())
        text = (f"{sweep.model}: {sweep.train_scenes} / {sweep.test_scenes} held-out scenes, seed {sweep.seed}; part "
                f"probe chance {sweep.part_probe_chance:.3f}; best block for parts: {sweep.best_part_block}\n\n{table}")
        out = Path(args.out) if args.out else None
        if out is None:
            print(text)
        elif out.suffix == ".html":
            layer_sweep_figure(sweep).write_html(out, include_plotlyjs=True)
        elif out.suffix == ".json":
            from dataclasses import asdict

            out.write_text(json.dumps(asdict(sweep), indent=1, default=float) + "\n")
        else:
            out.write_text(f"# Layer sweep\n\n{text}\n")
        if out is not None:
            print(f"wrote {out}", file=sys.stderr)
        return 0
    return run


if __name__ == "__main__":  # `python -m app.cli.lab lab ...` works before `lab` is listed in COMMAND_MODULES
    from app.cli.main import main

    raise SystemExit(main(sys.argv[1:]))
