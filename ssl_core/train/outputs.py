"""What a training run writes besides its model card: the loss log (``<name>.losses.csv``, written as the run goes)
and the weights (float16 ``<name>.safetensors``, committed in one step)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import torch


class LossLog:
    """Means of the step metrics over every ``log_every`` steps, written to ``<name>.losses.csv`` as they come."""

    def __init__(self, path: Path, log_every: int):
        self.path, self.log_every = path, log_every
        self.history: list[dict[str, float]] = []
        self.losses: list[float] = []
        self._window: list[dict[str, float]] = []
        self._file = open(path, "w", newline="")
        self._writer: csv.DictWriter | None = None

    def add(self, step: int, last: bool, lr: float, elapsed_s: float, metrics: dict[str, float]) -> None:
        self.losses.append(metrics["loss"])
        self._window.append(metrics)
        if (step + 1) % self.log_every and not last:
            return
        row = {"step": step + 1, "lr": lr, "elapsed_s": round(elapsed_s, 2)}
        row |= {k: sum(w[k] for w in self._window) / len(self._window) for k in self._window[0]}
        self.history.append(row)
        self._window = []
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=list(row), lineterminator="\n")
            self._writer.writeheader()
        self._writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def final(self) -> dict[str, float]:
        """Means over the last 10% of the steps (the loss) and of the logged rows (other metrics)."""
        tail = max(1, len(self.losses) // 10)
        final = {"loss": sum(self.losses[-tail:]) / tail}
        rows = self.history[-max(1, len(self.history) // 10):]
        for key in self.history[-1]:
            if key not in ("step", "lr", "elapsed_s", "loss"):
                final[key] = sum(r[key] for r in rows) / len(rows)
        return final


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Floating tensors as float16 (others unchanged) in a .safetensors file with string metadata, readable by all
    (as the card and loss log are) and committed in one step: a run killed while writing leaves the old file whole."""
    from safetensors.torch import save_file

    tensors = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in state_dict.items()}
    partial = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(partial), metadata={k: str(v) for k, v in metadata.items()})
    partial.chmod(0o644)
    os.replace(partial, path)
    return path


__all__ = ["LossLog", "save_weights"]
