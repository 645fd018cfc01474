"""The per-layer table a paper needs, from a run's probe results (``codeclens table``).

One row per (codec, task, layer): the score with its interval, the bar it must
clear (the higher of majority and uniform-guess chance), the control task's
score and selectivity, and the published number where the published setting
is the same one (codec variant, corpus, task definition); otherwise the
``published`` cell stays empty and ``note`` says why. Written as CSV (every
digit), Markdown and LaTeX (digits decided by the interval).
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CodeclensError
from .tables import decimals_for

COLUMNS = ["codec", "control", "task", "metric", "layer", "value", "ci_low", "ci_high", "chance",
           "control_task", "published", "note"]

_DENN_CODECS = {"encodec": "encodec", "speechtokenizer": "st"}
_DENN_TASKS = {"phone": "phone", "speaker": "spk"}
_DENN_METRICS = {"macro_f1": "f1", "accuracy": "acc"}
DENN_SOURCE = "Denn & Aralikatti 2026, per-layer linear probes (EnCodec 6 kbps, SpeechTokenizer; LibriSpeech train-clean-100)"


def _denn() -> pd.DataFrame:
    with resources.files("codeclens").joinpath("data/reference/denn2026_probes.csv").open() as f:
        return pd.read_csv(f)


def published_match(spec: str, corpus_spec: str, task: str, metric: str) -> tuple[str | None, str]:
    """(column of the published table, note) for a probe setting; column None when it differs."""
    kind = spec.split(":", 1)[0].split("?", 1)[0]
    if kind not in _DENN_CODECS:
        return None, "no published per-layer numbers for this codec"
    if "random_init" in spec:
        return None, "random-weight control: no published counterpart"
    if kind == "encodec" and "6kbps" not in spec.replace(" ", ""):
        return None, "published: EnCodec 6 kbps only"
    if "train-clean-100" not in corpus_spec:
        return None, "published on LibriSpeech train-clean-100; this corpus differs"
    if task not in _DENN_TASKS:
        return None, "published pitch was regressed on all frames (no voicing decision): not comparable"
    if metric not in _DENN_METRICS:
        return None, f"no published {metric}"
    return f"{_DENN_CODECS[kind]}_{_DENN_TASKS[task]}_{_DENN_METRICS[metric]}", DENN_SOURCE


def _probe_dirs(run_dir: Path) -> list[tuple[Path, dict[str, str]]]:
    """(probe result dir, store label -> corpus spec) for a run directory or one probes directory."""
    if (run_dir / "probes.csv").is_file():
        return [(run_dir, _corpora_of_analysis(run_dir))]
    from .runrecord import read_run

    run = read_run(run_dir, "neither a study run (run.json) nor a probes result (probes.csv)")
    out = []
    for s, adir in run.analysis_steps("probes"):
        if (adir / "probes.csv").is_file():
            corpus = s["id"].split(":", 1)[-1].split("/", 1)[0]
            out.append((adir, {"*": run.corpora.get(corpus, "")}))
    if not out:
        raise CodeclensError(f"{run_dir}: the run has no finished probes analysis")
    return out


def _corpora_of_analysis(adir: Path) -> dict[str, str]:
    """Store label -> corpus spec, read from the stores named in the analysis' config.json."""
    found: dict[str, str] = {}
    try:
        cfg = json.loads((adir / "config.json").read_text())
    except (OSError, ValueError):
        return found
    for sp in cfg.get("stores", []):
        try:
            m = json.loads((Path(sp) / "manifest.json").read_text())
        except (OSError, ValueError, TypeError):
            continue
        found[m.get("name") or Path(sp).name] = (m.get("corpus") or {}).get("spec", "")
    return found


