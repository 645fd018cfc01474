"""Streamed statistics of the SAE analysis equal the whole-array computation.

The SAE's utterance rows are the store's streamed means; feature-browser pages and
test-set metrics are accumulated chunk by chunk from the codes. Tiny chunks against one
chunk against a direct numpy computation, on a planted store and on codes with ties.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.probes.synthetic import planted_store
from codeclens.analyses.sae import browser, metrics
from codeclens.analyses.sae.data import build_task
from codeclens.store import Store
from codeclens.store.reprs import Repr

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(planted_store(tmp_path_factory.mktemp("planted") / "st", n_utt=30, n_layers=3, latent="sum", seed=3))


@pytest.mark.parametrize("name", ["mean(cumulative:3)", "mean(layer:2)", "mean(latent)"])
def test_task_utterance_values_are_the_brute_force_means(store, name):
    # The SAE's utterance rows are Store.pooled's streamed means (tests/test_store_pooled.py):
    # here against a direct float64 mean of the materialised frames.
    rep = store._one(name)
    task = build_task(store, rep, "accent", speaker_fractions=(0.5, 0.25, 0.25))
    x = store.materialize(Repr(rep.kind, rep.layer, False)).astype(np.float64)
    nf = store.utterances["n_frames"].to_numpy()
    direct = np.stack([x[a : a + n].mean(0) for a, n in zip(np.cumsum(nf) - nf, nf)])
    assert np.abs(task.x_all - direct).max() < 1e-6
    rows = task.roles["test"]
    assert np.abs(task.values(rows) - direct[rows]).max() < 1e-6


def _codes_with_ties(rng, n=97, d_z=12, k=3):
    z = np.zeros((n, d_z), np.float32)
    for i in range(n):
        z[i, rng.choice(d_z, k, replace=False)] = rng.choice([0.5, 1.0, 1.5, 2.0], k)  # many exact ties
    z[:, -1] = 0  # a dead latent
    return z


def test_latent_summary_chunks_equal_direct(rng):
    z = _codes_with_ties(rng)
    labels = rng.choice(["a", "b", "c"], len(z))
    rows = pd.DataFrame({"label": labels})
    top = 5
    one = browser.summarize([z], rows, top)
    for size in (1, 4, 13):
        many = browser.summarize([z[a : a + size] for a in range(0, len(z), size)], rows, top)
        for att in ("count", "label_counts", "top_col", "top_row", "top_val"):
            assert np.array_equal(getattr(many, att), getattr(one, att)), (size, att)
        assert np.allclose(many.total, one.total, rtol=1e-12)
    act = z > 0
    assert np.array_equal(one.density, act.mean(0))
    names = np.array(["a", "b", "c"])
    for j in range(z.shape[1]):
        on = np.flatnonzero(act[:, j])
        best = on[np.argsort(-z[on, j], kind="stable")][:top]  # the page's order: value, then row
        rows_j, vals_j = one.best(j)
        assert np.array_equal(rows_j, best) and np.array_equal(vals_j, z[best, j])
        assert np.array_equal(one.label_counts[j], [(labels[on] == n).sum() for n in names])
        if len(on):
            assert np.isclose(one.total[j] / one.count[j], z[on, j].mean())


def test_browser_page_same_from_chunks(rng):
    z = _codes_with_ties(rng, n=40)
    rows = pd.DataFrame({"id": [f"u{i}" for i in range(40)], "speaker": "s", "label": rng.choice(["x", "<y>"], 40),
                         "path": "", "clip_start": np.nan, "clip_end": np.nan})
    whole = browser.render("t", {"q": 2}, z, rows, n_latents=6, top=3, first=[4, 11])
    summ = browser.summarize([z[a : a + 7] for a in range(0, 40, 7)], rows, 3)
    assert browser.render_summary("t", {"q": 2}, summ, rows, n_latents=6, first=[4, 11]) == whole
    assert "&lt;y&gt;" in whole and "<y>" not in whole


def test_code_stats_chunks_equal_whole(rng):
    x = rng.standard_normal((203, 6)).astype(np.float32) * 3 + 1
    x_hat = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    z = _codes_with_ties(rng, n=203)
    whole = metrics.CodeStats.of(x, x_hat, z)
    for size in (1, 10, 203):
        acc = metrics.CodeStats(z.shape[1])
        for a in range(0, len(x), size):
            acc.add(x[a : a + size], x_hat[a : a + size], z[a : a + size])
        for f in ("fvu", "l0", "dead_fraction", "density_gini"):
            assert np.isclose(getattr(acc, f), getattr(whole, f), rtol=1e-10, atol=1e-12), (size, f)
        assert np.allclose(acc.density, whole.density)
        assert np.allclose(acc.grouped_density(4), whole.grouped_density(4))
    assert np.isclose(whole.fvu, metrics.fvu(x, x_hat), rtol=1e-9)
    assert whole.l0 == metrics.l0(z) and whole.dead_fraction == metrics.dead_fraction(z)
    assert np.isclose(whole.density_gini, metrics.density_gini(z))
    assert np.allclose(whole.grouped_density(4), metrics.grouped_density(z, 4))


def test_paper_grouping_of_unknown_accents_is_refused_with_the_way_out(store, tmp_path, capsys):
    """The planted store's accents (a0, a1) are both non-US-UK under the paper's grouping: one class."""
    from codeclens.cli import main

    assert main(["sae", str(store.path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codeclens: error:") and "--grouping none" in err and "a0, a1" in err and "\n" not in err
