"""Pure metrics of sparse codes: density, dead latents, FVU, L0."""

from __future__ import annotations

import numpy as np


def active(z: np.ndarray) -> np.ndarray:
    """Boolean mask of active latents (a latent is active when its code is > 0)."""
    return np.asarray(z) > 0


def latent_density(z: np.ndarray) -> np.ndarray:
    """Per latent: fraction of inputs on which it is active."""
    a = active(z)
    return a.mean(0) if len(a) else np.zeros(a.shape[1])


def grouped_density(z: np.ndarray, groups: int = 16) -> np.ndarray:
    """Mean activation density of ``groups`` consecutive blocks of latents (Wang et al. Fig. 4).

    Uniform use of the latents gives k / d_z in every group."""
    return _grouped(latent_density(z), groups)


def _grouped(dens: np.ndarray, groups: int) -> np.ndarray:
    groups = min(groups, len(dens))
    return np.array([blk.mean() for blk in np.array_split(dens, groups)])


def dead_fraction(z: np.ndarray) -> float:
    """Fraction of latents never active on these inputs."""
    return float((latent_density(z) == 0).mean())


def l0(z: np.ndarray) -> float:
    """Mean number of active latents per input."""
    return float(active(z).sum(1).mean()) if len(z) else 0.0


def fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Fraction of variance unexplained: Σ||x - x̂||² / Σ||x - mean(x)||²."""
    x = np.asarray(x, dtype=np.float64)
    x_hat = np.asarray(x_hat, dtype=np.float64)
    den = float(((x - x.mean(0)) ** 2).sum())
    return float(((x - x_hat) ** 2).sum()) / den if den > 0 else float("nan")


def density_gini(z: np.ndarray) -> float:
    """Gini coefficient of per-latent density: 0 = all latents used equally, → 1 = one latent."""
    return _gini(latent_density(z))


def _gini(density: np.ndarray) -> float:
    d = np.sort(density)
    if d.sum() == 0:
        return float("nan")
    n = len(d)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(d) / (n * d.sum()))


class CodeStats:
    """The metrics above accumulated over chunks of rows (inputs x, reconstructions x̂, codes z):
    memory per latent and per input dimension, not per row.

    The FVU's denominator merges per-chunk centred sums of squares (Chan et al.), so it does not
    lose precision when the mean is large against the spread."""

    def __init__(self, d_z: int):
        self.n = 0
        self.count = np.zeros(d_z, np.int64)
        self.active_total = 0
        self.resid = 0.0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, x: np.ndarray, x_hat: np.ndarray, z: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        m = len(x)
        if not m:
            return
        a = active(z)
        self.count += a.sum(0)
        self.active_total += int(a.sum())
        self.resid += float(((x - np.asarray(x_hat, np.float64)) ** 2).sum())
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        if self.mean is None:
            self.mean, self.m2 = mean_b, m2_b
        else:
            tot = self.n + m
            delta = mean_b - self.mean
            self.m2 = self.m2 + m2_b + delta**2 * (self.n * m / tot)
            self.mean = self.mean + delta * (m / tot)
        self.n += m

    @classmethod
    def of(cls, x: np.ndarray, x_hat: np.ndarray, z: np.ndarray) -> "CodeStats":
        s = cls(np.asarray(z).shape[1])
        s.add(x, x_hat, z)
        return s

    @property
    def density(self) -> np.ndarray:
        return self.count / self.n if self.n else np.zeros(len(self.count))

    @property
    def fvu(self) -> float:
        den = float(self.m2.sum()) if self.m2 is not None else 0.0
        return self.resid / den if den > 0 else float("nan")

    @property
    def l0(self) -> float:
        return self.active_total / self.n if self.n else 0.0

    @property
    def dead_fraction(self) -> float:
        return float((self.density == 0).mean())

    @property
    def density_gini(self) -> float:
        return _gini(self.density)

    def grouped_density(self, groups: int = 16) -> np.ndarray:
        return _grouped(self.density, groups)
