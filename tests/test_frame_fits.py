"""Frame-path probes in a bounded number of passes: the L2 strength chosen on a subsample, the chosen
strength refitted on all train rows in at most --refit-passes streamed passes, test in one pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from codeclens.analyses.probes import ProbeConfig, run_probes
from codeclens.analyses.probes.data import gather_task
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store import Store

SELECT = 1500  # train rows of the subsample (the store has about 7000 per task)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # Large enough that a task's whitened train frames (~7000 x 48 float32) exceed --memory-mb 1.
    return Store(planted_store(tmp_path_factory.mktemp("frames") / "s", n_utt=120, n_speakers=20, frames=(70, 110),
                               n_layers=3, codebook_size=64, dim=48, noise=0.4, spread=1.5, seed=1))


def _run(store, **kw):
    torch.set_num_threads(1)
    cfg = ProbeConfig(task=("phone", "speaker"), repr="cumulative:1-2", bootstrap=0, control="none", cv="off",
                      **kw)
    df = run_probes([store], cfg)
    return df[(df.probe == "linear") & (df.metric == "macro_f1")].set_index(["task", "representation"]).sort_index()


@pytest.fixture(scope="module")
def runs(store):
    return {
        "full": _run(store, select_frames=0),  # every strength on all rows: the reference
        "bounded": _run(store, select_frames=SELECT, refit_passes=20),
        "streamed": _run(store, select_frames=SELECT, refit_passes=20, memory_mb=1),  # over budget: streamed
    }


def test_bounded_fit_equals_full_fit_and_finds_planted_layers(store, runs):
    """Scores within 0.01 macro-F1 of fitting every strength on all rows (measured: <= 0.004), and the
    planted answer: phone in layer 1 (cumulative:1 best), speaker in layer 2 (chance at cumulative:1)."""
    full, bounded = runs["full"], runs["bounded"]
    assert len(gather_task(store, "phone", ProbeConfig(cv="off")).rows["train"]) > 2 * SELECT  # the subsample path ran
    np.testing.assert_allclose(bounded["value"], full["value"], atol=0.01)
    for df in (full, bounded):
        phone, spk = df.loc["phone", "value"], df.loc["speaker", "value"]
        assert phone.idxmax() == "cumulative:1" and phone.max() > 0.5
        assert spk["cumulative:2"] > spk["cumulative:1"] + 0.3 and spk["cumulative:1"] < 0.15


def test_passes_are_bounded(runs):
    """The refit stops at its budget (the exact count of passes is checked below)."""
    b = runs["bounded"]
    assert (b["passes"] >= 1).all() and (b["passes"] <= 20).all() and (b["iters"] > 0).all()


def test_over_budget_equals_in_memory(store, runs):
    """A job larger than --memory-mb (streamed from the codes every pass) gives the in-memory result, exactly:
    held frames are built and cut at the streamed chunks' boundaries."""
    from codeclens.analyses.probes.torch_backend import _RepFeatures
    from codeclens.store import Repr

    for task in ("phone", "speaker"):
        td = gather_task(store, task, ProbeConfig(task=(task,), cv="off"))
        r = _RepFeatures(store, Repr("cumulative", 1), td).whitener.dim
        assert len(td.rows["train"]) * r * 4 > 2**20  # over the 1 MB budget: streamed
    a, b = runs["bounded"], runs["streamed"]
    assert list(a["l2"]) == list(b["l2"])
    assert list(a["value"]) == list(b["value"])


def _budgets(store, cfg):
    """(MB that holds the subsample's frames, bytes the refit's held train frames would need) by the plan's charge."""
    import math

    from codeclens.analyses.probes import torch_backend as tb
    from codeclens.analyses.probes.run import make_jobs

    td = gather_task(store, "phone", cfg)
    jobs = make_jobs([store], [td], cfg)
    idx = list(range(len(jobs)))
    units = tb._units(jobs, idx)
    sel = tb._charge(units, jobs, cfg, tb._subsample(td, cfg).rows, True, tb._chunk_of(jobs, idx, cfg, "select"))
    full = tb._charge(units, jobs, cfg, {s: td.rows[s] for s in ("train", "test")}, True,
                      tb._chunk_of(jobs, idx, cfg, "refit"), held=("train",))
    return math.ceil(sel / 2**20), full


