"""Which hops are worth a model call: the level gate and the activity gate.

The model is the expensive step, and it cannot say "nothing here": a blank or noise-only
image still gets scores, some above threshold. Two gates look at the window's mel power
(already computed by the frontend) before the model runs; a gated hop gets all-zero scores,
so it can never produce a detection and still closes open events in the detector.

- Level gate (always on): a window whose loudest mel cell is below the model's absolute
  floor (``FrontendConfig.floor_db``) is blank to the model anyway: digital silence, a DC
  offset, noise below the recorder's LSB.
- Activity gate (``[gate] activity = true``): mel bands are pooled into a few groups and
  smoothed over time; each group tracks a running noise floor (the window's low quantile
  over time, which may fall at once but rise only slowly); a hop is active when any group
  rises ``threshold_db`` above its floor, and stays active for ``hold_s`` afterwards so
  call tails keep their hops. Stationary noise, at any level, is thus skipped once tracked;
  a call after a long silence passes at once (the floor followed the silence down).

Pure functions for the measurements, one small stateful class for the running floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.config import GateConfig
from edge.inference.frontend import FrontendConfig, level_db, to_db

QUIET, INACTIVE, ACTIVE = "quiet", "inactive", "active"


def band_levels(mel: np.ndarray, fe: FrontendConfig, bands: int, smooth_frames: int) -> np.ndarray:
    """``(bands, frames)`` band energies in dB (mean power of each group of mel rows,
    moving-averaged over ``smooth_frames``). Not clipped at the level floor: a quiet call
    just above the floor still stands out from its own, quieter, noise."""
    groups = np.array_split(np.asarray(mel, dtype=np.float64), min(bands, mel.shape[0]), axis=0)
    power = np.stack([g.mean(axis=0) for g in groups])
    k = max(1, min(int(smooth_frames), power.shape[1]))
    if k > 1:
        c = np.cumsum(np.pad(power, ((0, 0), (1, 0))), axis=1)
        power = (c[:, k:] - c[:, :-k]) / k
    return to_db(power, fe)


def noise_estimate(levels: np.ndarray, quantile: float) -> np.ndarray:
    """Per-band noise level of one window: a low quantile over time (calls are brief)."""
    return np.quantile(levels, quantile, axis=1)


def excess_db(levels: np.ndarray, floor: np.ndarray) -> float:
    """How far the loudest smoothed band energy rises above its band's noise floor."""
    return float(np.max(levels - floor[:, None]))


@dataclass
class GateStats:
    hops: int = 0  # hops seen by the gate
    quiet: int = 0  # skipped: below the absolute level floor
    inactive: int = 0  # skipped by the activity gate

    @property
    def skipped(self) -> int:
        return self.quiet + self.inactive


class Gate:
    """Decides, hop by hop in stream order, whether the model runs on a window."""

    def __init__(self, cfg: GateConfig, fe: FrontendConfig, hop_s: float) -> None:
        self.cfg = cfg
        self.fe = fe
        frame_s = fe.hop_length / fe.sample_rate
        self.smooth_frames = max(1, int(round(cfg.smooth_s / frame_s)))
        self.rise_per_hop = cfg.floor_rise_db_per_s * hop_s
        self.hold_hops = int(np.ceil(cfg.hold_s / hop_s - 1e-9)) if cfg.hold_s > 0 else 0
        self.floor: np.ndarray | None = None  # running per-band noise floor, dB
        self.held = 0
        self.last_excess_db = 0.0
        self.stats = GateStats()

    def decide(self, mel: np.ndarray) -> str:
        """``QUIET`` / ``INACTIVE`` (skip the model) or ``ACTIVE`` for the next hop's window."""
        self.stats.hops += 1
        quiet = level_db(mel, self.fe) < self.fe.floor_db
        if not self.cfg.activity:
            return self._count(QUIET) if quiet else ACTIVE
        levels = band_levels(mel, self.fe, self.cfg.bands, self.smooth_frames)
        est = noise_estimate(levels, self.cfg.floor_quantile)
        self.floor = est if self.floor is None else np.minimum(est, self.floor + self.rise_per_hop)
        if quiet:  # a blank window: the floor follows it down, the model never runs
            self.held = 0
            return self._count(QUIET)
        self.last_excess_db = excess_db(levels, self.floor)
        if self.last_excess_db >= self.cfg.threshold_db:
            self.held = self.hold_hops
            return ACTIVE
        if self.held > 0:
            self.held -= 1
            return ACTIVE
        return self._count(INACTIVE)

    def _count(self, verdict: str) -> str:
        if verdict == QUIET:
            self.stats.quiet += 1
        else:
            self.stats.inactive += 1
        return verdict