def paper_table(run_dir: str | Path, metric: str | None = None) -> pd.DataFrame:
    """Per-layer rows for every probes result of a run (see the module docstring)."""
    run_dir = Path(run_dir)
    denn = _denn().set_index("layer")
    rows: list[dict[str, Any]] = []
    for adir, corpora in _probe_dirs(run_dir):
        df = pd.read_csv(adir / "probes.csv")
        d = df[df["kind"] == "layer"]
        for (store, task), g in d.groupby(["store", "task"], sort=False):
            metrics = set(g["metric"])
            m = metric or ("macro_f1" if "macro_f1" in metrics else "r2")
            if m not in metrics:
                continue
            lin = g[(g["probe"] == "linear") & (g["metric"] == m)]
            ctl = g[(g["probe"] == "control") & (g["metric"] == m)].set_index("layer")["value"]
            for _, r in lin.sort_values("layer").iterrows():
                spec = str(r.get("codec", ""))
                corpus = corpora.get(str(store), corpora.get("*", ""))
                col, note = published_match(spec, corpus, str(task), m)
                layer = int(r["layer"])
                pub = float(denn.loc[layer, col]) if col and layer in denn.index else float("nan")
                if col and not math.isfinite(pub):
                    note = "no published value for this layer"
                chance = float(r["chance"]) if "chance" in r.index and np.isfinite(r["chance"]) else (
                    np.nanmax([float(r.get("chance_majority", np.nan)), float(r.get("chance_uniform", np.nan))])
                    if m in ("macro_f1", "accuracy") else 0.0)
                rows.append({"codec": store, "control": "random_init" in spec, "task": task, "metric": m,
                             "layer": layer, "value": float(r["value"]), "ci_low": float(r["ci_low"]),
                             "ci_high": float(r["ci_high"]), "chance": float(chance),
                             "control_task": float(ctl.get(layer, np.nan)), "published": pub, "note": note})
    return pd.DataFrame(rows, columns=COLUMNS)


def _fmt(v: Any, d: int | None) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return ""
        return f"{v:.{3 if d is None else d}f}"
    return str(v)


def display_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and text rows: value and interval merged, digits from the interval."""
    head = ["codec", "task", "metric", "layer", "score [95% CI]", "chance", "control task", "published", "note"]
    rows = []
    for _, r in df.iterrows():
        d = decimals_for(r["ci_low"], r["ci_high"])
        codec = f"{r['codec']} (control)" if r["control"] else str(r["codec"])
        score = f"{_fmt(r['value'], d)} [{_fmt(r['ci_low'], d)}, {_fmt(r['ci_high'], d)}]"
        rows.append([codec, str(r["task"]), str(r["metric"]), str(r["layer"]), score, _fmt(r["chance"], d),
                     _fmt(r["control_task"], d), _fmt(r["published"], 3), str(r["note"])])
    return head, rows


def to_markdown(df: pd.DataFrame) -> str:
    head, rows = display_rows(df)
    cell = lambda s: s.replace("|", "\\|")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def to_latex(df: pd.DataFrame, caption: str = "Per-layer linear probes.") -> str:
    head, rows = display_rows(df)
    head, rows = head[:-1], [r[:-1] for r in rows]  # notes go in the CSV and Markdown, not a paper column
    spec = "lllr" + "l" * (len(head) - 4)
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(tex_escape(h) for h in head) + r" \\", r"\midrule"]
    out += [" & ".join(tex_escape(c) for c in r) + r" \\" for r in rows]
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex_escape(caption)}}}", r"\end{table}"]
    return "\n".join(out) + "\n"


def write_tables(df: pd.DataFrame, out: Path, formats: tuple[str, ...] = ("csv", "md", "tex")) -> list[Path]:
    from ..util.atomic import atomic_path, write_text

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if "csv" in formats:
        with atomic_path(out / "paper_table.csv", ".csv") as tmp:
            df.to_csv(tmp, index=False)
        paths.append(out / "paper_table.csv")
    if "md" in formats:
        write_text(out / "paper_table.md", to_markdown(df))
        paths.append(out / "paper_table.md")
    if "tex" in formats:
        write_text(out / "paper_table.tex", to_latex(df))
        paths.append(out / "paper_table.tex")
    return paths
