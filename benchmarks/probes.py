"""Benchmark: 48 probes (2 codecs x 8 layers x 3 tasks) with codeclens vs scikit-learn one by one.

Two planted-but-realistic stores (8 layers x 256 codes, D=64, ~40 phones, 20
speakers, F0), written with ``write_store``: each codec's layers carry phone,
speaker or F0 in some layer, noisily. Both sides probe the same frames (train on
the train split, score on test) with the same objective (mean loss + l2 |W|^2):

- codeclens: ``run_probes`` (exact count-table fits, all layers of both codecs in
  one batched program per task);
- the usual approach: for each probe, materialise the frames' vectors, standardize,
  fit ``LogisticRegression(lbfgs)`` (C = 1 / (2 l2 N)) or ``LinearRegression``.

Also: whitening vs raw lbfgs on ``cumulative:8`` (a non-lookup representation), and
the full analysis (L2 grid, controls, lookup bounds, bootstrap CIs). Each side runs
in its own process, so peak RSS is per side.

    python benchmarks/probes.py            # ~60k frames per codec, D=64 (takes minutes: scikit-learn is slow)
    python benchmarks/probes.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

L2 = 1e-5
TASKS = ("phone", "speaker", "f0")


def make_stores(root: Path, n_utt: int, dim: int, condition: float = 1.0) -> list[Path]:
    from codeclens.analyses.probes.synthetic import planted_store

    common = dict(n_utt=n_utt, n_speakers=20, frames=(60, 100), n_layers=8, codebook_size=256, dim=dim,
                  n_phones=40, noise=0.4, spread=1.5, latent=None, condition=condition)
    return [
        planted_store(root / "codecA", carriers={"phone": 1, "speaker": 2, "f0": 3}, seed=0, name="codecA", **common),
        planted_store(root / "codecB", carriers={"phone": 2, "speaker": 1, "f0": 5}, seed=1, name="codecB", **common),
    ]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def side_ours(stores, q):
    from codeclens.analyses.probes import ProbeConfig, run_probes

    base = _rss_mb()
    cfg = ProbeConfig(task=TASKS, repr="layer:1-8", l2=(L2,), control="none", bootstrap=0, lookup=False)
    # Best of 3 (the first includes lazy imports and cold caches; the machine is shared).
    runs = []
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        df = run_probes(stores, cfg)
        runs.append((time.perf_counter() - t, time.process_time() - c))
    secs, cpu = min(runs)
    first = runs[0][0]
    rss_main = _rss_mb()
    full_cfg = ProbeConfig(task=TASKS, repr="layer:1-8")  # L2 grid of 4, code controls, lookup bounds, 1000 bootstraps
    t = time.perf_counter()
    full = run_probes(stores, full_cfg)
    full_secs = time.perf_counter() - t
    q.put({"secs": secs, "cpu": cpu, "first": first, "full_secs": full_secs, "rss": rss_main, "rss_full": _rss_mb(), "rss_base": base, "df": df,
           "full_probes": int(((full.probe == "linear") | (full.probe == "control")).sum() and
                              full[full.probe.isin(["linear", "control"])].groupby(
                                  ["store", "representation", "task", "probe"]).ngroups)})


def side_sklearn(stores, q):
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import f1_score, r2_score
    from sklearn.preprocessing import StandardScaler

    from codeclens.analyses.probes import ProbeConfig
    from codeclens.analyses.probes.data import gather_task
    from codeclens.store import Store

    base = _rss_mb()
    rows, not_converged = [], 0
    t, c = time.perf_counter(), time.process_time()
    for path in stores:
        s = Store(path)
        for task in TASKS:
            td = gather_task(s, task, ProbeConfig(task=(task,), l2=(L2,)))
            tr, te = td.rows["train"], td.rows["test"]
            for k in range(1, 9):
                sc = StandardScaler()
                Xtr = sc.fit_transform(s.materialize(f"layer:{k}", tr))
                Xte = sc.transform(s.materialize(f"layer:{k}", te))
                if td.categorical:
                    m = LogisticRegression(C=1.0 / (2 * L2 * len(tr)))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        m.fit(Xtr, td.y["train"])
                    not_converged += int(m.n_iter_.max() >= m.max_iter)
                    v = f1_score(td.y["test"], m.predict(Xte), average="macro")
                else:
                    v = r2_score(td.y["test"], LinearRegression().fit(Xtr, td.y["train"]).predict(Xte))
                rows.append((s.name, f"layer:{k}", task, v, len(tr), len(te)))
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    q.put({"secs": secs, "cpu": cpu, "rss": _rss_mb(), "rss_base": base, "rows": rows, "not_converged": not_converged})


def side_whitening(store, q):
    """cumulative:8 phone probe on a store with correlated, unevenly scaled features (condition
    number 1000): lbfgs on standardized vs PCA-whitened features, and codeclens."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from codeclens.analyses.probes import ProbeConfig, run_probes
    from codeclens.analyses.probes.data import gather_task, streamed_whitener
    from codeclens.store import Store

    s = Store(store)
    td = gather_task(s, "phone", ProbeConfig(l2=(L2,)))
    tr, te = td.rows["train"], td.rows["test"]
    Xtr, Xte = s.materialize("cumulative:8", tr), s.materialize("cumulative:8", te)
    out = {}
    sc = StandardScaler().fit(Xtr)
    wh = streamed_whitener(iter([Xtr]))
    for name, (a, b) in {"raw (standardized)": (sc.transform(Xtr), sc.transform(Xte)),
                         "PCA-whitened": (wh.transform(Xtr), wh.transform(Xte))}.items():
        m = LogisticRegression(C=1.0 / (2 * L2 * len(tr)), max_iter=2000, tol=1e-6)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(a, td.y["train"])
        out[f"sklearn lbfgs, {name}"] = (time.perf_counter() - t, int(m.n_iter_.max()),
                                         f1_score(td.y["test"], m.predict(b), average="macro"))
    t = time.perf_counter()
    df = run_probes([s], ProbeConfig(task=("phone",), repr="cumulative:8", l2=(L2,), control="none", bootstrap=0,
                                     max_iter=2000))
    f1 = float(df[(df.probe == "linear") & (df.metric == "macro_f1")]["value"].iloc[0])
    out["codeclens (whitened, torch L-BFGS; incl. whitening)"] = (time.perf_counter() - t, -1, f1)
    q.put({"rows": out, "n_train": len(tr), "n_test": len(te)})


