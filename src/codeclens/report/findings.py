"""The answer first: what each layer of each codec encodes, from every analysis that says so.

Each analysis kind that can speak to "layer k of codec c carries attribute a"
registers a *finder* here: a pure function from its result directory to
:class:`Finding` rows. Findings from all analyses of a run are pooled; for
each (codec, layer, attribute) cell the best-supported one is shown (a probe
score with an interval over a corrected association over a plug-in MI), with
the rest in the cell's tooltip. Random-weight controls keep their own columns,
marked as controls, so a reader compares a trained codec against them rather
than against zero.

Adding an analysis to the view is adding a finder (``@finder("kind")``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

FINDERS: dict[str, Callable[[Path, str], list["Finding"]]] = {}
"""Analysis kind -> finder(result dir, entry name) -> findings."""


def finder(kind: str):
    def deco(fn):
        FINDERS[kind] = fn
        return fn

    return deco


@dataclasses.dataclass(frozen=True)
class Finding:
    """One measured claim "layer ``layer`` of ``codec`` carries ``attribute``"."""

    codec: str
    """Display name of the store's codec (as in the analysis tables)."""
    spec: str
    """Codec spec of the store (random-weight controls are recognised from it)."""
    layer: int
    """1-based RVQ layer."""
    attribute: str
    """What is carried: the probe task or label (phone, speaker, f0, accent, units, ...)."""
    measure: str
    """Short name of the measure (``macro-F1``, ``R²``, ``PNMI``, ``MI bits``)."""
    value: float
    lo: float
    """Interval ends (NaN when the measure has none)."""
    hi: float
    baseline: float
    """The bar to clear: the higher chance level, the shuffled-label null, or 0."""
    above: bool | None
    """Whether the value clears its baseline (the interval's lower end, when there is one);
    None when undecidable."""
    strength: float
    """0..1: how far from baseline to ceiling (colour of the cell)."""
    source: str
    """Study entry name of the analysis (the report section that holds the evidence)."""
    rank: int
    """Which measure a cell shows when several speak to it (lower wins)."""


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x))) if math.isfinite(x) else 0.0


