"""Exact order statistics of streamed float32 values, per group, in two passes and bounded memory.

Pass 1 (:meth:`OrderStats.add`) counts the values in bins of their order-preserving bit pattern
(the top bits of the float32, so a bin spans ``2**shift`` consecutive floats: a relative width of
``2**(shift - 23)``); :meth:`OrderStats.plan` then finds the bin and the rank within it of every
wanted rank; pass 2 (:meth:`OrderStats.collect`) keeps only the values that fall in those bins, and
:meth:`OrderStats.value` reads each wanted rank from them. The result is exactly the value a sort
of all values would put at that rank; memory is the histogram and the values of the wanted bins.
"""

from __future__ import annotations

import numpy as np


def ordered(v: np.ndarray) -> np.ndarray:
    """uint32 keys in the order of the float32 values (negative floats reversed below the positive ones)."""
    b = np.ascontiguousarray(v, np.float32).view(np.uint32)
    return np.where(b >> np.uint32(31), ~b, b | np.uint32(0x80000000))


TINY_OCTAVES = 16
"""Values below the largest magnitude of the first values over 2**TINY_OCTAVES share one bin."""


class Binner:
    """Monotone bins of float32 values: ``2**shift`` consecutive bit patterns each, and one bin for the
    values of magnitude below ``tiny`` (fixed at the first values: the largest magnitude over
    ``2**TINY_OCTAVES``; the bit patterns of tiny floats, all exponents down to 2**-149 and both signs,
    would otherwise span most of the key range). Any monotone binning gives exact order statistics;
    this one bounds the number of bins. Share one between OrderStats whose bins are compared."""

    def __init__(self, shift: int):
        self.shift = int(shift)
        self.tiny: np.float32 | None = None

    def __call__(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float32)
        if self.tiny is None:
            top = float(np.abs(v).max()) if len(v) else 0.0
            self.tiny = np.float32(top * 2.0**-TINY_OCTAVES) if top > 0 else np.float32(np.finfo(np.float32).tiny)
        s = np.uint32(self.shift)
        kn = int(ordered(np.array([-self.tiny]))[0] >> s)
        kp = int(ordered(np.array([self.tiny]))[0] >> s)
        k = (ordered(v) >> s).astype(np.int64)
        return np.where(v <= -self.tiny, k, np.where(v < self.tiny, kn + 1, k - kp + kn + 2))


class OrderStats:
    def __init__(self, n_groups: int, shift: int = 8, binner: Binner | None = None):
        self.G = int(n_groups)
        self._bins = binner if binner is not None else Binner(shift)
        self.lo, self.R = 0, 0
        self.hist = np.zeros((self.G, 0), np.int64)
        self._need: np.ndarray | None = None
        self._vals: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []

    @property
    def binner(self) -> Binner:
        return self._bins

    def add(self, v: np.ndarray, g: np.ndarray | int = 0) -> None:
        """Pass 1: count values ``v`` of groups ``g``."""
        if not len(v):
            return
        b = self._bins(v)
        lo, hi = int(b.min()), int(b.max()) + 1
        if not self.R:
            self.lo, self.R = lo, 0
        if lo < self.lo or hi > self.lo + self.R:  # widen the bin range (rare after the first chunk)
            nlo, nhi = min(lo, self.lo), max(hi, self.lo + self.R)
            h = np.zeros((self.G, nhi - nlo), np.int64)
            h[:, self.lo - nlo : self.lo - nlo + self.R] = self.hist
            self.hist, self.lo, self.R = h, nlo, nhi - nlo
        g = np.broadcast_to(np.asarray(g, np.int64), b.shape)
        self.hist += np.bincount(g * self.R + (b - self.lo), minlength=self.G * self.R).reshape(self.G, self.R)

    def count(self, g: int = 0) -> int:
        return int(self.hist[g].sum())

    def plan(self, group: np.ndarray, rank: np.ndarray, extra: np.ndarray | None = None) -> None:
        """The ranks to read later (0-based within their group, ascending order of values); ``extra``:
        more bins of group 0 (absolute bin numbers, see :meth:`bin_of`) whose values to keep, for
        :meth:`count_below`."""
        group, rank = np.asarray(group, np.int64), np.asarray(rank, np.int64)
        cum = np.cumsum(self.hist, axis=1)
        b = np.empty(len(rank), np.int64)
        for g in np.unique(group):
            at = group == g
            b[at] = np.searchsorted(cum[g], rank[at], side="right")
        before = np.where(b > 0, cum[group, np.maximum(b - 1, 0)], 0)
        self._q = (group * self.R + b, rank - before)
        need = [self._q[0]]
        if extra is not None:
            e = np.asarray(extra, np.int64) - self.lo
            need.append(e[(e >= 0) & (e < self.R)])
        self._need = np.unique(np.concatenate(need))

    def bin_of(self, group: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Absolute bin number of planned ranks (the order of :meth:`plan`), group 0."""
        return self._q[0] % self.R + self.lo if self.R else np.zeros(0, np.int64)

    def count_below(self, x: float, strict: bool = True) -> int:
        """Values of group 0 below ``x`` (``<``; ``<=`` with strict=False). Exact when the bin of x was
        planned (a rank or an extra bin); x outside the range needs no bin."""
        x32 = np.float32(x)
        if float(x32) > float(x):  # the largest float32 at or below x: its bin holds every value near x
            x32 = np.nextafter(x32, np.float32(-np.inf))
        bx = int(self._bins(np.array([x32], np.float32))[0]) - self.lo
        if bx < 0:
            return 0
        if bx >= self.R:
            return self.count(0)
        n = int(self.hist[0, :bx].sum())
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, np.int64)
        vals = np.concatenate(self._vals) if self._vals else np.zeros(0, np.float32)
        inbin = vals[keys == bx]
        return n + int(np.count_nonzero(inbin < x if strict else inbin <= x))

    def collect(self, v: np.ndarray, g: np.ndarray | int = 0) -> None:
        """Pass 2: keep the values of the planned bins."""
        if not len(v):
            return
        g = np.broadcast_to(np.asarray(g, np.int64), (len(v),))
        key = g * self.R + (self._bins(v) - self.lo)
        m = np.isin(key, self._need)
        self._vals.append(np.asarray(v, np.float32)[m])
        self._keys.append(key[m])

    def values(self) -> np.ndarray:
        """float32 value of every planned rank, in the order given to :meth:`plan`."""
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, np.int64)
        vals = np.concatenate(self._vals) if self._vals else np.zeros(0, np.float32)
        order = np.lexsort((ordered(vals), keys))
        keys, vals = keys[order], vals[order]
        start = np.searchsorted(keys, self._q[0], side="left")
        return vals[start + self._q[1]]
