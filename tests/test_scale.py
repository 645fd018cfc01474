"""Memory-flat probe data path: compact task gathering and streamed fits equal the in-memory ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from codeclens.analyses.probes import ProbeConfig, run_probes
from codeclens.analyses.probes.data import gather_task
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store import Store
from codeclens.store.arrays import write_store
from codeclens.store.columns import frame_label


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(planted_store(tmp_path_factory.mktemp("scale") / "s", n_utt=40, n_speakers=8, frames=(20, 40),
                               n_layers=3, codebook_size=16, dim=6, latent="sum", seed=3))


def _reference(store: Store, task: str, split: str):
    """The straightforward way: whole pandas columns, string labels, sorted class names."""
    col = "f0_hz" if task == "f0" else task
    values = store.frame_column(col)
    ok = ~pd.isna(values)
    if values.dtype.kind in "OUS":
        ok &= np.char.str_len(values.astype(str)) > 0
    if task == "f0":
        ok &= np.where(ok, values.astype(float) > 0, False) & store.frames["voiced"].to_numpy().astype(bool)
    sp = store.utterances[split].astype(str).to_numpy()[store.frame_utt]
    rows = {s: np.flatnonzero(ok & (sp == s)) for s in ("train", "val", "test")}
    if task == "f0":
        return rows, {s: values[r].astype(float) for s, r in rows.items()}, ()
    lab = {s: values[r].astype(str) for s, r in rows.items()}
    tr = np.unique(lab["train"])
    extra = np.setdiff1d(np.unique(np.concatenate([lab["val"], lab["test"]])), tr)
    classes = list(np.concatenate([tr, extra]))
    return rows, {s: np.array([classes.index(v) for v in lab[s]]) for s in rows}, tuple(classes)


@pytest.mark.parametrize("task,split", [("phone", "split_spk"), ("speaker", "split_utt"), ("f0", "split_spk")])
def test_gather_task_matches_reference(store, task, split):
    td = gather_task(store, task, ProbeConfig(task=(task,)))
    rows, y, classes = _reference(store, task, split)
    assert td.split_column == split and td.classes == classes
    for s in rows:
        np.testing.assert_array_equal(td.rows[s], rows[s])
        np.testing.assert_array_equal(td.groups[s], store.frame_utt[rows[s]])
        if task == "f0":
            assert td.y[s].dtype == np.float32
            np.testing.assert_allclose(td.y[s], y[s], rtol=1e-6)  # float32 targets: 6 significant digits
        else:
            assert td.y[s].dtype == np.int32
            np.testing.assert_array_equal(td.y[s], y[s])


def test_label_column_encodings(tmp_path):
    """Empty strings and nulls are missing; integer labels < 0 are missing; utterance columns broadcast."""
    u = pd.DataFrame({"id": ["a", "b"], "speaker": ["s1", "s0"], "n_frames": [2, 3], "grp": [5, -1]})
    fr = pd.DataFrame({"lab": ["x", "", None, "y", "x"], "unit": np.array([3, -1, 0, 3, 7])})
    s = Store(write_store(tmp_path / "s", np.zeros((5, 1), np.int16), [np.eye(2, dtype=np.float32)], u, fr))
    lab = frame_label(s, "lab")
    assert list(np.where(lab.codes >= 0, lab.names[lab.codes], "-")) == ["x", "-", "-", "y", "x"]
    unit = frame_label(s, "unit")
    assert list(np.where(unit.codes >= 0, unit.names[unit.codes], "-")) == ["3", "-", "0", "3", "7"]
    spk = frame_label(s, "speaker")
    assert list(spk.names[spk.codes]) == ["s1", "s1", "s0", "s0", "s0"]
    grp = frame_label(s, "grp")
    assert list(grp.codes) == [0, 0, -1, -1, -1]


@pytest.mark.parametrize("task", ["phone", "f0"])
def test_streamed_frame_fits_equal_in_memory(store, task):
    """Streaming in chunks of 97 frames re-materialised from the codes on every pass, against the
    whitened frames held in memory: the same optimisation problem, so the same weights (to 1e-4:
    float32 features, float32 chunk sums in a different order) and the same test predictions."""
    from codeclens.analyses.probes.run import make_jobs
    from codeclens.analyses.probes.torch_backend import _Frames, _frames_classify, _frames_regress, _RepFeatures
    from codeclens.store import Repr

    torch.set_num_threads(1)
    cfg = ProbeConfig(task=(task,), repr="cumulative:2,latent", l2=(1e-4, 1e-2), bootstrap=0, control="none")
    td = gather_task(store, task, cfg)
    jobs = make_jobs([store], [td], cfg)
    assert {j.rep for j in jobs} == {Repr("cumulative", 2), Repr("latent")}
    feats = [_RepFeatures(store, j.rep, td) for j in jobs]
    fn = _frames_classify if td.categorical else _frames_regress
    dev = torch.device("cpu")
    mem = fn(jobs, _Frames(feats, td.rows, True, dev), cfg, dev)
    streamed = fn(jobs, _Frames(feats, td.rows, False, dev, max_chunk=97), cfg, dev)
    for a, b in zip(mem, streamed):
        assert a.l2 == b.l2
        np.testing.assert_allclose(a.W, b.W, atol=1e-4 * max(1.0, np.abs(a.W).max()))
        if td.categorical:
            assert np.mean(a.pred_test == b.pred_test) > 0.999
        else:
            np.testing.assert_allclose(a.pred_test, b.pred_test, rtol=1e-4)


def test_folded_whitening_equals_projected_frames(store):
    """cumulative:k whitened through folded tables == materialise, then (x - mean) @ proj."""
    from codeclens.analyses.probes.torch_backend import _RepFeatures
    from codeclens.store import Repr

    td = gather_task(store, "phone", ProbeConfig())
    f = _RepFeatures(store, Repr("cumulative", 3), td)
    rows = td.rows["test"]
    want = (store.materialize("cumulative:3", rows) - f.whitener.mean) @ f.whitener.proj
    np.testing.assert_allclose(f.z(rows), want, atol=1e-4)
    # whitened train frames: zero mean, identity covariance
    z = f.z(td.rows["train"]).astype(np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(z.shape[1]), atol=1e-3)


def test_engine_options_in_study_extract_tables():
    """[extract] engine/address/num_gpus/workers are ExtractConfig options, validated like the others,
    and none of them is part of the store's identity (a store can be finished by either engine)."""
    from codeclens.store.writer import ExtractConfig
    from codeclens.study import StudyError
    from codeclens.study.config import _extract_options

    assert dict(_extract_options({"engine": "ray", "num_gpus": 1, "workers": 8}, "x"))["engine"] == "ray"
    with pytest.raises(StudyError, match="engine must be local or ray"):
        _extract_options({"engine": "spark"}, "x")
    a = ExtractConfig("c", "k", "o")
    b = ExtractConfig("c", "k", "o", engine="ray", address="auto", num_gpus=1.0, workers=4)
    assert a.identity() == b.identity()