def test_streamed_rows_are_counted(store, monkeypatch):
    """Rows materialised from the codes over the whole fit, with a budget that holds the train subsample but
    not all train frames: the train subsample once, the val subsample once per validation round (every
    ROUND iterations), for its total row weight and for the val predictions, at most refit_passes passes
    over train and one over test (the unbounded fit needs hundreds of passes). A budget below the
    subsample's streams it too."""
    from codeclens.analyses.probes import torch_backend as tb

    seen = []
    orig = tb._RepFeatures.z_t
    monkeypatch.setattr(tb._RepFeatures, "z_t", lambda self, rows: (seen.append(len(rows)), orig(self, rows))[1])
    cfg = ProbeConfig(task=("phone",), repr="cumulative:2", bootstrap=0, control="none", cv="off", select_frames=SELECT,
                      refit_passes=4)
    mb, full = _budgets(store, cfg)
    assert full > mb * 2**20
    df = run_probes([store], dataclasses.replace(cfg, memory_mb=mb))
    td = gather_task(store, "phone", cfg)
    n_tr, n_va, n_te = (len(td.rows[s]) for s in ("train", "val", "test"))
    row = df[(df.probe == "linear") & (df.metric == "macro_f1")].iloc[0]
    assert row["passes"] == 4
    from codeclens.analyses.probes.linear import ROUND

    val_reads = -(-int(row["iters"]) // ROUND) + 2
    assert sum(seen) <= SELECT + val_reads * min(SELECT, n_va) + 4 * n_tr + n_te
    assert sum(seen) >= 4 * n_tr + n_te
    seen.clear()
    tiny = run_probes([store], dataclasses.replace(cfg, memory_mb=mb - 1))
    assert sum(seen) > 10 * SELECT + 4 * n_tr + n_te  # every evaluation of the selection re-read the subsample
    pick = lambda d: d[(d.probe == "linear")][["metric", "value", "l2"]].reset_index(drop=True)  # noqa: E731
    assert pick(tiny).equals(pick(df))


def test_ridge_is_one_pass(store, monkeypatch):
    """F0 (ridge): exact from streamed statistics, every row materialised once."""
    from codeclens.analyses.probes import torch_backend as tb

    seen = []
    orig = tb._RepFeatures.z_t
    monkeypatch.setattr(tb._RepFeatures, "z_t", lambda self, rows: (seen.append(len(rows)), orig(self, rows))[1])
    cfg = ProbeConfig(task=("f0",), f0_semitones=False, repr="cumulative:2", bootstrap=0, control="none",
                      cv="off", memory_mb=1)
    df = run_probes([store], cfg)
    td = gather_task(store, "f0", cfg)
    assert sum(seen) == sum(len(r) for r in td.rows.values())
    assert (df[df.probe == "linear"]["passes"] == 1).all()


def test_refit_reaches_the_optimum_within_its_budget():
    """refit_logistic from zero reaches fit_logistic's optimum (one strength, no early stopping) and never
    evaluates past max_passes (its objective, framepath.frame_objective, against autograd: tests/test_framepath.py)."""
    from codeclens.analyses.probes.linear import fit_logistic, refit_logistic

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    P, n, r, C = 2, 600, 5, 4
    z = torch.randn(P, n, r, generator=g)
    y = (z[..., :C] + 0.7 * torch.randn(P, n, C, generator=g)).argmax(-1)
    y[:, :7] = -1  # padding rows count for nothing
    cw = torch.ones(P, C)
    wsum = (y >= 0).sum(1).float()

    calls = [0]

    def src():
        calls[0] += 1
        return iter([(z[:, a:a + 250], y[:, a:a + 250]) for a in range(0, n, 250)])

    lam = 1e-2
    want = fit_logistic(lambda: iter([(z, y)]), None, P, r, C, cw, [lam], max_iter=300)
    got = refit_logistic(src, torch.zeros(P, r, C), torch.zeros(P, C), cw, wsum, torch.full((P,), lam), 200)
    torch.testing.assert_close(got.W, want.W[:, 0], atol=2e-3, rtol=1e-2)
    assert got.passes == calls[0] < 200
    calls[0] = 0
    capped = refit_logistic(src, torch.zeros(P, r, C), torch.zeros(P, C), cw, wsum, torch.full((P,), lam), 3)
    assert capped.passes == calls[0] == 3


def test_options_are_validated():
    with pytest.raises(ValueError, match="select_frames"):
        ProbeConfig(select_frames=-1)
    with pytest.raises(ValueError, match="refit_passes"):
        ProbeConfig(refit_passes=-1)


def test_open_set_bounded_fit_finds_planted_layer(store):
    """Speaker ID on held-out speakers (open set: the strength is chosen by identifying val speakers): the
    bounded fit finds layer 2 and stays within 0.03 accuracy of the full fit (measured: 0.026; the
    subsample, 17% of train here, picked a weaker strength)."""
    torch.set_num_threads(1)
    out = {}
    for k in (0, SELECT):
        cfg = ProbeConfig(task=("speaker",), split="spk", cv="off", repr="cumulative:1-2", bootstrap=0,
                          control="none", select_frames=k)
        df = run_probes([store], cfg)
        out[k] = df[(df.probe == "linear") & (df.metric == "accuracy")].set_index("representation")["value"]
    np.testing.assert_allclose(out[SELECT], out[0], atol=0.03)
    assert out[SELECT]["cumulative:2"] > out[SELECT]["cumulative:1"] + 0.2