def in_child(fn, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utterances", type=int, default=750, help="per codec (~80 frames each)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="120 utterances, dim 32")
    args = ap.parse_args()
    n_utt, dim = (120, 32) if args.quick else (args.utterances, args.dim)
    with tempfile.TemporaryDirectory() as tmp:
        stores = [str(p) for p in make_stores(Path(tmp), n_utt, dim)]
        from codeclens.store import Store

        n_frames = [Store(p).n_frames for p in stores]
        print(f"machine: nproc={os.cpu_count()}; stores: 2 codecs x 8 layers x 256 codes, D={dim}, "
              f"{n_frames[0]} + {n_frames[1]} frames, 40 phones, 20 speakers")
        ours = in_child(side_ours, stores)
        sk = in_child(side_sklearn, stores)
        aniso = make_stores(Path(tmp) / "aniso", max(n_utt // 4, 60), dim, condition=1000.0)[0]
        wh = in_child(side_whitening, str(aniso))

    df = ours["df"]
    pm = {"phone": "macro_f1", "speaker": "macro_f1", "f0": "r2"}
    diffs = {"macro_f1": [], "r2": []}
    frames_used = {}
    print("\nper-probe score (test): codeclens vs scikit-learn")
    print(f"{'store':8s} {'task':8s} " + " ".join(f"{'L' + str(k):>13s}" for k in range(1, 9)))
    table = {}
    for store, rep, task, v, ntr, nte in sk["rows"]:
        m = pm[task]
        o = df[(df.store == store) & (df.representation == rep) & (df.task == task) & (df.metric == m)]
        ov = float(o["value"].iloc[0])
        diffs[m].append(ov - v)
        frames_used[(store, task)] = (ntr, nte)
        table.setdefault((store, task), []).append(f"{ov:.3f}/{v:.3f}")
    for (store, task), cells in table.items():
        print(f"{store:8s} {task:8s} " + " ".join(f"{c:>13s}" for c in cells))
    n_probes = len(sk["rows"])
    print(f"\n{n_probes} probes; frames (train/test) per task: "
          + ", ".join(f"{s} {t} {a}/{b}" for (s, t), (a, b) in frames_used.items()))
    print(f"codeclens   : {ours['secs']:8.2f} s wall (best of 3; first {ours['first']:.2f} s), {ours['cpu']:8.2f} s CPU, "
          f"peak RSS {ours['rss']:.0f} MB (after imports {ours['rss_base']:.0f} MB)")
    print(f"scikit-learn: {sk['secs']:8.2f} s wall, {sk['cpu']:8.2f} s CPU, peak RSS {sk['rss']:.0f} MB "
          f"(after imports {sk['rss_base']:.0f} MB); {sk['not_converged']} of 32 logistic fits hit max_iter=100")
    print(f"speed-up    : {sk['secs'] / ours['secs']:.1f}x wall ({sk['secs'] / ours['first']:.1f}x vs the first run), "
          f"{sk['cpu'] / ours['cpu']:.1f}x CPU")
    for m, d in diffs.items():
        d = np.abs(d)
        print(f"|delta {m}|: mean {d.mean():.4f}, max {d.max():.4f} (codeclens - scikit-learn)")
    print(f"full analysis (4 L2 values x {ours['full_probes']} probes incl. code controls, lookup bounds, "
          f"1000 bootstrap CIs): {ours['full_secs']:.2f} s, peak RSS {ours['rss_full']:.0f} MB")
    print(f"\nwhitening vs raw lbfgs, phone on cumulative:8 of codecA with features mixed to condition number 1000 "
          f"({wh['n_train']} train / {wh['n_test']} test frames):")
    for name, (secs, it, f1) in wh["rows"].items():
        its = f"{it:4d} iterations" if it >= 0 else " " * 15
        print(f"  {name:55s} {secs:7.2f} s  {its}  macro-F1 {f1:.3f}")


if __name__ == "__main__":
    main()
