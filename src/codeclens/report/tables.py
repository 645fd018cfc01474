"""Tables as a reader sees them: results first, paths relative, digits earned.

Analyses write tidy tables with every column a machine might want (store
paths, specs, seeds, counts). A reader wants the answer first: the metric, its
value and interval, then what it was measured on. This module reorders
columns, rewrites absolute paths relative to the run (a shared report must not
leak, or depend on, the machine it was made on) and rounds each value to the
precision its interval supports ("0.61 [0.57, 0.65]", not "0.6134 [0.5703,
0.6521]"), before :mod:`codeclens.report.html` renders the first rows.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LEAD_COLUMNS = (
    "metric", "value", "estimate", "score", "effect", "ci_low", "ci_high", "lo", "hi", "p", "p_holm",
    "chance", "chance_majority", "chance_uniform", "baseline", "control",
)
"""Result columns shown first, in this order, after the row's identity columns."""
IDENTITY_COLUMNS = ("codec", "codec_label", "task", "label", "target", "representation", "layer", "probe",
                    "intervention", "measure")
"""Short columns that say what a row is; they stay left of the numbers."""
TRAIL_COLUMNS = ("store", "spec", "path", "codec_spec", "corpus", "config_hash", "key", "backend")
"""Long, rarely read columns: last."""
INTERVALS = (("ci_low", "ci_high"), ("lo", "hi"))
"""(low, high) column pairs whose width decides the digits of the value beside them."""
VALUE_COLUMNS = ("value", "estimate", "score", "effect", "mean", "delta")

_ABS = re.compile(r"^(?:/|[A-Za-z]:[\\/]|~/)")


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Identity columns, then results (metric, value, interval, chance), then the rest, with
    long spec/path columns last."""
    cols = list(df.columns)
    ident = [c for c in IDENTITY_COLUMNS if c in cols]
    lead = [c for c in LEAD_COLUMNS if c in cols]
    trail = [c for c in TRAIL_COLUMNS if c in cols]
    rest = [c for c in cols if c not in ident and c not in lead and c not in trail]
    return df[ident + lead + rest + trail]


def relative_path(text: str, root: Path) -> str:
    """``text`` relative to the run root when it is an absolute path inside it; an absolute path
    elsewhere keeps only its last two components behind ``…/``; anything else is unchanged."""
    if not isinstance(text, str) or not _ABS.match(text):
        return text
    p = Path(os.path.expanduser(text))
    try:
        rp, rr = p.resolve(), root.resolve()
        if rp == rr:
            return "."
        if rr in rp.parents:
            return rp.relative_to(rr).as_posix()
    except (OSError, ValueError):
        pass
    parts = [x for x in re.split(r"[\\/]", text) if x]
    return "…/" + "/".join(parts[-2:]) if parts else text


_PATH_IN_TEXT = re.compile(r"(?:(?<=^)|(?<=[\s:=,;(\[\'\"]))((?:~|[A-Za-z]:)?/(?!/)[^\s?&,;\'\")\]]+)")
"""An absolute path inside free text: after a start, space, ``:`` or ``=`` (as in a spec's
``librispeech:/data/x?alignments=/data/y``), never a URL's ``//``."""


def scrub_text(text: str, root: Path) -> str:
    """Every absolute path inside ``text`` rewritten by :func:`relative_path`."""
    if not isinstance(text, str) or "/" not in text:
        return text
    return _PATH_IN_TEXT.sub(lambda m: relative_path(m.group(1), root), text)


def scrub_paths(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Every absolute path in a text column made relative to the run (see :func:`scrub_text`)."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or pd.api.types.is_string_dtype(out[c].dtype):
            out[c] = out[c].map(lambda v: scrub_text(v, root) if isinstance(v, str) else v)
    return out


def decimals_for(lo: float, hi: float, sig: int = 2, most: int = 6) -> int | None:
    """Decimal places that show an interval's half-width to ``sig`` significant digits."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    half = abs(hi - lo) / 2
    if half == 0:
        return most
    return int(min(most, max(0, sig - 1 - math.floor(math.log10(half)))))


def rounded(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[int | None]]]:
    """Values and their interval ends as text at the digits the interval supports.

    Returns the table (numbers kept as floats) and, per column, the decimals chosen for each row
    (None: no interval, use the default formatting). The display layer formats with them; sorting
    keeps the exact value."""
    digits: dict[str, list[int | None]] = {}
    for lo_c, hi_c in INTERVALS:
        if lo_c not in df.columns or hi_c not in df.columns:
            continue
        lo = pd.to_numeric(df[lo_c], errors="coerce").to_numpy(float)
        hi = pd.to_numeric(df[hi_c], errors="coerce").to_numpy(float)
        d = [decimals_for(a, b) for a, b in zip(lo, hi)]
        for c in (lo_c, hi_c, *[v for v in VALUE_COLUMNS if v in df.columns]):
            digits.setdefault(c, d)
    return df, digits


def format_number(v: float, decimals: int | None) -> str:
    if decimals is None or not math.isfinite(v):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3e}"
    return f"{v:.{decimals}f}"


def readable(df: pd.DataFrame, root: Path | None, reorder: bool = True) -> tuple[pd.DataFrame, dict[str, list[int | None]]]:
    """The table as the report shows it: ordered (results first), paths scrubbed, digits per cell."""
    if root is not None:
        df = scrub_paths(df, root)
    return rounded(order_columns(df) if reorder else df)


def cell(v: Any, decimals: int | None = None) -> tuple[str, str]:
    """(display text, sort key) of one value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "", ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)), str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(v), str(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "", ""
        if math.isinf(f):
            return str(f), ""
        return format_number(f, decimals), repr(f)
    return str(v), ""
