"""Code controls are fitted to the penalised optimum of each L2 strength (val only chooses the strength):
their labels are a function of the code, so val rows are the train codes again and stopping on their loss
measures the optimiser's road, not generalisation (torch_backend.fit_table_classify)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codeclens.analyses.probes.config import ProbeConfig
from codeclens.analyses.probes.linear import BatchedLBFGS, _table_objective
from codeclens.analyses.probes.torch_backend import TableProblem, fit_table_classify

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def control_problem(seed: int, U=120, D=6, C=4):
    """A code-control table: every code one random label, train and val counts per code drawn with
    different weights (val favours the codes train sees least), so val loss rises while train loss falls."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(U, D))
    lab = rng.integers(0, C, U)
    n_tr = rng.integers(1, 60, U)
    n_va = (60 - n_tr) // 3 + 1
    train = np.zeros((U, C))
    train[np.arange(U), lab] = n_tr
    val = np.zeros((U, C))
    val[np.arange(U), lab] = n_va
    return TableProblem(vectors, n_tr.astype(np.int64), train, val, control=True)


def objective_gaps(prob: TableProblem, fits, l2: float) -> list[float]:
    """Each fit's penalised train loss minus the float64 optimum's (plain L-BFGS from zero to a 1e-8
    gradient), on the fits' whitened coordinates (the same whitening for every fit of one problem)."""
    Z = torch.as_tensor(fits[0].whitener.transform(prob.vectors), dtype=torch.float64)[None]
    T = torch.as_tensor(prob.train, dtype=torch.float64)[None]
    r, C = Z.shape[2], T.shape[-1]
    a = T.sum(-1)
    one = torch.zeros(1, dtype=torch.long)
    f = lambda x, idx: _table_objective((Z, T, a), a.sum(-1), torch.tensor([l2], dtype=torch.float64), one, x, idx,
                                        r, C)
    opt = BatchedLBFGS(f, torch.zeros(1, r * C + C, dtype=torch.float64), tol=1e-8, ftol=0.0)
    for _ in range(3000):
        if not opt.step():
            break
    best = float(f(opt.x, one)[0])
    xs = [torch.cat([torch.as_tensor(ft.W, dtype=torch.float64).reshape(-1), torch.as_tensor(ft.b, dtype=torch.float64)])
          for ft in fits]
    return [float(f(x[None], one)[0]) - best for x in xs]


# Near-memorisation (50 dimensions for 100 codes, as 128 for 1024 in a real layer) at the weakest default
# strength: the fit that stopped on val loss ended 7e-4 to 1.4e-3 above the optimum here.
NEAR = dict(U=100, D=50, C=4)


@pytest.mark.parametrize("seed", [0, 1])
def test_code_control_is_the_penalised_optimum_whatever_the_start(seed):
    prob = control_problem(seed, **NEAR)
    cfg = ProbeConfig(control="code", l2=(1e-5,))
    dev = torch.device("cpu")
    C = prob.train.shape[1]
    (fast,) = fit_table_classify([prob], C, C, cfg, dev)  # float32, warm-started path
    (ref,) = fit_table_classify([prob], C, C, cfg, dev, reference=True)  # float64, autograd, from zero
    gap_fast, gap_ref = objective_gaps(prob, [fast, ref], 1e-5)
    assert gap_fast < 1e-4 and gap_ref < 1e-5, (gap_fast, gap_ref)
    assert np.mean(np.asarray(fast.pred_test) == np.asarray(ref.pred_test)) >= 0.98


def test_code_control_strength_chosen_on_val_is_the_same_from_either_road():
    prob = control_problem(0, **NEAR)
    cfg = ProbeConfig(control="code")
    C = prob.train.shape[1]
    (fast,) = fit_table_classify([prob], C, C, cfg, torch.device("cpu"))
    (ref,) = fit_table_classify([prob], C, C, cfg, torch.device("cpu"), reference=True)
    assert fast.l2 == ref.l2


def test_task_probe_still_stops_on_val():
    """The same table as a task probe, val labels contradicting train: validation still stops the fit, short
    of the optimum (val rows of a task are new evidence)."""
    prob = control_problem(0, **NEAR)
    prob = TableProblem(prob.vectors, prob.counts, prob.train, np.roll(prob.val, 1, axis=1), control=False)
    cfg = ProbeConfig(control="code", l2=(1e-5,))
    C = prob.train.shape[1]
    (task,) = fit_table_classify([prob], C, C, cfg, torch.device("cpu"))
    assert objective_gaps(prob, [task], 1e-5)[0] > 1e-3


def test_strengths_weaker_than_a_perfect_control_are_skipped_without_changing_the_choice():
    """Separable (fewer codes than dimensions): once a strength's optimum predicts every val row right, the
    weaker ones take its solution (they could only tie, and ties go to the stronger). Same choice and fit as
    running every strength to its optimum, in fewer iterations."""
    from codeclens.analyses.probes.linear import fit_logistic
    from codeclens.analyses.probes.torch_backend import _val_choice

    prob = control_problem(5, U=30, D=40, C=3)
    Z = torch.as_tensor(prob.vectors, dtype=torch.float64)[None]
    T = torch.as_tensor(prob.train)[None]
    Tv = torch.as_tensor(prob.val)[None]
    l2 = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    args = (1, Z.shape[2], 3, torch.ones(1, 3, dtype=torch.float64), l2)
    pruned = fit_logistic(lambda: iter([(Z, T)]), lambda: iter([(Z, Tv)]), *args, stop_on_val=False)
    every = fit_logistic(lambda: iter([(Z, T)]), None, *args)
    pick = lambda f: _val_choice(torch.einsum("pur,pgrc->pguc", Z, f.W).add(f.b[:, :, None]).argmax(-1), Tv, 3,
                                 len(l2), torch.device("cpu"))
    g = int(pick(every)[0])
    assert int(pick(pruned)[0]) == g and g > 0  # weaker strengths than the chosen one exist: they were skipped
    torch.testing.assert_close(pruned.W[0, g], every.W[0, g], atol=1e-6, rtol=0)
    assert pruned.iters < every.iters
