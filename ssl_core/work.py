"""How much work a request means, counted before it starts, and the most one job of a shared server may take.

A forward pass is one image (or crop) through the encoder. The counts come from the analyses themselves
(`ssl_core.analyses.bagssl.crop_count`, `ssl_core.lab.config.LabConfig.scene_passes`, a gallery's file count), so a
request that would take hours is refused with the number, the limit and what to change, before any of it runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from ssl_core.errors import TooMuchWork


@dataclass(frozen=True)
class WorkLimits:
    """The most work one job may take (a server sets these; the CLI has none)."""

    forward_passes: int = 2_000  # images or crops embedded by one job (BagSSL crops, maps, CKA, gallery builds)
    lab_scenes: int = 5_000  # scene forward passes of one Lab run, summed over the chosen encoders

    def check(self, what: str, passes: int, advice: str, limit: int | None = None) -> int:
        """``passes`` if within ``limit`` (default: `forward_passes`), else `TooMuchWork` saying how much and why."""
        limit = self.forward_passes if limit is None else limit
        if passes > limit:
            raise TooMuchWork(f"{what} would take {passes:,} forward passes, more than the {limit:,} one job may take "
                              f"on this server. {advice}")
        return passes


__all__ = ["WorkLimits", "TooMuchWork"]
