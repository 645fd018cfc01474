"""Code controls on the frame path (cumulative:k, latent) are fitted to the penalised optimum of each L2
strength, as on count tables (tests/test_control_fits.py): a code control's label is a function of the code,
so its val rows are the train codes again and stopping on their loss measures the optimiser's road. Task
probes and --control type controls, fitted in the same program, keep early stopping on val."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codeclens.analyses.probes.config import ProbeConfig
from codeclens.analyses.probes.data import TaskData
from codeclens.analyses.probes.framepath import frame_objective
from codeclens.analyses.probes.linear import BatchedLBFGS
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.analyses.probes.torch_backend import Job, _class_weights, _RepFeatures, fit_jobs
from codeclens.store import Repr, Store

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REP = Repr("cumulative", 1)  # one layer's vector, but fitted on frames (not a lookup)
C = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # 100 codes in 50 dimensions: near memorisation, as 1024 codes in 128 dimensions of a real layer
    return Store(planted_store(tmp_path_factory.mktemp("fc") / "s", n_utt=200, frames=(60, 80), n_layers=1,
                               codebook_size=100, dim=50, carriers={}, seed=3))


def control_task(store: Store, seed: int) -> TaskData:
    """Every code one random label; train and val frames drawn per code with different weights (val favours
    the codes train sees least), so val loss rises while train loss falls: the frame analogue of
    tests/test_control_fits.control_problem."""
    rng = np.random.default_rng(seed)
    codes = np.asarray(store.codes[:, 0])
    K = store.codebook_sizes[0]
    lab = rng.integers(0, C, K)
    n_tr = rng.integers(1, 60, K)
    n_va = (60 - n_tr) // 3 + 1
    rows = {"train": [], "val": [], "test": []}
    for u in range(K):
        at = rng.permutation(np.flatnonzero(codes == u))
        assert len(at) >= 75, len(at)
        rows["train"].append(at[: n_tr[u]])
        rows["val"].append(at[n_tr[u]: n_tr[u] + n_va[u]])
        rows["test"].append(at[65:75])
    rows = {s: np.sort(np.concatenate(v)).astype(np.int32) for s, v in rows.items()}
    y = {s: lab[codes[r]].astype(np.int32) for s, r in rows.items()}
    groups = {s: np.zeros(len(r), np.int32) for s, r in rows.items()}
    return TaskData("ctrl", "phone", True, tuple(str(c) for c in range(C)), C, "split_spk", "frame", False, rows, y,
                    groups)


def objective_gap(store: Store, td: TaskData, fit, cfg: ProbeConfig) -> float:
    """The fit's penalised train objective minus the float64 optimum's (L-BFGS from zero to a 1e-9 gradient or a 1e-13 relative decrease)
    at the fit's strength, on the same whitened frames."""
    z = torch.as_tensor(_RepFeatures(store, REP, td).z(td.rows["train"]), dtype=torch.float64)[None]
    y = torch.as_tensor(td.y["train"], dtype=torch.long)[None]
    cw = _class_weights(torch.bincount(y[0], minlength=C)[None].double(), cfg.balance)
    wsum = torch.gather(cw, 1, y).sum(1)
    r = z.shape[2]
    one = torch.zeros(1, dtype=torch.long)
    lam = torch.tensor([fit.l2], dtype=torch.float64)
    f = lambda x, idx: frame_objective([(z, y)], x, idx, one, lam, cw, wsum, r, C)  # noqa: E731
    opt = BatchedLBFGS(f, torch.zeros(1, r * C + C, dtype=torch.float64), tol=1e-9, ftol=1e-13)
    for _ in range(2000):
        if not opt.step():
            break
    x = torch.cat([torch.as_tensor(fit.W, dtype=torch.float64).reshape(-1), torch.as_tensor(fit.b, dtype=torch.float64)])
    return float(f(x[None], one)[0]) - float(f(opt.x, one)[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_frame_code_control_is_the_penalised_optimum(store, seed):
    """A code control (float32) ends within 2e-5 of the float64 optimum's objective (measured 4e-6 to 5e-6); the
    same job under the rule before (stopped on val loss, at a relative decrease of 100 eps; still the rule of
    --control type and of task probes) ends 7e-5 to 9e-5 above it."""
    td = control_task(store, seed)
    job = Job(store, REP, td, td.y, control=True)
    dev = torch.device("cpu")
    code = ProbeConfig(control="code", l2=(1e-5,))
    typ = ProbeConfig(control="type", l2=(1e-5,))
    (opt,) = fit_jobs([job], code, dev)
    (early,) = fit_jobs([job], typ, dev)
    gap_opt, gap_early = objective_gap(store, td, opt, code), objective_gap(store, td, early, typ)
    assert gap_opt < 2e-5 and gap_early > 4e-5, (gap_opt, gap_early)


def test_task_and_code_control_in_one_program_keep_their_own_rules(store):
    """A task probe and a code control share one fit (same rows): the control still reaches its optimum and the
    task probe is still stopped on val, exactly as when fitted alone."""
    td = control_task(store, 0)
    task = Job(store, REP, td, td.y, control=False)
    ctrl = Job(store, REP, td, td.y, control=True)
    cfg = ProbeConfig(control="code", l2=(1e-5,))
    dev = torch.device("cpu")
    t_both, c_both = fit_jobs([task, ctrl], cfg, dev)
    (t_alone,) = fit_jobs([task], cfg, dev)
    assert objective_gap(store, td, c_both, cfg) < 2e-5
    assert objective_gap(store, td, t_both, cfg) > 4e-5
    np.testing.assert_allclose(t_both.W, t_alone.W, atol=1e-6)
