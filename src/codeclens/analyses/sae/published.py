"""Published numbers of Wang et al. 2026 and the matching of stores to them.

The tables ship with the package (``codeclens/data/reference``, copied verbatim from
the published-numbers folder the project keeps beside its papers; a test checks they
agree) so a study works anywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ...spec import parse_spec

SOURCE = "Wang et al. 2026 (Interspeech), Vox-Profile accents"

_FILES = {
    "table1": "wang2026_table1_reference_f1.csv",
    "table2": "wang2026_table2_delta_f1.csv",
    "table3": "wang2026_table3_bitrate.csv",
}


def table(name: str) -> pd.DataFrame:
    """One of Wang et al.'s tables, from the copy shipped in ``codeclens/data/reference``."""
    return pd.read_csv(reference_path(_FILES[name]))


def reference_path(filename: str) -> Path:
    return Path(__file__).resolve().parents[2] / "data" / "reference" / filename


_KBPS = re.compile(r"(\d+(?:\.\d+)?)\s*kbps", re.I)


def bitrate_kbps(spec: str) -> float | None:
    """Bitrate named in a codec spec (``encodec:24khz@6kbps`` -> 6.0), if any."""
    m = _KBPS.search(spec)
    if m:
        return float(m.group(1))
    try:
        sp = parse_spec(spec)
    except Exception:
        return None
    for key in ("bandwidth", "kbps", "bitrate"):
        if key in sp.opts:
            try:
                return float(str(sp.opts[key]).lower().replace("kbps", ""))
            except ValueError:
                return None
    return None


def codec_family(spec: str) -> str:
    """The codec spec without its bitrate and options (stores of one family differ only in bitrate)."""
    try:
        sp = parse_spec(spec)
    except Exception:
        return spec
    target = _KBPS.sub("", sp.target or "").rstrip("@").strip()
    return f"{sp.kind}:{target}" if target else sp.kind


def published_key(spec: str) -> str | None:
    """Row name in Wang et al.'s tables for a store's codec, when it is one they report."""
    try:
        kind = parse_spec(spec).kind
    except Exception:
        return None
    if kind == "encodec":
        b = bitrate_kbps(spec)
        return f"encodec_{b:g}kbps" if b in (1.5, 6.0, 12.0) else None
    return kind if kind in ("dac", "mimi", "speechtokenizer") else None
