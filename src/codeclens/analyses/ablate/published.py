"""Published numbers ablate's voice conversion by swap is shown beside (context, not a replication)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .tables import best_swap

SADOK = "Sadok, Hauret & Bavu 2025 (Interspeech), Table 1, Voice Conversion COS"


def sadok_vc_cos() -> list[tuple[str, float]]:
    """Sadok, Hauret, Bavu 2025, Table 1, voice-conversion COS (Resemblyzer), LibriSpeech test,
    from the copy shipped in ``codeclens/data/reference``."""
    t = pd.read_csv(Path(__file__).resolve().parents[2] / "data" / "reference" / "sadok2025_table1.csv")
    names = {"ancogen_melspectrogram": "AnCoGen - Melspectrogram", "ancogen_bigcodec": "AnCoGen - BigCodec",
             "ancogen_speechtokenizer": "AnCoGen - SpeechTokenizer"}
    return [(names.get(m, m), float(v)) for m, v in zip(t["model"], t["vc_cos"])]


def published_vc(vc_by_store: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Sadok et al.'s COS rows and, per store, the best-ranked swap (never a swap of every layer)."""
    rows = [{"system": s, "method": "AnCoGen attribute control", "cos_target": v, "cos_target_lo": None,
             "cos_target_hi": None, "content_retention": None, "source": SADOK} for s, v in sadok_vc_cos()]
    for store, vc in vc_by_store.items():
        best = best_swap(vc)
        if best is None:
            continue
        rows.append({"system": f"{store}: {best['intervention']}", "method": "layer swap (codeclens ablate)",
                     "cos_target": float(best["cos_target"]), "cos_target_lo": best["cos_target_lo"],
                     "cos_target_hi": best["cos_target_hi"], "content_retention": best["content_retention"],
                     "source": "ours"})
    return pd.DataFrame(rows)
