"""Baselines ΔF1 is read against: what a sparse code gets without learning, or without labels.

- ``random_topk``: TopK on a random dictionary (the trained SAE's shape, b_pre and scale, an
  untrained unit-norm dictionary): how much of ΔF1 the TopK bottleneck alone explains;
- ``pca_k``: u projected on its top k principal components (k = the configuration's k): the
  best linear k-dimensional summary, dense;
- ``shuffled``: the trained SAE's z with the classifier's labels permuted between speakers
  (every speaker keeps one label, so the null respects speaker clustering): chance.
"""

from __future__ import annotations

import numpy as np

from .model import TopKSAE

BASELINES = ("random_topk", "pca_k", "shuffled")


def random_dictionary(sae: TopKSAE, seed: int) -> TopKSAE:
    """An untrained TopK SAE with ``sae``'s shape, b_pre and input scale."""
    return TopKSAE(sae.shape, seed=seed, b_pre=sae.b_pre.detach().cpu().numpy(), scale=float(sae.scale)).eval()


class PCA:
    """Top-k principal directions of the SAE's training rows (centred)."""

    def __init__(self, x: np.ndarray):
        x = np.asarray(x, np.float64)
        self.mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.components = vt

    def transform(self, x: np.ndarray, k: int) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) @ self.components[:k].T).astype(np.float32)


def shuffle_by_speaker(y: np.ndarray, speaker: np.ndarray, seed: int) -> np.ndarray:
    """Labels permuted between speakers: each speaker's rows get another speaker's label."""
    spk = np.unique(speaker)
    lab = {}
    for s in spk:
        vals, counts = np.unique(y[speaker == s], return_counts=True)
        lab[s] = vals[np.argmax(counts)]
    perm = np.random.default_rng([seed, 23]).permutation(len(spk))
    new = {s: lab[spk[j]] for s, j in zip(spk, perm)}
    return np.array([new[s] for s in speaker], dtype=object)
