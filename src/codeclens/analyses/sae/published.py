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


# -- the paper's tasks -------------------------------------------------------------------------
# Wang et al. §3.1: "samples labeled as North America are grouped as US accent ... samples
# labeled as British Isles in [Vox-Profile], excluding Irish, are grouped as UK accent ...
# samples labeled as regions outside North America and the British Isles are grouped as
# Non-US-UK". Irish is British Isles, so it is in neither binary task.
US, UK, NON_US_UK = "US", "UK", "non-US-UK"
SETTINGS = {"us_vs_uk": (US, UK), "us_vs_non_us_uk": (US, NON_US_UK)}
_NORTH_AMERICA = {"us", "usa", "u.s.", "american", "united states", "north america", "north american",
                  "general american", "canada", "canadian", "en-us", "en-ca", "en_us", "en_ca"}
_BRITISH_ISLES = {"uk", "gb", "british", "britain", "great britain", "united kingdom", "british isles", "england",
                  "english", "scotland", "scottish", "wales", "welsh", "rp", "received pronunciation", "en-gb",
                  "en_gb", "cockney", "northern english", "southern english", "lancashire", "west midlands",
                  "manx", "channel islands"}
_IRISH = ("irish", "ireland", "en-ie")


def paper_group(value: str) -> str:
    """The paper's group of an accent label: 'US', 'UK', '' (Irish: in neither task) or 'non-US-UK'.

    Vox-Profile region names, common country/demonym names and eSpeak NG codes
    (``en-us*`` North America, ``en-gb*`` British Isles) are recognised; every other
    label is a region outside both, so non-US-UK (the paper's rule)."""
    v = " ".join(str(value).strip().lower().replace("_", "-").split())
    if not v:
        return ""
    if any(t in v for t in _IRISH):
        return ""
    if v in _NORTH_AMERICA or v.startswith("en-us") or v.startswith("en-ca"):
        return US
    if v in _BRITISH_ISLES or v.startswith("en-gb"):
        return UK
    return NON_US_UK


def task_setting(classes) -> str | None:
    """The paper setting a class set is (``us_vs_uk`` / ``us_vs_non_us_uk``), or None."""
    cl = set(classes)
    for name, pair in SETTINGS.items():
        if cl == set(pair):
            return name
    return None


# Codec variants of the paper (§3.2): EnCodec 24 kHz at 1.5 / 6 / 12 kbps, DAC 24 kHz, Mimi,
# SpeechTokenizer (16 kHz), all with their released weights.
PAPER_VARIANTS = {"encodec": "24khz at 1.5, 6 or 12 kbps", "dac": "24khz", "mimi": "(any)", "speechtokenizer": "(any)"}


def paper_codec(spec: str) -> tuple[str | None, str]:
    """(row name in the paper's tables, '') when ``spec`` is a codec variant the paper reports,
    else (None, why not)."""
    try:
        sp = parse_spec(spec)
    except Exception:
        return None, f"codec spec '{spec}' is unreadable"
    if sp.kind not in PAPER_VARIANTS:
        return None, f"codec '{sp.kind}' is not in the paper (EnCodec, DAC, Mimi, SpeechTokenizer)"
    if str(sp.opts.get("random_init", "")).lower() in ("1", "true", "yes"):
        return None, "random-weight control codec; the paper used released weights"
    target = (sp.target or "").lower()
    if sp.kind == "encodec":
        b = bitrate_kbps(spec) if target else 6.0
        sr = target.split("@")[0] if target else "24khz"
        if sr != "24khz" or b not in (1.5, 6.0, 12.0):
            return None, f"paper's EnCodec is 24 kHz at 1.5/6/12 kbps, not '{spec}'"
        return f"encodec_{b:g}kbps", ""
    if sp.kind == "dac":
        if target != "24khz":
            return None, f"paper's DAC is the 24 kHz model, not '{spec}' (bare 'dac' is 16 kHz)"
        return "dac", ""
    return sp.kind, ""


def published_match(spec: str, classes, label: str, repr_name: str, paper_repr: str,
                    wanted: str = "auto") -> tuple[str | None, str | None, str]:
    """(paper codec key, setting, '') when a run's setting matches one of the paper's, else
    (key or None, setting or None, the reason there is no published-vs-ours row). The split
    need not be checked here: :func:`~.data.build_task` refuses any that is not speaker-disjoint."""
    key, why = paper_codec(spec)
    setting = task_setting(classes)
    reasons = [why] if why else []
    if label != "accent":
        reasons.append(f"label '{label}' is not accent")
    if setting is None:
        reasons.append(f"task has classes {{{', '.join(sorted(map(str, classes)))}}}, not one of the paper's binary "
                       f"tasks (US vs UK, US vs non-US-UK)")
    elif wanted != "auto" and wanted != setting:
        reasons.append(f"task is {setting} but published_setting asks for {wanted}")
    if repr_name != paper_repr:
        reasons.append(f"representation {repr_name} is not the paper's utterance mean of ê ({paper_repr})")
    return key, setting, "; ".join(reasons)