def _read(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


@finder("probes")
def probe_findings(out: Path, source: str) -> list[Finding]:
    """Linear probes on ``layer:k``: macro-F1 (categorical) or R² (continuous) with their interval,
    against the higher of the majority and uniform-guess chance."""
    df = _read(out / "probes.csv")
    if df is None or df.empty:
        return []
    d = df[(df["probe"] == "linear") & (df["kind"] == "layer")]
    rows = []
    for (store, task), g in d.groupby(["store", "task"], sort=False):
        metrics = set(g["metric"])
        metric = "macro_f1" if "macro_f1" in metrics else ("r2" if "r2" in metrics else None)
        if metric is None:
            continue
        for _, r in g[g["metric"] == metric].iterrows():
            v, lo, hi = _num(r["value"]), _num(r.get("ci_low")), _num(r.get("ci_high"))
            if metric == "macro_f1":
                chance = _num(r.get("chance"))
                if not math.isfinite(chance):
                    chance = np.nanmax([_num(r.get("chance_majority")), _num(r.get("chance_uniform")), 0.0])
                top = 1.0
            else:
                chance, top = 0.0, 1.0
            gate = lo if math.isfinite(lo) else v
            above = None if not math.isfinite(gate) else bool(gate > chance)
            rows.append(Finding(str(store), str(r.get("codec", "")), int(r["layer"]), str(task),
                                "macro-F1" if metric == "macro_f1" else "R²", v, lo, hi, float(chance), above,
                                _clip01((v - chance) / max(top - chance, 1e-9)), source, 0))
    return rows


@finder("tokens")
def token_findings(out: Path, source: str) -> list[Finding]:
    """PNMI of layer-k codes with a label: the chance-corrected value (raw against its
    shuffled-label null) where the analysis gives it."""
    df = _read(out / "token_metrics.csv")
    if df is None or df.empty:
        return []
    col = next((c for c in ("pnmi_corrected", "pnmi", "pnmi_raw") if c in df.columns), None)
    if col is None:
        return []
    rows = []
    for _, r in df.iterrows():
        v = _num(r[col])
        if "above_null" in df.columns:
            above = None if not math.isfinite(v) else bool(r["above_null"])
        else:
            above = None if not math.isfinite(v) else bool(v > 0.01)
        rows.append(Finding(str(r["store"]), str(r.get("codec", "")), int(r["layer"]), str(r["label"]),
                            "PNMI (corrected)" if col == "pnmi_corrected" else "PNMI", v, float("nan"), float("nan"),
                            0.0, above, _clip01(v), source, 1))
    return rows


@finder("mi")
def mi_findings(out: Path, source: str) -> list[Finding]:
    """Plug-in MI (Miller–Madow) against its shuffled-label null, as a fraction of H(target)."""
    df = _read(out / "mi_discrete.csv")
    if df is None or df.empty:
        return []
    rows = []
    for _, r in df.iterrows():
        v = _num(r.get("mi_mm_bits"))
        null = _num(r.get("shuffle_mm_mean_bits"))
        sd = _num(r.get("shuffle_mm_sd_bits"))
        h = _num(r.get("h_target_bits"))
        bar = (null if math.isfinite(null) else 0.0) + 3 * (sd if math.isfinite(sd) else 0.0)
        above = bool(r["above_null"]) if "above_null" in df.columns and math.isfinite(v) else (
            None if not math.isfinite(v) else bool(v > bar))
        rows.append(Finding(str(r["store"]), "", int(r["layer"]), str(r["target"]), "MI bits", v,
                            float("nan"), float("nan"), float(bar), above,
                            _clip01(v / h) if math.isfinite(h) and h > 0 else 0.0, source, 2))
    return rows


CAUSAL_ATTRIBUTES = {"speaker": "speaker", "f0_kept": "f0", "voicing": "voiced", "loudness": "loudness",
                     "stoi": "intelligibility"}


@finder("causal")
def causal_findings(out: Path, source: str) -> list[Finding]:
    """Decoder Shapley values (absent = drop): the layer's causal share of each measure, with its
    interval; "above" when the interval excludes 0 (a layer can push a measure down as well as up)."""
    df = _read(out / "decoder_shapley.csv")
    if df is None or df.empty:
        return []
    d = df[df["absent"] == ("drop" if "drop" in set(df["absent"]) else df["absent"].iloc[0])]
    rows = []
    for (store, measure), g in d.groupby(["store", "measure"], sort=False):
        top = float(np.nanmax(np.abs(g["value"].to_numpy(float)))) or 1.0
        for _, r in g.iterrows():
            v, lo, hi = _num(r["value"]), _num(r["ci_low"]), _num(r["ci_high"])
            # a layer causes the measure either way: its interval excludes 0 on either side
            rows.append(Finding(str(store), "", int(r["layer"]), CAUSAL_ATTRIBUTES.get(str(measure), str(measure)),
                                f"Shapley ({measure})", v, lo, hi, 0.0,
                                None if not math.isfinite(lo) else bool(lo > 0 or hi < 0), _clip01(abs(v) / top),
                                source, 3))
    return rows


def is_control(spec: str, codec: str, controls: set[str]) -> bool:
    return codec in controls or "random_init=1" in spec or "random_init=true" in spec.lower()


def collect(run: dict[str, Any], root: Path) -> list[Finding]:
    """Every finding of a run's finished analysis steps."""
    kinds = {a["name"]: a["kind"] for a in run["study"]["analyses"]}
    out: list[Finding] = []
    for s in run["steps"]:
        if s["kind"] != "analysis" or s.get("status") != "done":
            continue
        fn = FINDERS.get(kinds.get(s["group"], ""))
        if fn is None:
            continue
        try:
            out.extend(fn(root / s["out"], s["group"]))
        except (KeyError, ValueError, TypeError):
            continue  # a result table of another version: no findings rather than no report
    return out


def control_names(run: dict[str, Any]) -> set[str]:
    names = set()
    for c in run["study"]["codecs"]:
        if c.get("control") or "random_init=1" in c.get("spec", ""):
            names.update({c["name"], c.get("label") or c["name"]})
    return names


def codec_order(run: dict[str, Any], found: Iterable[Finding]) -> list[str]:
    """Codecs in study order (trained first, then controls), then any others the tables name."""
    ctrl = control_names(run)
    labels = [c.get("label") or c["name"] for c in run["study"]["codecs"]]
    seen = {f.codec for f in found}
    ordered = [l for l in labels if l in seen and l not in ctrl] + [l for l in labels if l in seen and l in ctrl]
    return ordered + sorted(seen - set(ordered))


def best_cells(found: list[Finding]) -> dict[tuple[str, int, str], list[Finding]]:
    """(codec, layer, attribute) -> its findings, best-supported first."""
    cells: dict[tuple[str, int, str], list[Finding]] = {}
    for f in found:
        cells.setdefault((f.codec, f.layer, f.attribute), []).append(f)
    for k in cells:
        cells[k].sort(key=lambda f: (f.rank, -(f.value if math.isfinite(f.value) else -1e9)))
    return cells


def headlines(found: list[Finding], codecs: list[str], controls: set[str]) -> list[tuple[str, str]]:
    """One line per (codec, attribute): where it is best decoded, or that no layer clears chance.
    Returns (text, evidence section) pairs."""
    lines = []
    cells = best_cells(found)
    for codec in codecs:
        attrs = list(dict.fromkeys(a for (c, _, a) in cells if c == codec))
        for a in attrs:
            top = [v[0] for (c, _, aa), v in cells.items() if c == codec and aa == a]
            if not top:
                continue
            best = max(top, key=lambda f: f.value if math.isfinite(f.value) else -1e9)
            ok = [f for f in top if f.above]
            tag = " (random-weight control)" if is_control(best.spec, codec, controls) else ""
            if not ok:
                lines.append((f"{codec}{tag}: {a}: no layer above its baseline ({best.measure}; best layer "
                              f"{best.layer}: {fmt_value(best)}).", best.source))
                continue
            ok_layers = sorted(f.layer for f in ok)
            lines.append((f"{codec}{tag}: {a} is carried best by layer {best.layer} ({best.measure} "
                          f"{fmt_value(best)}, baseline {fmt(best.baseline, best)}); above baseline in "
                          f"{_ranges(ok_layers)} of {len(top)}.", best.source))
    return lines


def _ranges(layers: list[int]) -> str:
    if not layers:
        return "none"
    parts, a, b = [], layers[0], layers[0]
    for x in layers[1:]:
        if x == b + 1:
            b = x
            continue
        parts.append(f"{a}" if a == b else f"{a}–{b}")
        a = b = x
    parts.append(f"{a}" if a == b else f"{a}–{b}")
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(parts)


def _decimals(f: Finding) -> int:
    from .tables import decimals_for

    d = decimals_for(f.lo, f.hi)
    return 3 if d is None else d


def fmt(x: float, f: Finding) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{_decimals(f)}f}"


def fmt_value(f: Finding) -> str:
    if math.isfinite(f.lo) and math.isfinite(f.hi):
        return f"{fmt(f.value, f)} [{fmt(f.lo, f)}, {fmt(f.hi, f)}]"
    return fmt(f.value, f)


def findings_table(found: list[Finding]) -> pd.DataFrame:
    """Every finding as a tidy table (written beside the report as findings.csv)."""
    if not found:
        return pd.DataFrame(columns=[f.name for f in dataclasses.fields(Finding)])
    return pd.DataFrame([dataclasses.asdict(f) for f in found])


def load_run(root: str | Path) -> dict[str, Any]:
    return json.loads((Path(root) / "run.json").read_text())
