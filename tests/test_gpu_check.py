"""The GPU check's CPU smoke run: the one-call script runs end to end, so it cannot rot between GPU days."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path: Path) -> None:
    env = dict(os.environ, PY=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke", "--zoo-seconds", "20",
                           "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] is True
    stages = {s["name"]: s for s in report["stages"]}
    assert {"families", "analyses", "oom_split", "jpeg_decode", "compile", "throughput", "exact_search"} <= set(stages)
    assert all(s["error"] is None for s in stages.values()), [s["error"] for s in stages.values() if s["error"]]
    assert stages["oom_split"]["rows"][0]["forward calls"] > 1  # the split really happened
    checks = [row for name in ("families", "analyses", "oom_split", "jpeg_decode", "compile", "exact_search")
              for row in stages[name]["rows"] if "passed" in row]
    assert len(checks) >= 6 and all(row["passed"] for row in checks), [r for r in checks if not r["passed"]]
    names = ["patchlens-cae", "patchlens-dilemma", "patchlens-dino", "patchlens-mae", "patchlens-sup"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md"] + [
        f"zoo-{name}.tar" for name in names]  # at most 8 files, each under 16 MiB: what comes back from a GPU lease
    zoo = stages["zoo"]["rows"]
    assert len(stages["zoo_lab"]["rows"]) == 7  # the two untrained baselines and the five new models
    assert [row["model"] for row in zoo] == ["patchlens-sup", "patchlens-dino", "patchlens-mae", "patchlens-cae",
                                             "patchlens-dilemma"]
    assert all(row["steps"] < 1000 for row in zoo)  # the 20 s budget cut the 1,000,000-step runs short
    import tarfile

    for name in names:
        assert (tmp_path / f"zoo-{name}.tar").stat().st_size < 16 * 2**20
        with tarfile.open(tmp_path / f"zoo-{name}.tar") as archive:  # weights, card and loss log of each model
            assert sorted(archive.getnames()) == [f"{name}.losses.csv", f"{name}.md", f"{name}.safetensors"]


def test_the_zoo_budget_shrinks_to_meet_the_check_deadline(tmp_path: Path) -> None:
    import time

    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_stages import ZOO_LAB_SECONDS, ZOO_MIN_SECONDS, Context

    def context(total: float | None, spent: float) -> Context:
        return Context(False, torch.device("cpu"), tmp_path, tmp_path, 300.0, total, time.perf_counter() - spent)

    assert context(None, 400.0).zoo_budget() == 300.0  # no deadline: the budget asked for
    assert context(450.0, 60.0).zoo_budget() == 300.0  # time enough
    assert abs(context(450.0, 200.0).zoo_budget() - (450.0 - 200.0 - ZOO_LAB_SECONDS)) < 1.0  # late: what is left
    assert context(450.0, 449.0).zoo_budget() == 5 * ZOO_MIN_SECONDS  # too late: a few seconds per model still


def test_the_check_refuses_a_timm_older_than_pyproject_asks(monkeypatch) -> None:
    """A GPU machine with an old timm would fail every stage (even the bundled architecture fails to build with timm
    1.0.15 on torch 2.11): the check says so at once, with how to carry the wheel."""
    import timm

    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_check import timm_too_old

    assert timm_too_old() is None
    monkeypatch.setattr(timm, "__version__", "1.0.15")
    message = timm_too_old()
    assert message is not None and "timm 1.0.15 here" in message and "-d .whl" in message
    monkeypatch.setattr(timm, "__version__", "1.0.100")  # compared as numbers, not as text
    assert timm_too_old() is None
