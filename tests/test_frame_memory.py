"""--memory-mb bounds a frame-path group's whole charge, and grouping never changes a result.

Known answers: (a) the same jobs fitted as one group, one representation per group, and streamed give
identical fits (strengths, test predictions; weights to the last float32 bit; each probe's iterations and
passes over the train rows), for logistic (also with an L1 term, fitted by FISTA) (task and code control sharing one
representation), ridge and the bounded (subsample + refit) path; (b) the plan's groups each stay within the
budget, and the bytes a group actually holds (its frames, whitening and tables, measured on the built
objects) stay within its planned charge; a budget below one representation streams it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from codeclens.analyses.probes import torch_backend as tb
from codeclens.analyses.probes.config import ProbeConfig
from codeclens.analyses.probes.data import gather_task
from codeclens.analyses.probes.run import make_jobs
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store import Store

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPR = "cumulative:1-3,latent"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # 32 codes per layer: cumulative:1's code control covers the test rows, so it shares that representation
    return Store(planted_store(tmp_path_factory.mktemp("mem") / "s", n_utt=150, n_speakers=12, frames=(60, 90),
                               n_layers=3, codebook_size=32, dim=64, latent="sum", noise=0.3, spread=1.0, seed=2))


def _fit(store, task, memory_mb, **kw):
    cfg = ProbeConfig(task=(task,), repr=REPR, cv="off", l2=(1e-4, 1e-2), memory_mb=memory_mb, **kw)
    if task == "f0":
        cfg = dataclasses.replace(cfg, l2=cfg.ridge_l2)
    td = gather_task(store, task, cfg)
    jobs = make_jobs([store], [td], cfg)
    groups = []
    orig = tb._plan

    def plan(*a, **k):  # record the groups the plan made (the fit itself is not replaced)
        g = orig(*a, **k)
        groups.extend(g)
        return g

    tb._plan = plan
    try:
        fits = tb.fit_jobs(jobs, cfg, torch.device("cpu"))
    finally:
        tb._plan = orig
    return jobs, fits, groups


def _same(a, b):
    for fa, fb in zip(a, b):
        assert fa.l2 == fb.l2
        # what a probe cost is its own: the same alone as beside others (they were the group's once)
        assert (fa.iters, fa.passes) == (fb.iters, fb.passes)
        np.testing.assert_array_equal(np.asarray(fa.pred_test), np.asarray(fb.pred_test))
        # weights: equal but for the last bit of a few (measured: one float32 ulp, a code control beside
        # other probes; the optimiser's batched row reductions round by batch size)
        np.testing.assert_allclose(fa.W, fb.W, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(fa.W).max())
        np.testing.assert_allclose(fa.b, fb.b, rtol=0, atol=4 * np.finfo(np.float32).eps * max(1, np.abs(fa.b).max()))


@pytest.mark.parametrize("task,kw", [("phone", {}), ("f0", {"f0_semitones": False}),
                                     ("phone", {"select_frames": 3000, "refit_passes": 6}),
                                     ("phone", {"l1": 1e-3, "max_iter": 60})])
def test_grouping_and_streaming_do_not_change_fits(store, task, kw):
    jobs, one, g_one = _fit(store, task, 4096, **kw)
    _, alone, g_alone = _fit_alone(store, task, **kw)
    _, streamed, g_str = _fit(store, task, 1, **kw)
    reps = {j.rep for j in jobs}
    assert len(g_one) == 1 and all(res for _, res in g_one)  # one group, held
    assert len(g_alone) == len(reps) and all(res for _, res in g_alone)  # one representation per group, held
    assert all(not res for _, res in g_str)  # streamed
    if task == "phone":
        assert any(j.control for j in jobs)  # a task and its control share a representation's frames
    _same(one, alone)
    _same(one, streamed)


def _fit_alone(store, task, **kw):
    """The budget that holds the largest representation's group, but no two representations together."""
    cfg = ProbeConfig(task=(task,), repr=REPR, cv="off", l2=(1e-4, 1e-2), **kw)
    if task == "f0":
        cfg = dataclasses.replace(cfg, l2=cfg.ridge_l2)
    td = gather_task(store, task, cfg)
    jobs = make_jobs([store], [td], cfg)
    idx = [i for i in range(len(jobs)) if not jobs[i].lookup]
    bounded = tb._bounded(jobs[idx[0]], cfg)
    rows = tb._subsample(td, cfg).rows if bounded else td.rows
    m = tb._chunk_of(jobs, idx, cfg, "select" if td.categorical else "ridge")
    units = tb._units(jobs, idx)
    one = max(tb._charge([u], jobs, cfg, rows, True, m) for u in units)
    two = min(tb._charge([u, v], jobs, cfg, rows, True, m) for u in units for v in units if u is not v)
    mb = -(-one // 2**20)
    assert mb * 2**20 < two
    return _fit(store, task, mb, **kw)


def _held_bytes(fr: tb._Frames) -> int:
    """Bytes the built group holds: frames, and per representation its whitening and tables."""
    n = sum(t.numel() * t.element_size() for t in fr.mem.values())
    for f in fr.reps:
        n += f.whitener.proj.nbytes + f.whitener.mean.nbytes
        for name in ("_table", "_proj", "_mean", "_offset"):
            t = getattr(f, name, None)
            if t is not None:
                n += t.numel() * t.element_size()
    return n


def test_planned_charge_bounds_what_a_group_holds(store):
    cfg = ProbeConfig(task=("phone",), repr=REPR, cv="off", l2=(1e-4, 1e-2))
    td = gather_task(store, "phone", cfg)
    jobs = make_jobs([store], [td], cfg)
    idx = [i for i in range(len(jobs)) if not jobs[i].lookup]
    m = tb._chunk_of(jobs, idx, cfg, "select")
    units = tb._units(jobs, idx)
    whole = tb._charge(units, jobs, cfg, td.rows, True, m)
    budget_mb = -(-max(tb._charge([u], jobs, cfg, td.rows, True, m) for u in units) // 2**20)
    assert budget_mb * 2**20 < whole  # holds the largest representation, not all of them: several groups
    small = dataclasses.replace(cfg, memory_mb=budget_mb)
    groups = tb._plan(units, jobs, small, td.rows, m)
    assert len(groups) > 1 and all(res for _, res in groups)
    for group, _ in groups:
        charge = tb._charge(tb._units(jobs, group), jobs, small, td.rows, True, m)
        assert charge <= budget_mb * 2**20
        fr = tb._Frames(tb._features(jobs, group, torch.device("cpu")), td.rows, True, torch.device("cpu"), chunk=m,
                       width=tb._width(jobs, idx))
        assert fr.R == len({jobs[i].rep for i in group}) < len(group) or fr.R == len(group)
        assert _held_bytes(fr) <= charge
    # the frames of a representation are held once, however many jobs read them
    shared = next(u for u in units if len(u) > 1)
    fr = tb._Frames(tb._features(jobs, shared, torch.device("cpu")), td.rows, True, torch.device("cpu"), chunk=m)
    assert fr.R == 1 and fr.mem["train"].shape[0] == 1
    # a budget below one representation's held charge streams it: only a chunk is made at a time
    tiny = dataclasses.replace(cfg, memory_mb=1)
    assert all(not res for _, res in tb._plan(units, jobs, tiny, td.rows, m))
    assert tb._charge(units[:1], jobs, cfg, td.rows, False, m) < tb._charge(units[:1], jobs, cfg, td.rows, True, m)
