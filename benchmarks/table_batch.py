"""Benchmark: a task's ``layer:k`` count-table fits in one batched program against one program per layer.

The problems are those of a default ``codeclens probe`` run (every layer, phone and speaker, task probes
and code controls): ``tables.run_store`` runs once with ``fit_table_classify`` wrapped to record its
inputs. Each recorded set is then fitted by ``tables._fit_tables`` twice in this process, as the run
does: batched (``BATCH_ELEMENTS``, the default) and one problem per program (the code before). Printed
per set: CPU seconds of each, the ratio, and whether every probe chose the same L2 and predicts the same
class for every vector (it must: the problems are independent within a program).

    python benchmarks/table_batch.py --store /work/stores/planted_4M   # the fits do not depend on frames
    python benchmarks/table_batch.py                                    # a small planted store in a temp dir
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def record(store_path: Path, tasks: tuple[str, ...]) -> list[tuple]:
    """(task, probs, C, Call, cfg) of every batched fit of the default run of ``tasks``."""
    from codeclens.analyses.probes import ProbeConfig
    from codeclens.analyses.probes import tables as T
    from codeclens.store import Store

    calls, real = [], T._fit_tables
    s = Store(store_path)
    for task in tasks:
        cfg = ProbeConfig(task=(task,), bootstrap=0)

        def spy(probs, C, Call, cfg, device, bar, task=task):
            calls.append((task, probs, C, Call, cfg))
            return real(probs, C, Call, cfg, device, bar)

        T._fit_tables = spy
        try:
            T.run_store(s, task, cfg, 0, {id(s): s.path.name})
        finally:
            T._fit_tables = real
    return calls


def timed(probs, C, Call, cfg, batch: int):
    from codeclens.analyses.probes import tables as T

    old = T.BATCH_ELEMENTS
    T.BATCH_ELEMENTS = batch
    try:
        t0, w0 = time.process_time(), time.perf_counter()
        fits = T._fit_tables(probs, C, Call, cfg, torch.device("cpu"), None)
        return time.process_time() - t0, time.perf_counter() - w0, fits
    finally:
        T.BATCH_ELEMENTS = old


def main(argv=None) -> int:
    from codeclens.analyses.probes import tables as T

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="a store (default: a small planted store in a temp dir)")
    ap.add_argument("--task", default="phone,speaker")
    a = ap.parse_args(argv)
    from table_fits import recorded

    calls = recorded(a.store, a.task, record, n_layers=8)
    tot = np.zeros(4)
    same = True
    print(f"{'fits':24s} {'problems':>8s} {'one each: CPU / wall s':>22s} {'batched: CPU / wall s':>21s} "
          f"{'wall ratio':>10s}  same L2  vectors of another class")
    for task, probs, C, Call, cfg in calls:
        if not probs:
            continue
        c1, w1, one = timed(probs, C, Call, cfg, 1)
        cb, wb, bat = timed(probs, C, Call, cfg, T.BATCH_ELEMENTS)
        l2 = all(x.l2 == y.l2 for x, y in zip(one, bat))
        moved = sum(int((x.pred_test != y.pred_test).sum()) for x, y in zip(one, bat))
        n_vec = sum(len(x.pred_test) for x in one)
        same &= l2
        tot += (c1, w1, cb, wb)
        kind = "controls" if probs[0].control else "task probes"
        print(f"{task + ' ' + kind:24s} {len(probs):8d} {c1:13.2f} / {w1:5.2f} {cb:12.2f} / {wb:5.2f} "
              f"{w1 / max(wb, 1e-9):9.2f}x  {str(l2):7s}  {moved} of {n_vec}")
    print(f"total: one per program {tot[0]:.2f} s CPU / {tot[1]:.2f} s wall, batched {tot[2]:.2f} s CPU / "
          f"{tot[3]:.2f} s wall (wall ratio {tot[1] / max(tot[3], 1e-9):.2f}x); every L2 choice the same: {same}")
    # Batched programs over SMALL_WORK run torch's intra-op threads (one-problem programs one thread):
    # CPU then counts both cores. Classes can differ where float32 rounding decides a near-tie.
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
