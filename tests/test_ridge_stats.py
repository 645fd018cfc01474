"""Ridge sufficient statistics: the frame path's per-probe accumulator against the weighted one and numpy."""

from __future__ import annotations

import numpy as np
import torch

from codeclens.analyses.probes.linear import fit_ridge, ridge_stats, ridge_stats_rows


def test_rows_match_weighted_stats_and_numpy():
    rng = np.random.default_rng(0)
    P, r, m = 2, 5, 37
    widths = (5, 3)  # probe 1 is narrower than the padded width: its statistics fill the leading block
    Z = [rng.normal(size=(3 * m, w)) for w in widths]
    Y = [z @ rng.normal(size=w) + 0.5 + 0.1 * rng.normal(size=3 * m) for z, w in zip(Z, widths)]
    chunks = ((p, torch.from_numpy(Z[p][a:a + m]).float(), torch.from_numpy(Y[p][a:a + m]).float())
              for a in range(0, 3 * m, m) for p in range(P))
    st = ridge_stats_rows(chunks, P, r, "cpu")
    for p, (z, y) in enumerate(zip(Z, Y)):
        z, y = z.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
        k = z.shape[1]
        assert st.n[p] == len(y)
        np.testing.assert_allclose(st.gzz[p, :k, :k].numpy(), z.T @ z, rtol=1e-12)
        np.testing.assert_allclose(st.szy[p, :k].numpy(), y @ z, rtol=1e-12)
        np.testing.assert_allclose([float(st.sy[p]), float(st.syy[p])], [y.sum(), y @ y], rtol=1e-12)
        assert not st.gzz[p, k:].any() and not st.sz[p, k:].any()
    # The same rows as unit-weight "per-code" sums through the weighted accumulator.
    Zp = torch.zeros(P, 3 * m, r, dtype=torch.float64)
    for p, z in enumerate(Z):
        Zp[p, :, : z.shape[1]] = torch.from_numpy(z.astype(np.float32).astype(np.float64))
    y = torch.stack([torch.from_numpy(v.astype(np.float32).astype(np.float64)) for v in Y])
    ref = ridge_stats(iter([(Zp, torch.ones_like(y), y, y * y)]))
    for f in ("n", "sz", "gzz", "sy", "szy", "syy"):
        torch.testing.assert_close(getattr(st, f), getattr(ref, f), rtol=1e-12, atol=1e-9)
    # And the ridge solution at a tiny strength recovers the planted weights of probe 0.
    w, b = fit_ridge(st, [1e-8])
    beta, *_ = np.linalg.lstsq(np.c_[Z[0].astype(np.float32), np.ones(3 * m)], Y[0].astype(np.float32), rcond=None)
    np.testing.assert_allclose(w[0, 0].numpy(), beta[:5], atol=1e-4)
    np.testing.assert_allclose(float(b[0, 0]), beta[5], atol=1e-4)
