"""The one progress callback type: ``progress(done, total)``, called as work advances (CLI: tqdm; app: gr.Progress),
and `ProgressTracker`, which counts consecutive stages as one."""
from __future__ import annotations

from typing import Callable

ProgressFn = Callable[[int, int], None]


class ProgressTracker:
    """Maps the progress of consecutive stages onto one (done, total) count."""

    def __init__(self, total: int, progress: ProgressFn | None) -> None:
        self.total, self.progress, self.offset = max(1, total), progress, 0

    def stage(self, size: int) -> ProgressFn | None:
        """The progress callback of the next stage, ``size`` units long."""
        offset, self.offset = self.offset, self.offset + size
        if self.progress is None:
            return None
        return lambda done, total: self.progress(offset + round(size * done / max(total, 1)), self.total)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total)


__all__ = ["ProgressFn", "ProgressTracker"]
