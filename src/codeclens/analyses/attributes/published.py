"""Sadok, Hauret & Bavu 2025 (Interspeech), Table 1, beside ours.

The paper's AnCoGen-Codec models are trained on LibriSpeech train-clean-100; pitch
AAE is measured on PTDB, content accuracy over 100 HuBERT units on LibriSpeech test,
resynthesis STOI against the original, and conversion COS with Resemblyzer. A row
of ours is set beside a published one only when its setup matches (the same trained
codec, a LibriSpeech corpus, and content as units); otherwise it is marked context.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...spec import parse_spec

SOURCE = "Sadok, Hauret & Bavu 2025 (Interspeech), Table 1"
COLUMNS = ("pitch_aae", "content_acc", "resynth_stoi", "vc_cos")
"""Table 1 columns we measure the same way (pitch AAE in Hz, content accuracy in %, STOI, COS)."""
_MODELS = {"ancogen_melspectrogram": "AnCoGen - Melspectrogram", "ancogen_bigcodec": "AnCoGen - BigCodec",
           "ancogen_speechtokenizer": "AnCoGen - SpeechTokenizer"}


def published_table() -> pd.DataFrame:
    t = pd.read_csv(Path(__file__).resolve().parents[2] / "data" / "reference" / "sadok2025_table1.csv")
    t["system"] = [_MODELS.get(m, m) for m in t["model"]]
    return t


def matching_model(codec_spec: str, corpus_spec: str, content_source: str) -> str | None:
    """The published model whose setup ours matches, or None."""
    try:
        c = parse_spec(codec_spec)
    except Exception:  # an unparsable spec matches nothing
        return None
    if c.get("random_init", False, bool) or not str(corpus_spec).startswith("librispeech"):
        return None
    if content_source != "unit":
        return None
    return {"speechtokenizer": "ancogen_speechtokenizer", "bigcodec": "ancogen_bigcodec"}.get(c.kind)


NOT_COMPUTED = ("resynth_nmos", "resynth_bak", "resynth_bertscore", "vc_nmos")
"""Table 1 columns codeclens does not compute (no N-MOS, BAK or SpeechBERTScore models ship offline):
published values only, empty in our rows."""


def table1(ours: list[dict]) -> pd.DataFrame:
    """Published rows, then ours (``ours``: dicts with store, codec, corpus, content_source and COLUMNS).

    Our rows carry ``<column>_published`` (the matching published row's value) only when the setup
    matches, and ``compare_with`` names that row or says *context*; a published row's
    ``compare_with`` names the rows of ours that share its setup, else says it is context only."""
    pub = published_table()
    matched = {o["store"]: matching_model(o["codec"], o.get("corpus", ""), o.get("content_source", "")) for o in ours}
    rows = []
    for _, r in pub.iterrows():
        mine = [f"{s} (codeclens)" for s, m in matched.items() if m == r["model"]]
        rows.append({"system": r["system"], "source": SOURCE, "bitrate_kbps": r["bitrate_kbps"],
                     "compare_with": ", ".join(mine) if mine else "context (no row of ours shares its setup)",
                     **{c: r[c] for c in (*COLUMNS, *NOT_COMPUTED)}})
    by_model = pub.set_index("model")
    for o in ours:
        m = matched[o["store"]]
        row = {"system": f"{o['store']} (codeclens)", "source": "ours", "bitrate_kbps": float("nan"),
               "compare_with": _MODELS[m] if m else "context (setup differs from the paper's)",
               **{c: o.get(c, float("nan")) for c in COLUMNS}, **{c: float("nan") for c in NOT_COMPUTED}}
        for c in COLUMNS:
            row[f"{c}_published"] = float(by_model.loc[m, c]) if m else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)
