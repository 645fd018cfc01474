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
    dens = latent_density(z)
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
    d = np.sort(latent_density(z))
    if d.sum() == 0:
        return float("nan")
    n = len(d)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(d) / (n * d.sum()))
