"""Published numbers of Wang et al. 2026 and the matching of stores to them.

The tables are copied verbatim from /work/shared/reference/wang2026_*.csv (a test
checks they still agree) so the package works without that folder.
"""

from __future__ import annotations

import io
import re

import pandas as pd

from ...spec import parse_spec

SOURCE = "Wang et al. 2026 (Interspeech), Vox-Profile accents"

TABLE1 = """codec,setting,macro_f1_pct
encodec_1.5kbps,us_vs_uk,81.11
encodec_6kbps,us_vs_uk,80.20
encodec_12kbps,us_vs_uk,80.17
dac,us_vs_uk,79.74
mimi,us_vs_uk,88.79
speechtokenizer,us_vs_uk,92.44
encodec_1.5kbps,us_vs_non_us_uk,57.19
encodec_6kbps,us_vs_non_us_uk,60.93
encodec_12kbps,us_vs_non_us_uk,61.98
dac,us_vs_non_us_uk,61.33
mimi,us_vs_non_us_uk,75.70
speechtokenizer,us_vs_non_us_uk,75.98
"""

TABLE2 = """codec,feature,q2,q5,q10,q20
encodec_6kbps,z,-17.25,-15.64,-20.37,-19.70
encodec_6kbps,position,-39.06,-19.16,-38.90,-45.06
encodec_6kbps,magnitude,-19.64,-25.82,-25.58,-20.67
dac,z,-5.59,-9.46,-3.36,-7.29
dac,position,-9.80,-12.04,-9.88,-10.93
dac,magnitude,-5.00,-5.08,-4.78,-3.32
mimi,z,-6.43,-9.72,-7.69,-8.82
mimi,position,-8.12,-10.49,-8.64,-9.27
mimi,magnitude,-38.87,-19.02,-24.70,-22.46
speechtokenizer,z,-4.54,-5.21,-5.83,-6.33
speechtokenizer,position,-7.20,-7.09,-6.76,-7.20
speechtokenizer,magnitude,-23.82,-29.38,-23.62,-27.03
"""

TABLE3 = """q,encodec_1.5kbps_s5,encodec_1.5kbps_s10,encodec_6kbps_s5,encodec_6kbps_s10,encodec_12kbps_s5,encodec_12kbps_s10
2,-7.25,-2.52,-17.25,-9.28,-17.78,-13.69
5,-7.05,-2.91,-15.64,-6.81,-16.51,-11.86
10,-9.66,-5.00,-20.37,-12.29,-16.30,-9.06
20,-8.72,-4.40,-19.70,-6.94,-23.18,-8.06
"""


def table(name: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO({"table1": TABLE1, "table2": TABLE2, "table3": TABLE3}[name]))


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
