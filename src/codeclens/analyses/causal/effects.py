"""How much a consumer's output moves when tokens are patched: pure functions of log-probs.

For each utterance: the *flip rate* (fraction of decisions — utterances, or frames × groups —
whose argmax changes), the mean KL(p_clean ‖ p_patched) over decisions, and the change in
log-probability of the clean decision. Frame-level outputs are compared on valid frames only.
"""

from __future__ import annotations

import numpy as np

MEASURES = ("flip_rate", "kl", "delta_logp")


def _split(logp: np.ndarray, groups: list[int]) -> list[np.ndarray]:
    return np.split(logp, np.cumsum(groups)[:-1], axis=-1)


def effect(clean: np.ndarray, patched: np.ndarray, groups: list[int], length: int | None = None) -> dict[str, float]:
    """Measures for one utterance: ``clean``/``patched`` are ``[C]`` or ``[T, C]`` log-probs."""
    if clean.ndim == 2 and length is not None:
        clean, patched = clean[:length], patched[:length]
    flips, kls, dl = [], [], []
    for a, b in zip(_split(clean, groups), _split(patched, groups)):
        pa = np.exp(a)
        kl = np.sum(pa * (a - b), axis=-1)
        top = np.argmax(a, axis=-1)
        flips.append(np.argmax(b, axis=-1) != top)
        kls.append(np.maximum(kl, 0.0))
        dl.append(np.take_along_axis(b, top[..., None], -1)[..., 0] - np.take_along_axis(a, top[..., None], -1)[..., 0])
    return {"flip_rate": float(np.mean(flips)), "kl": float(np.mean(kls)), "delta_logp": float(np.mean(dl))}


def kl_per_frame(clean: np.ndarray, patched: np.ndarray, groups: list[int]) -> np.ndarray:
    """``[T]`` KL summed over groups, for frame-level outputs ``[T, C]``."""
    out = np.zeros(clean.shape[0])
    for a, b in zip(_split(clean, groups), _split(patched, groups)):
        out += np.maximum(np.sum(np.exp(a) * (a - b), axis=-1), 0.0)
    return out
