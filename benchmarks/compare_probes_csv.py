"""Compare two probes.csv files (before / after a change to the probe fits), row by row.

    python benchmarks/compare_probes_csv.py BEFORE/probes.csv AFTER/probes.csv [--task-tol 0.002 --control-tol 0.01]

Rows are matched on (store, representation, task, probe, metric). Reported per probe kind
(linear = task probes, control, selectivity, lookup): the largest |difference| of the value and
of the CI bounds, and every row whose chosen L2 changed. Exit status 1 when a task probe's
accuracy / macro-F1 moved by more than --task-tol or a control's by more than --control-tol.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

KEY = ["store", "representation", "task", "probe", "metric"]


def compare(before: pd.DataFrame, after: pd.DataFrame, task_tol: float, control_tol: float) -> tuple[str, bool]:
    m = before.merge(after, on=KEY, suffixes=("_b", "_a"), how="outer", indicator=True)
    lines, ok = [], True
    missing = m[m["_merge"] != "both"]
    if len(missing):
        ok = False
        lines.append(f"{len(missing)} rows in only one file:\n{missing[KEY + ['_merge']].to_string(index=False)}")
    m = m[m["_merge"] == "both"]
    for kind, g in m.groupby("probe"):
        d = (g["value_a"] - g["value_b"]).abs()
        ci = np.nanmax(np.abs(np.r_[g["ci_low_a"] - g["ci_low_b"], g["ci_high_a"] - g["ci_high_b"]])) if len(g) else 0
        worst = g.loc[d.idxmax()] if d.notna().any() else None
        where = f" ({worst['representation']} {worst['task']} {worst['metric']})" if worst is not None else ""
        lines.append(f"{kind:12s} rows {len(g):4d}  max |d value| {np.nanmax(d):.2e}{where}  max |d CI bound| {ci:.2e}")
        tol = task_tol if kind == "linear" else control_tol if kind == "control" else None
        if tol is not None:
            cls = g[g["metric"].isin(["accuracy", "macro_f1"])]
            bad = cls[(cls["value_a"] - cls["value_b"]).abs() > tol]
            if len(bad):
                ok = False
                lines.append(f"  over {tol}:\n{bad[KEY + ['value_b', 'value_a']].to_string(index=False)}")
    l2 = m[m["l2_b"].notna() | m["l2_a"].notna()]
    changed = l2[~np.isclose(l2["l2_b"].astype(float), l2["l2_a"].astype(float), equal_nan=True)]
    changed = changed.drop_duplicates(["store", "representation", "task", "probe"])
    lines.append(f"chosen L2 changed for {len(changed)} probes" + (":" if len(changed) else ""))
    for _, r in changed.iterrows():
        same = m[(m["representation"] == r["representation"]) & (m["task"] == r["task"]) & (m["probe"] == r["probe"])]
        vals = "; ".join(f"{x['metric']} {x['value_b']:.4f} -> {x['value_a']:.4f}" for _, x in same.iterrows())
        lines.append(f"  {r['representation']} {r['task']} {r['probe']}: {r['l2_b']:g} -> {r['l2_a']:g} ({vals})")
    return "\n".join(lines), ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--task-tol", type=float, default=0.002)
    ap.add_argument("--control-tol", type=float, default=0.01)
    a = ap.parse_args(argv)
    text, ok = compare(pd.read_csv(a.before), pd.read_csv(a.after), a.task_tol, a.control_tol)
    print(text)
    print("within tolerance" if ok else "OUT OF TOLERANCE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
