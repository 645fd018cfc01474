"""A static HTML feature browser for one SAE.

Per latent: activation density, the rows (utterances or frames) that activate it
most with players for their audio (media fragments ``#t=start,end`` cut the clip
out of the utterance file), and the label histogram of all rows where it fires
against the base rate. Every string that comes from data is escaped. The codes are
summarised chunk by chunk (:class:`LatentSummary`), so a page costs memory per latent,
not per row.
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


class LatentSummary:
    """What a browser page shows of every latent, accumulated over chunks of rows.

    Per latent: rows active, sum of its active values, label counts where it fires, and its
    ``top`` most activating rows (ties: earlier row first). Memory is ``d_z × (labels + top)``,
    whatever the number of rows; chunks must come in row order."""

    def __init__(self, d_z: int, n_labels: int, top: int):
        self.d_z, self.top, self.n = d_z, top, 0
        self.count = np.zeros(d_z, np.int64)
        self.total = np.zeros(d_z, np.float64)
        self.label_counts = np.zeros((d_z, n_labels), np.int64)
        self.top_col = np.zeros(0, np.int64)  # flat (latent, value, row) of the current top rows
        self.top_val = np.zeros(0, np.float32)
        self.top_row = np.zeros(0, np.int64)

    def add(self, z: np.ndarray, labels: np.ndarray) -> None:
        """``z [m, d_z]``: codes of the next m rows; ``labels [m]``: their label codes (0..n_labels-1)."""
        z = np.asarray(z, np.float32)
        m = len(z)
        if not m:
            return
        act = z > 0
        self.count += act.sum(0)
        self.total += np.where(act, z, 0).sum(0, dtype=np.float64)
        np.add.at(self.label_counts.T, labels, act)  # [labels, d_z] += per-row activity
        # Candidates of this chunk: per latent every active row at or above its top-th largest value
        # (ties at the threshold all kept, so the merge below decides them by row as a full sort would).
        kth = min(self.top, m)
        thr = -np.partition(-np.where(act, z, -np.inf), kth - 1, axis=0)[kth - 1]
        rows, cols = np.nonzero(act & (z >= thr))
        col = np.concatenate([self.top_col, cols])
        val = np.concatenate([self.top_val, z[rows, cols]])
        row = np.concatenate([self.top_row, rows + self.n])
        order = np.lexsort((row, -val, col))
        col, val, row = col[order], val[order], row[order]
        first = np.searchsorted(col, col, side="left")
        keep = np.arange(len(col)) - first < self.top
        self.top_col, self.top_val, self.top_row = col[keep], val[keep], row[keep]
        self.n += m

    @property
    def density(self) -> np.ndarray:
        return self.count / self.n if self.n else np.zeros(self.d_z)

    def best(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) of latent j's top rows, most active first."""
        a, b = np.searchsorted(self.top_col, [j, j + 1])
        return self.top_row[a:b], self.top_val[a:b]


def _histogram_counts(names: np.ndarray, counts: np.ndarray, base: dict[str, float]) -> str:
    present = counts > 0
    vals, counts = names[present], counts[present]
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


def label_codes(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(sorted label names, code of every row) of the ``label`` column."""
    names, codes = np.unique(rows["label"].astype(str).to_numpy(), return_inverse=True)
    return names, codes.reshape(-1)


def summarize(z_chunks, rows: pd.DataFrame, top: int = 8) -> LatentSummary:
    """A :class:`LatentSummary` of ``rows`` from an iterable of their codes in row order (``[m, d_z]`` chunks)."""
    names, codes = label_codes(rows)
    summ, a = None, 0
    for z in z_chunks:
        if summ is None:
            summ = LatentSummary(z.shape[1], len(names), top)
        summ.add(z, codes[a : a + len(z)])
        a += len(z)
    if summ is None:
        raise ValueError("no chunks of codes")
    if a != len(rows):
        raise ValueError(f"codes of {a} rows for {len(rows)} rows")
    return summ


def render_summary(title: str, meta: dict[str, Any], summ: LatentSummary, rows: pd.DataFrame,
                   n_latents: int = 64, first: Sequence[int] = ()) -> str:
    """HTML for one SAE from its :class:`LatentSummary` over ``rows`` (columns id, speaker, label, path,
    clip_start, clip_end and, for frames, time). ``first``: latents listed before the densest ones (the
    label's classifier picks them), marked as such."""
    d_z, n = summ.d_z, summ.n
    dens = summ.density
    names, codes = label_codes(rows)
    base_counts = np.bincount(codes, minlength=len(names))
    base = dict(zip(names[base_counts > 0], base_counts[base_counts > 0] / max(base_counts.sum(), 1)))
    alive = np.flatnonzero(dens > 0)
    first = [int(j) for j in first if 0 <= int(j) < d_z and dens[int(j)] > 0]
    rest = [int(j) for j in alive[np.argsort(-dens[alive], kind="stable")] if int(j) not in set(first)]
    chosen = (first + rest)[: max(n_latents, len(first))]
    head = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in meta.items())
    dens_hist = np.histogram(np.log10(dens[alive]) if len(alive) else [], bins=10)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1><table class=meta>{head}</table>",
        f"<p>{len(alive)} of {d_z} latents fire on these {n} rows "
        f"({100 * (1 - len(alive) / max(d_z, 1)):.1f}% dead). Showing {len(chosen)}: first the "
        f"{len(first)} latents the label classifier weights most, then the densest.</p>",
        "<p>log10 density histogram: " + ", ".join(
            f"[{a:.2f},{b:.2f}): {c}" for a, b, c in zip(dens_hist[1][:-1], dens_hist[1][1:], dens_hist[0])) + "</p>",
    ]
    for j in chosen:
        best, vals = summ.best(j)
        parts.append(
            f"<div class=lat id='latent-{j}'><h3>latent {j}{' (label latent)' if j in first else ''}</h3>"
            f"<p>density {dens[j]:.4f} "
            f"({summ.count[j]} rows), mean activation {summ.total[j] / summ.count[j]:.3g}</p>"
            + _histogram_counts(names, summ.label_counts[j], base)
            + "<table><tr><th>activation</th><th>row</th><th>speaker</th><th>label</th><th>audio</th></tr>"
            + "".join(_row_cells(rows.iloc[i], float(v)) for i, v in zip(best, vals))
            + "</table></div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def render(
    title: str, meta: dict[str, Any], z: np.ndarray, rows: pd.DataFrame, n_latents: int = 64, top: int = 8,
    first: Sequence[int] = (),
) -> str:
    """HTML for one SAE from the codes ``z [n, d_z]`` of all ``rows`` at once (see :func:`render_summary`)."""
    z = np.asarray(z, np.float32)
    summ = summarize([z], rows, top) if len(z) else LatentSummary(z.shape[1], 0, top)
    return render_summary(title, meta, summ, rows, n_latents, first)


def write_browser(path: Path, title: str, meta: dict[str, Any], summ: LatentSummary, rows: pd.DataFrame,
                  n_latents: int = 64, first: Sequence[int] = ()) -> Path:
    write_text(path, render_summary(title, meta, summ, rows, n_latents, first))
    return path
