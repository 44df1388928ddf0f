"""The one-call GPU check: correctness of every GPU path against the CPU, the benchmarks side by side, the zoo.

    scripts/gpu_check.sh --out gpu_check/            # on a machine with one NVIDIA GPU (about 8 minutes)
    scripts/gpu_check.sh --cpu-smoke --out /tmp/gc   # the same code on the CPU with tiny sizes (CI runs this)

Needs only torch, torchvision, timm, numpy, pillow, safetensors, scikit-learn and tqdm (no gradio, FAISS, UMAP or
plotly; FAISS-GPU is measured when its wheel happens to be installed). Writes at most seven files to ``--out``,
each under 16 MiB (what a lent GPU machine gives back): ``gpu_check.json`` (every number), ``gpu_check.md`` (the
report) and ``zoo-NAME.tar`` per model (its weights, card and loss log, when the zoo stage ran). Each stage runs on
its own: a failure is recorded with its traceback and the next stage runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_stages import STAGES, Context  # noqa: E402

from ssl_core.system import hardware  # noqa: E402


@dataclass
class StageResult:
    name: str
    seconds: float
    passed: bool | None  # None: a measurement, not a check
    rows: list[dict] = field(default_factory=list)
    error: str | None = None


def run_stage(name: str, fn, context: Context) -> StageResult:
    start = time.perf_counter()
    try:
        rows = fn(context)
        passed = None if not any("passed" in r for r in rows) else all(r.get("passed", True) for r in rows)
        return StageResult(name, time.perf_counter() - start, passed, rows)
    except Exception:  # noqa: BLE001  (a broken stage is reported and the check goes on)
        return StageResult(name, time.perf_counter() - start, False, [], traceback.format_exc(limit=8))
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def markdown(results: list[StageResult], context: Context, seconds: float) -> str:
    lines = [f"# GPU check ({'CPU smoke' if context.smoke else 'full'})", "",
             f"Machine: {hardware(context.device)}; torch {torch.__version__}, timm {timm.__version__}; "
             f"{seconds:.0f} s in all.", ""]
    for result in results:
        verdict = {True: "passed", False: "FAILED", None: "measured"}[result.passed]
        lines += [f"## {result.name}: {verdict} ({result.seconds:.1f} s)", ""]
        if result.rows:
            keys = list(dict.fromkeys(k for row in result.rows for k in row))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |" for row in result.rows]
        if result.error:
            lines += ["```", result.error.strip(), "```"]
        lines.append("")
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md, zoo-NAME.tar")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (under 3 minutes)")
    parser.add_argument("--zoo-seconds", type=float, default=None,
                        help="wall-clock budget of the zoo training in all (default 300 on a GPU, 40 in the smoke)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {', '.join(STAGES)}")
    parser.add_argument("--total-seconds", type=float, default=None,
                        help="wall-clock limit of the whole check: the zoo trains for less when the stages before it "
                             "took long (default 420 on a GPU, none in the smoke)")
    args = parser.parse_args()
    if (problem := timm_too_old()) is not None:
        print(problem, file=sys.stderr)
        return 2
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --cpu-smoke for the CPU version", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        context = Context.make(args.cpu_smoke, Path(scratch), args.out, args.zoo_seconds, args.total_seconds)
        results = []
        for name in args.stages.split(","):
            print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
            results.append(run_stage(name, STAGES[name], context))
            print(f"[gpu_check] {name}: {results[-1].passed} in {results[-1].seconds:.1f} s", file=sys.stderr)
            write_report(results, context)  # after every stage: a run killed later still leaves what it measured
    print((args.out / "gpu_check.md").read_text())
    return 0 if all(r.passed is not False for r in results) else 1


def timm_too_old() -> str | None:
    """A message when this interpreter's timm is older than pyproject.toml asks (every model would fail to build),
    with how to carry the right one; None when it will do."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'"timm>=([\d.]+)', text).group(1)

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", text)[:3])

    if version(timm.__version__) >= version(floor):
        return None
    return (f"timm {timm.__version__} here; PatchLens needs timm>={floor}. Carry it as a wheel: "
            f"pip download --no-deps timm=={floor} -d .whl (scripts/gpu_check.sh installs .whl/*.whl first)")


def write_report(results: list[StageResult], context: Context) -> None:
    """gpu_check.json and gpu_check.md in ``context.out`` for the stages run so far."""
    seconds = time.perf_counter() - context.started
    report = {"machine": hardware(context.device), "torch": torch.__version__, "timm": timm.__version__,
              "smoke": context.smoke,
              "seconds": round(seconds, 1), "stages": [r.__dict__ for r in results]}
    for name, text in [("gpu_check.json", json.dumps(report, indent=2, default=_json_default)),
                       ("gpu_check.md", markdown(results, context, seconds))]:
        partial = context.out / f".{name}.partial"  # one commit point: a kill mid-write leaves the previous report
        partial.write_text(text)
        os.replace(partial, context.out / name)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
