"""A static HTML feature browser for one SAE.

Per latent: activation density, the rows (utterances or frames) that activate it
most with players for their audio (media fragments ``#t=start,end`` cut the clip
out of the utterance file), and the label histogram of all rows where it fires
against the base rate. Every string that comes from data is escaped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...util.atomic import write_text

CSS = """
body{font:14px system-ui,sans-serif;margin:1.5em;max-width:1100px}
table{border-collapse:collapse;margin:.3em 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
.lat{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;margin:1em 0}
.bar{display:inline-block;height:10px;background:#4878a8}.base{display:inline-block;height:10px;background:#bbb}
.meta td{border:none}audio{height:28px;vertical-align:middle}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _audio_src(path: str, start: float | None, end: float | None) -> str | None:
    if not path:
        return None
    p = Path(path)
    try:
        uri = p.resolve().as_uri() if p.is_absolute() or p.exists() else str(path)
    except (OSError, ValueError):
        uri = str(path)
    if start is not None and end is not None and np.isfinite(start) and np.isfinite(end):
        uri += f"#t={max(start, 0.0):.3f},{end:.3f}"
    return uri


def _row_cells(r: pd.Series, value: float) -> str:
    src = _audio_src(str(r.get("path", "") or ""), r.get("clip_start"), r.get("clip_end"))
    audio = f'<audio controls preload="none" src="{_e(src)}"></audio>' if src else "—"
    where = _e(r["id"]) + (f" @ {float(r['time']):.2f}s" if "time" in r and pd.notna(r.get("time")) else "")
    return (f"<tr><td>{value:.3g}</td><td>{where}</td><td>{_e(r.get('speaker', ''))}</td>"
            f"<td>{_e(r.get('label', ''))}</td><td>{audio}</td></tr>")


def _histogram(labels: np.ndarray, base: dict[str, float]) -> str:
    vals, counts = np.unique(labels.astype(str), return_counts=True)
    frac = counts / max(counts.sum(), 1)
    order = np.argsort(-frac)[:8]
    rows = []
    for i in order:
        b = base.get(vals[i], 0.0)
        rows.append(
            f"<tr><td>{_e(vals[i])}</td><td>{counts[i]}</td><td><span class=bar style='width:{150 * frac[i]:.0f}px'>"
            f"</span> {100 * frac[i]:.0f}%</td><td><span class=base style='width:{150 * b:.0f}px'></span> "
            f"{100 * b:.0f}%</td></tr>"
        )
    return ("<table><tr><th>label</th><th>n active</th><th>share when active</th><th>base rate</th></tr>"
            + "".join(rows) + "</table>")


def render(
    title: str, meta: dict[str, Any], z: np.ndarray, rows: pd.DataFrame, n_latents: int = 64, top: int = 8,
    first: Sequence[int] = (),
) -> str:
    """HTML for one SAE. ``z [n, d_z]`` codes of ``rows`` (columns id, speaker, label, path,
    clip_start, clip_end and, for frames, time). ``first``: latents listed before the densest
    ones (the label's classifier picks them), marked as such."""
    z = np.asarray(z)
    act = z > 0
    dens = act.mean(0) if len(z) else np.zeros(z.shape[1])
    labels = rows["label"].astype(str).to_numpy()
    vals, counts = np.unique(labels, return_counts=True)
    base = dict(zip(vals, counts / max(counts.sum(), 1)))
    alive = np.flatnonzero(dens > 0)
    first = [int(j) for j in first if 0 <= int(j) < z.shape[1] and dens[int(j)] > 0]
    rest = [int(j) for j in alive[np.argsort(-dens[alive], kind="stable")] if int(j) not in set(first)]
    chosen = (first + rest)[: max(n_latents, len(first))]
    head = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in meta.items())
    dens_hist = np.histogram(np.log10(dens[alive]) if len(alive) else [], bins=10)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1><table class=meta>{head}</table>",
        f"<p>{len(alive)} of {z.shape[1]} latents fire on these {len(z)} rows "
        f"({100 * (1 - len(alive) / max(z.shape[1], 1)):.1f}% dead). Showing {len(chosen)}: first the "
        f"{len(first)} latents the label classifier weights most, then the densest.</p>",
        "<p>log10 density histogram: " + ", ".join(
            f"[{a:.2f},{b:.2f}): {c}" for a, b, c in zip(dens_hist[1][:-1], dens_hist[1][1:], dens_hist[0])) + "</p>",
    ]
    for j in chosen:
        on = np.flatnonzero(act[:, j])
        best = on[np.argsort(-z[on, j], kind="stable")][:top]
        parts.append(
            f"<div class=lat id='latent-{j}'><h3>latent {j}{' (label latent)' if j in first else ''}</h3>"
            f"<p>density {dens[j]:.4f} "
            f"({len(on)} rows), mean activation {z[on, j].mean():.3g}</p>"
            + _histogram(labels[on], base)
            + "<table><tr><th>activation</th><th>row</th><th>speaker</th><th>label</th><th>audio</th></tr>"
            + "".join(_row_cells(rows.iloc[i], float(z[i, j])) for i in best)
            + "</table></div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_browser(path: Path, title: str, meta: dict[str, Any], z: np.ndarray, rows: pd.DataFrame,
                  n_latents: int = 64, top: int = 8, first: Sequence[int] = ()) -> Path:
    write_text(path, render(title, meta, z, rows, n_latents, top, first))
    return path
