"""Count-table probes of several layers fitted in one program give what each gives alone.

Known answers: (a) ``linear._dot`` equals numpy's row-wise dot products, and a row's value does not
depend on the rows batched with it nor on its address; (b) ``fit_table_classify`` of eight layers' problems at once (task
probes, then code controls, as ``tables.run_store`` fits them) chooses the same L2 and predicts the same
class for every vector as eight one-problem programs, with bit-identical weights; (c) a
--memory-mb too small for two problems splits the batch into one-problem programs, with the same results.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codeclens.analyses.probes import tables as T
from codeclens.analyses.probes.config import ProbeConfig
from codeclens.analyses.probes.linear import _dot
from codeclens.analyses.probes import torch_backend as tb
from codeclens.analyses.probes.torch_backend import TableProblem, fit_table_classify

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dot_is_rowwise_and_batch_free():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3001, generator=g), torch.randn(5, 3001, generator=g)
    got = _dot(a, b)
    exact = (a.double() * b.double()).sum(1).numpy()
    scale = (a.double().norm(dim=1) * b.double().norm(dim=1)).numpy()
    assert np.all(np.abs(got.numpy() - exact) <= 1e-6 * scale)  # float32 rounding of a sum of 3001 terms
    assert torch.equal(_dot(a[1:3], b[1:3]), got[1:3])  # the same bits beside other rows or not
    # ... and wherever a row sits: rows of 3001 floats start at addresses MKL treats differently from a
    # fresh (aligned) tensor's, which changed the last bits on AVX-512 machines
    assert all(torch.equal(_dot(a[i : i + 1], b[i : i + 1]), _dot(a[i].clone()[None], b[i].clone()[None]))
               for i in range(5))
    assert _dot(a[:0], b[:0]).shape == (0,)
    assert abs(float(_dot(a[:1], b[:1])[0]) - exact[0]) <= 1e-6 * scale[0]  # B = 1: one bmm, also right


def _problems(control: bool, n: int = 8, U: int = 64, D: int = 6, C: int = 5, seed: int = 0, ragged: bool = False):
    """Layers whose codes carry the class more or less strongly (layer 0 most), as planted stores do.
    ``ragged``: layers with different numbers of distinct vectors and a rank-deficient codebook (as
    duplicate or degenerate codebook rows give), so a batched program pads them."""
    rng = np.random.default_rng(seed)
    out = []
    for layer in range(n):
        U = 64 - 5 * (layer % 3) if ragged else U
        vectors = rng.normal(size=(U, D))
        if ragged and layer == 1:
            vectors[:, -1] = vectors[:, 0]  # one direction fewer after whitening
        home = rng.integers(0, C, U)  # each code's usual class
        strength = 8.0 / (1 + layer)
        p = np.full((U, C), 1.0)
        p[np.arange(U), home] += strength
        p /= p.sum(1, keepdims=True)
        n_code = rng.integers(5, 40, U)
        if control:  # a code control: one label per code
            train = np.zeros((U, C))
            train[np.arange(U), home] = n_code
            val = np.zeros((U, C))
            val[np.arange(U), home] = rng.integers(1, 10, U)
        else:
            train = np.stack([rng.multinomial(k, q) for k, q in zip(n_code, p)]).astype(np.float64)
            val = np.stack([rng.multinomial(k, q) for k, q in zip(rng.integers(2, 12, U), p)]).astype(np.float64)
        out.append(TableProblem(vectors, train.sum(1).astype(np.int64), train, val, control))
    return out


@pytest.mark.parametrize("control,ragged", [(False, False), (True, False), (False, True), (True, True)])
def test_layers_batched_equal_layers_alone(control, ragged):
    cfg = ProbeConfig(l2=(1e-4, 1e-3, 1e-2, 1e-1))
    probs = _problems(control, ragged=ragged)
    C = probs[0].train.shape[1]
    dev = torch.device("cpu")
    together = fit_table_classify(probs, C, C, cfg, dev)
    alone = [fit_table_classify([p], C, C, cfg, dev)[0] for p in probs]
    assert len({f.l2 for f in alone}) > 1 or control  # the layers differ: the strengths are really chosen
    for t, a in zip(together, alone):
        assert t.l2 == a.l2
        np.testing.assert_array_equal(t.pred_test, a.pred_test)
        # Bit for bit: every product and reduction is made per problem, with the threads of one problem
        # alone, so the rounding (and with it an early stop, or a control's road to its optimum) cannot
        # depend on the layers beside it.
        np.testing.assert_array_equal(t.W, a.W)
        np.testing.assert_array_equal(t.b, a.b)
    hits = [(f.pred_test == p.train.argmax(1)).mean() for f, p in zip(alone, probs)]
    if not control:  # the planted order: the strongest layer is decoded best
        assert hits[0] > hits[-1]


def test_memory_budget_splits_the_batch(monkeypatch):
    probs = _problems(False, n=4)
    C = probs[0].train.shape[1]
    dev = torch.device("cpu")
    calls = []
    real = T.fit_table_classify

    def spy(part, *a, **k):  # records the programs (the fits are the real ones)
        calls.append(len(part))
        return real(part, *a, **k)

    monkeypatch.setattr(T, "fit_table_classify", spy)
    cfg = ProbeConfig(l2=(1e-4, 1e-2))
    one = T._fit_tables(probs, C, C, cfg, dev, None)
    # copies such that one problem charges just under 1 MB: memory_mb=1 holds one per program
    monkeypatch.setattr(tb, "TABLE_COPIES", 2**20 // (len(cfg.l2) * 64 * (6 + C) * 8))
    split = T._fit_tables(probs, C, C, ProbeConfig(l2=(1e-4, 1e-2), memory_mb=1), dev, None)
    assert calls == [4, 1, 1, 1, 1]
    for a, b in zip(one, split):
        assert a.l2 == b.l2
        np.testing.assert_array_equal(a.pred_test, b.pred_test)


def test_groups_side_by_side_equal_one_after_the_other(monkeypatch):
    """A task's probes and its controls fitted at the same time in two Python threads give bit for bit
    what they give one group after the other, the fits really run in two threads, and torch's thread
    setting is what it was afterwards."""
    import threading

    groups = [_problems(False, ragged=True), _problems(True, ragged=True, seed=1)]
    C = groups[0][0].train.shape[1]
    dev = torch.device("cpu")
    cfg = ProbeConfig(l2=(1e-4, 1e-3, 1e-2, 1e-1))
    seq = T._fit_side_by_side(groups, C, C, ProbeConfig(l2=cfg.l2, workers=1), dev, None)
    names, real = set(), T._fit_tables

    def spy(*a, **k):  # records the thread of each group (the fits are the real ones)
        names.add(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(T, "_fit_tables", spy)
    old = torch.get_num_threads()
    torch.set_num_threads(2)  # what a process has by default here
    try:
        par = T._fit_side_by_side(groups, C, C, ProbeConfig(l2=cfg.l2, workers=2), dev, None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
    assert len(names) == 2 and all(n.startswith("codeclens-side") for n in names)
    for gs, gp in zip(seq, par):
        assert len(gs) == len(gp) == 8
        for a, b in zip(gs, gp):
            assert a.l2 == b.l2
            np.testing.assert_array_equal(a.pred_test, b.pred_test)
            np.testing.assert_array_equal(a.W, b.W)
            np.testing.assert_array_equal(a.b, b.b)
    # an empty group (no controls) and one worker: no threads
    names.clear()
    one = T._fit_side_by_side([groups[0], []], C, C, ProbeConfig(l2=cfg.l2, workers=2), dev, None)
    assert one[1] == [] and names == {threading.current_thread().name}
    np.testing.assert_array_equal(one[0][3].W, seq[0][3].W)