def test_table_objective_equals_autograd():
    """The count-table loss and gradient in closed form == autograd through the weighted cross-entropy."""
    from codeclens.analyses.probes.linear import _nll, _table_objective

    g = torch.Generator().manual_seed(0)
    P, U, r, C, G = 3, 11, 4, 5, 2
    Z = torch.randn(P, U, r, generator=g, dtype=torch.float64)
    T = torch.randint(0, 7, (P, U, C), generator=g).double()
    cw = torch.rand(P, C, generator=g, dtype=torch.float64) + 0.5
    wsum = (T * cw[:, None]).sum((1, 2))
    lam = torch.tensor([1e-3, 1e-1], dtype=torch.float64).repeat(P)
    pof = torch.arange(P).repeat_interleave(G)
    idx = torch.tensor([0, 3, 4])  # a subset of the P x G problems, as after some have finished
    x = torch.randn(len(idx), r * C + C, generator=g, dtype=torch.float64, requires_grad=True)
    A = T * cw[:, None]
    loss, grad = _table_objective((Z, A, A.sum(-1)), wsum, lam, pof, x.detach(), idx, r, C)
    p = pof[idx]
    W, b = x[:, : r * C].reshape(len(idx), 1, r, C), x[:, r * C :].reshape(len(idx), 1, C)
    want = _nll(Z[p], T[p], W, b, cw[p])[:, 0] / wsum[p] + (lam[idx, None] * x[:, : r * C] ** 2).sum(1)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(loss, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_count_table_fast_path_same_scores_as_reference(tmp_path, one_thread):
    """The float32 closed-form count-table fit (default) against the computation it replaced (float64,
    autograd): the same test predictions of the task probes on almost every row, the
    same scores and bootstrap intervals to 0.01, and the known answer (phone planted in layer 1, speaker
    in layer 2: those layers win by far, the others sit near chance)."""
    from codeclens.analyses.probes.run import _scores, make_jobs, resampling
    from codeclens.analyses.probes.torch_backend import _compact, _lookup_classify
    from codeclens.analyses.probes.lookup import code_vectors

    s = Store(planted_store(tmp_path / "p", n_utt=100, n_speakers=20, frames=(30, 60), n_layers=3, codebook_size=64,
                            dim=12, n_phones=8, noise=0.3, seed=2))
    dev = torch.device("cpu")
    for task, carrier in (("phone", 1), ("speaker", 2)):
        cfg = ProbeConfig(task=(task,), bootstrap=200)
        td = gather_task(s, task, cfg)
        jobs = make_jobs([s], [td], cfg)
        assert any(j.control for j in jobs)
        jobs = [j for j in jobs if not j.control] + [j for j in jobs if j.control]  # fitted apart, as fit_jobs does
        cvs = [_compact(code_vectors(s, j.rep, td.rows)) for j in jobs]
        fast, ref = [], []
        for part in ([i for i, j in enumerate(jobs) if not j.control], [i for i, j in enumerate(jobs) if j.control]):
            fast += _lookup_classify([jobs[i] for i in part], [cvs[i] for i in part], cfg, dev)
            ref += _lookup_classify([jobs[i] for i in part], [cvs[i] for i in part], cfg, dev, reference=True)
        rs = resampling(s, td, cfg)
        best = {}
        for i, (j, a, b) in enumerate(zip(jobs, fast, ref)):
            # Code controls at weak L2 are near-memorisation problems with many near-tied codes: their
            # argmax may differ on some rows at the same score; the task probes' predictions must agree.
            if not j.control:
                same = a
                if a.l2 != b.l2:
                    # Only at a chance-level layer may the strengths tie on val macro-F1 to within the two
                    # computations' rounding (seen on AVX-512: 0.0235 vs 0.0238, chance 0.05), so the
                    # choice may differ; the fits at one strength must still agree.
                    assert j.rep.layer != carrier, (task, j.rep, a.l2, b.l2)
                    one = dataclasses.replace(cfg, l2=(b.l2,))
                    same = _lookup_classify([j], [cvs[i]], one, dev)[0]
                assert np.mean(np.asarray(same.pred_test) == np.asarray(b.pred_test)) > 0.98, (task, j.rep, a.l2, b.l2)
            np.testing.assert_array_equal(np.asarray(a.lookup_test), np.asarray(b.lookup_test))
            sa, sb = _scores(td, j.y["test"], a.pred_test, rs), _scores(td, j.y["test"], b.pred_test, rs)
            for metric in sa:
                va, ra, ja = sa[metric]
                vb, rb, jb = sb[metric]
                assert abs(va - vb) < 0.01, (task, j.rep, metric)
                from codeclens.analyses.probes.metrics import bca_ci

                np.testing.assert_allclose(bca_ci(va, ra, ja), bca_ci(vb, rb, jb), atol=0.01)
            if not j.control:
                best[j.rep.layer] = sa["accuracy"][0]
        chance = np.bincount(td.y["test"]).max() / len(td.y["test"])
        assert max(best, key=best.get) == carrier
        assert best[carrier] > chance + 0.3
        assert all(v < chance + 0.1 for k, v in best.items() if k != carrier), best


def test_codes_at_equals_memmap_gather(store):
    """Block reads of ascending rows (blocks smaller than the gaps, and spanning many rows) == the memmap gather."""
    from codeclens.analyses.framestream import codes_at

    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(store.n_frames, 300, replace=False))
    for chunk in (1, 7, 10_000):
        np.testing.assert_array_equal(codes_at(store, rows, [2, 0], chunk=chunk), np.asarray(store.codes)[rows][:, [2, 0]])
    assert codes_at(store, rows[:0], [1]).shape == (0, 1)
    with pytest.raises(ValueError, match="ascending"):
        codes_at(store, rows[::-1], [0])


