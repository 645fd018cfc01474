"""Benchmark: count-table (layer:k) logistic fits, the old road against the L2 path, on the same tables.

The tables are those of a default ``codeclens probe`` run (every layer, phone and speaker, task probes
and code controls): ``fit_jobs`` runs once with ``fit_logistic`` wrapped to record its inputs. Each
recorded problem set is then fitted twice in this process, single-threaded as ``threads_for`` runs
them: ``path=False`` (every strength from zero in one program: the code before the path) and
``path=True`` (``linear._fit_table_path``, the default). Code controls are fitted without early
stopping (each strength's penalised optimum), so for them the two roads must end at the same fit.
Printed per fit: CPU seconds, iterations, the strength each chooses on val (macro-F1, ties to the
stronger, as ``_lookup_classify``), and the val macro-F1 of that choice; then the totals and the ratio.

    python benchmarks/table_fits.py --store /tmp/stores/planted_4M     # the 4 M planted store (fits do not depend on frames)
    python benchmarks/table_fits.py                                     # builds a small planted store in a temp dir
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def record(store_path: Path, tasks: tuple[str, ...]) -> list[dict]:
    """Inputs of every count-table fit of the default run of ``tasks`` on the store."""
    from codeclens.analyses.probes import ProbeConfig
    from codeclens.analyses.probes import torch_backend as tb
    from codeclens.analyses.probes.data import gather_task
    from codeclens.analyses.probes.run import make_jobs
    from codeclens.store import Store

    calls, orig, orig_lc = [], tb.fit_logistic, tb._lookup_classify
    ctx = {}

    def fit(train, val, P, r, C, cw, l2, l1, max_iter, patience, closed_form=True, stop_on_val=True):
        (Z, T), = list(train())
        # Code controls are not stopped on val (stop_on_val=False: each strength's penalised optimum).
        calls.append(dict(Z=Z, T=T, Tv=list(val())[0][1] if val is not None else None, stop_on_val=stop_on_val,
                          cw=cw, l2=tuple(l2), max_iter=max_iter, patience=patience, **ctx))
        return orig(train, val, P, r, C, cw, l2, l1, max_iter, patience, closed_form=closed_form,
                    stop_on_val=stop_on_val)

    def lookup_classify(jobs, cvs, cfg, device, reference=False):
        ctx.update(task=jobs[0].td.task, control=jobs[0].control, reps=[str(j.rep) for j in jobs])
        return orig_lc(jobs, cvs, cfg, device, reference)

    s = Store(store_path)
    tb.fit_logistic, tb._lookup_classify = fit, lookup_classify
    try:
        for task in tasks:
            cfg = ProbeConfig(task=(task,), bootstrap=0)
            td = gather_task(s, task, cfg)
            tb.fit_jobs(make_jobs([s], [td], cfg), cfg, torch.device("cpu"))
    finally:
        tb.fit_logistic, tb._lookup_classify = orig, orig_lc
    return calls


def fit_and_choose(c: dict, path: bool) -> tuple[float, int, np.ndarray, np.ndarray]:
    """CPU seconds, iterations, chosen strength per probe, val macro-F1 of the choice."""
    from codeclens.analyses.probes.linear import fit_logistic, logits_of, threads_for
    from codeclens.analyses.probes.torch_backend import _choose, _f1

    Z, T, Tv, cw = c["Z"], c["T"], c["Tv"], c["cw"]
    P, U, r = Z.shape
    C, G = T.shape[-1], len(c["l2"])
    with threads_for(P * G * U * max(C, 8)):
        t0 = time.process_time()
        fit = fit_logistic(lambda: iter([(Z, T)]), (lambda: iter([(Z, Tv)])) if Tv is not None else None, P, r, C,
                           cw, c["l2"], 0.0, c["max_iter"], c["patience"], path=path, stop_on_val=c["stop_on_val"])
        cpu = time.process_time() - t0
    with torch.no_grad():
        pred = logits_of(Z, fit.W, fit.b).argmax(-1)  # [P, G, U]
        Tvd = Tv.double()
        hit = Tvd[:, None].expand(P, G, U, C).gather(-1, pred[..., None]).squeeze(-1)
        zero = torch.zeros((P, G, C), dtype=torch.float64)
        tp = zero.clone().scatter_add_(2, pred, hit)
        predn = zero.scatter_add_(2, pred, Tvd.sum(-1)[:, None, :].expand(P, G, U).contiguous())
        f1 = _f1(tp, predn - tp, Tvd.sum(1)[:, None, :] - tp)
    choice = _choose(f1, G)
    return cpu, fit.iters, choice, f1.numpy()[np.arange(P), choice]


def recorded(store: Path | None, tasks: str, record, n_layers: int) -> list:
    """``record(store, tasks)``, on a small planted store in a temp dir when ``store`` is None."""
    with tempfile.TemporaryDirectory() as tmp:
        if store is None:
            from codeclens.analyses.probes.synthetic import planted_store

            store = planted_store(Path(tmp) / "s", n_utt=300, n_speakers=40, frames=(60, 120), n_layers=n_layers,
                                  codebook_size=256, dim=32, n_phones=20, noise=0.3, seed=0)
        return record(store, tuple(tasks.split(",")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="a store (default: a small planted store in a temp dir)")
    ap.add_argument("--task", default="phone,speaker")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    calls = recorded(a.store, a.task, record, n_layers=4)
    tot = {False: 0.0, True: 0.0}
    changed, worst = 0, 0.0
    print(f"{'fit':32s} {'old CPU s':>9s} {'path CPU s':>10s} {'iters old/path':>14s}  chosen l2 old -> path  (val macro-F1)")
    for c in calls:
        old, new = fit_and_choose(c, False), fit_and_choose(c, True)
        tot[False] += old[0]
        tot[True] += new[0]
        l2o, l2n = [c["l2"][g] for g in old[2]], [c["l2"][g] for g in new[2]]
        changed += sum(x != y for x, y in zip(l2o, l2n))
        worst = max(worst, float(np.abs(old[3] - new[3]).max()))
        name = f"{c['task']} {'control' if c['control'] else 'task'} {','.join(c['reps'])}"
        print(f"{name[:32]:32s} {old[0]:9.3f} {new[0]:10.3f} {old[1]:6d}/{new[1]:<7d}  {l2o} -> {l2n}  "
              f"({', '.join(f'{x:.4f}' for x in old[3])} -> {', '.join(f'{x:.4f}' for x in new[3])})")
    print(f"total CPU: old {tot[False]:.2f} s, path {tot[True]:.2f} s, ratio {tot[False] / max(tot[True], 1e-9):.1f}x; "
          f"{len(calls)} fits, chosen l2 changed for {changed} probes, max |val macro-F1 of the choice| change {worst:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
