"""Error bars for correlated Markov-chain data.

The integrated autocorrelation time τ comes from emcee's ``integrated_time`` (Sokal's automatic
window, the estimator most MCMC codes use), so N samples are worth N/τ independent ones and the
standard error of a mean is sqrt(var · τ / N). On short chains Sokal's window underestimates τ,
so the blocking estimate (Flyvbjerg & Petersen 1989: the variance of means of blocks of b
samples, b up to N/32) is computed too and the larger of the two is used: error bars err on the
wide side.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from emcee.autocorr import integrated_time

log = logging.getLogger(__name__)


def autocorrelation_time(x: np.ndarray) -> float:
    """τ_int (in samples, ≥ 1) of a 1-D series; a constant series has τ = 1."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 4 or np.ptp(x) == 0:
        return 1.0
    logging.getLogger("emcee.autocorr").setLevel(logging.ERROR)  # short series warn on every call
    tau = float(integrated_time(x, c=5, quiet=True)[0])
    if not math.isfinite(tau):
        return float(len(x))
    return max(1.0, tau, _blocking_tau(x))


def _blocking_tau(x: np.ndarray) -> float:
    """τ from block averages: b · var(block means) / var(x), largest over b = 2, 4, ... ≤ N/32."""
    var = float(np.var(x))
    best, b = 1.0, 2
    while len(x) // b >= 32:
        n_blocks = len(x) // b
        means = x[: n_blocks * b].reshape(n_blocks, b).mean(axis=1)
        best = max(best, b * float(np.var(means, ddof=1)) / var)
        b *= 2
    return best


@dataclass(frozen=True)
class Estimate:
    mean: float
    error: float  # standard error of the mean, autocorrelation included
    tau: float  # integrated autocorrelation time, samples
    n: int

    @property
    def n_effective(self) -> float:
        return self.n / self.tau


def estimate(x: np.ndarray) -> Estimate:
    x = np.asarray(x, dtype=np.float64)
    tau = autocorrelation_time(x)
    var = float(np.var(x, ddof=1)) if len(x) > 1 else 0.0
    return Estimate(float(np.mean(x)), math.sqrt(var * tau / max(len(x), 1)), tau, len(x))


def mean_and_error(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error along axis 0 of ``samples`` (n, ...): every column is one correlated
    series (one bin of a per-frame histogram, say), with its own τ from :func:`autocorrelation_time`
    (Sokal's window or block averages, whichever is larger). Units: those of ``samples``."""
    x = np.asarray(samples, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    error = np.array([estimate(column).error for column in flat.T]) if len(x) > 1 else np.zeros(flat.shape[1])
    return flat.mean(axis=0).reshape(x.shape[1:]), error.reshape(x.shape[1:])