def test_semitone_task_equals_per_speaker_median_reference(store):
    """f0_st from integer speaker codes == 12 log2(Hz / the speaker's median Hz over all its voiced rows),
    computed the plain way with string speakers per row."""
    from codeclens.analyses.probes.run import semitone_task

    td = gather_task(store, "f0", ProbeConfig(task=("f0",)))
    st = semitone_task(store, td)
    spk = store.utterances["speaker"].astype(str).to_numpy()
    rows = pd.DataFrame({"spk": np.concatenate([spk[td.groups[s]] for s in ("train", "val", "test")]),
                         "hz": np.concatenate([td.y[s] for s in ("train", "val", "test")]).astype(np.float64)})
    med = rows.groupby("spk")["hz"].median()
    for s in ("train", "val", "test"):
        want = 12 * np.log2(td.y[s].astype(np.float64) / med.loc[spk[td.groups[s]]].to_numpy())
        np.testing.assert_allclose(st.y[s], want, rtol=1e-5, atol=1e-4)
    assert st.task == "f0_st" and np.isfinite(np.concatenate(list(st.y.values()))).all()


def test_code_control_labels_made_from_codes_equal_arrays(store):
    """The lazily made control labels of a layer == control_labels on the layer's codes (same seed)."""
    from codeclens.analyses.probes.controls import CodeLabels, code_types, control_labels
    from codeclens.analyses.probes.run import _control
    from codeclens.store import Repr

    cfg = ProbeConfig(task=("phone",))
    td = gather_task(store, "phone", cfg)
    rep = Repr("layer", 2)
    lazy = _control(store, rep, td, cfg, seed=11)
    assert isinstance(lazy, CodeLabels)
    want = control_labels(code_types(store, rep, td.rows), td.y["train"], 11)
    assert set(lazy) == set(want)
    for s in want:
        np.testing.assert_array_equal(lazy[s], want[s])
