"""Paired statistics (analyses/stats/paired.py) against analytic answers."""

import itertools

import numpy as np
import pytest

from codeclens.analyses.stats import paired as st


def test_cluster_bootstrap_resamples_speakers_not_utterances():
    """Known answer: five identical utterances per speaker carry one speaker's worth of information,
    so the clustered interval equals the bootstrap over the speaker means, and is wider than
    a naive bootstrap over the 5x repeated utterances."""
    means = np.array([0.1, 0.5, 0.9, 0.3, 0.7, 0.2])
    vals, spk = np.repeat(means, 5), np.repeat(np.arange(6), 5)
    clustered = st.cluster_bootstrap(vals, spk, n_boot=4000, seed=3)
    per_speaker = st.cluster_bootstrap(means, None, n_boot=4000, seed=3)
    naive = st.cluster_bootstrap(vals, None, n_boot=4000, seed=3)
    assert clustered.mean == pytest.approx(means.mean())
    assert (clustered.lo, clustered.hi) == pytest.approx((per_speaker.lo, per_speaker.hi))
    assert clustered.n == 30 and clustered.n_clusters == 6
    assert (naive.hi - naive.lo) < 0.6 * (clustered.hi - clustered.lo)


def test_undefined_values_are_counted_and_one_cluster_gives_no_interval():
    e = st.cluster_bootstrap([1.0, np.nan, 3.0, np.nan], ["a", "a", "b", "b"], 100)
    assert (e.mean, e.n, e.n_undefined, e.n_clusters, e.undefined_rate) == (2.0, 2, 2, 2, 0.5)
    one = st.cluster_bootstrap([1.0, 2.0, 3.0], ["a", "a", "a"], 100)
    assert one.mean == 2.0 and np.isnan(one.lo) and np.isnan(one.hi)
    empty = st.cluster_bootstrap([np.nan, np.nan], None, 100)
    assert np.isnan(empty.mean) and empty.n == 0 and empty.n_undefined == 2


def test_sign_flip_is_exact_for_few_clusters():
    # All differences positive over C clusters: only the identity and the global flip reach |T_obs|.
    for c in (2, 4, 7):
        assert st.sign_flip_pvalue(np.ones(c) + np.arange(c) * 0.1, None) == pytest.approx(2 / 2 ** c)
    # Brute force on a mixed sample, with utterances grouped by speaker.
    d = np.array([0.3, -0.1, 0.5, 0.2, -0.4, 0.6])
    g = np.array([0, 0, 1, 2, 2, 3])
    s = np.array([d[g == k].sum() for k in range(4)])
    obs = abs(d.sum())
    want = np.mean([abs(np.dot(f, s)) >= obs - 1e-12 for f in itertools.product((1, -1), repeat=4)])
    assert st.sign_flip_pvalue(d, g) == pytest.approx(want)


def test_sign_flip_monte_carlo_beyond_exact_limit():
    rng = np.random.default_rng(0)
    strong = st.sign_flip_pvalue(1.0 + 0.1 * rng.standard_normal(40), None, n_perm=999, seed=0)
    assert strong == pytest.approx(1 / 1000)
    null = [st.sign_flip_pvalue(rng.standard_normal(20), None, n_perm=199, seed=i) for i in range(60)]
    assert 0.02 < np.mean(np.array(null) < 0.2) < 0.4  # about uniform under the null


def test_holm_matches_the_hand_computation():
    got = st.holm([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max 0.02, 0.03, 0.06, 0.06
    assert got[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and np.isnan(got[4])
    assert st.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_paired_test_uses_within_unit_differences():
    """Known answer: a constant +0.01 shift on top of large between-utterance spread is found by
    the paired test (every difference is +0.01) though the marginal intervals overlap."""
    a = np.linspace(0.0, 1.0, 10)
    t = st.paired_test(a, a + 0.01, None, n_boot=500)
    assert t.diff.mean == pytest.approx(0.01) and t.diff.lo == pytest.approx(0.01) and t.p == pytest.approx(2 / 2 ** 10)
    ma, mb = st.cluster_bootstrap(a, None, 500), st.cluster_bootstrap(a + 0.01, None, 500)
    assert ma.hi > mb.lo  # overlapping marginal intervals
    # A pair needs both values.
    assert st.paired_test([1.0, np.nan, 2.0], [1.5, 3.0, np.nan], None, 50).diff.n == 1
