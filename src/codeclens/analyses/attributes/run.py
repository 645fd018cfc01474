"""The ``attributes`` analysis: per store, fit the model, analyse, resynthesise, convert; one
Table-1-shaped table over all stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ...errors import CodeclensError
from ...util.atomic import atomic_path
from ...util.device import resolve_device
from ..base import AnalysisResult, Artifact
from .analyse import attribute_scores, codec_token_accuracy
from .config import AttributesConfig
from .fit import fit
from .published import SOURCE, table1


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "store"


def analyse_store(store, cfg: AttributesConfig, out: Path, progress: bool, notes: list[str]) -> dict[str, Any]:
    """Fit (or resume) the model for one store and write its tables; returns its Table 1 entries."""
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    ck, prep = fit(store, cfg, out / "checkpoint", device, progress, notes.append)
    test = prep.test_rows[: cfg.max_utts] if cfg.max_utts else prep.test_rows
    test_utts = prep.utts(store, ck.streams, test)
    scores = attribute_scores(ck, store, prep.train_rows, test_utts, device)
    write_csv(scores, out / "analysis.csv")
    tokens = codec_token_accuracy(ck, test_utts, device)
    write_csv(tokens, out / "token_accuracy.csv")
    write_csv(pd.DataFrame(ck.history), out / "training.csv")
    entry: dict[str, Any] = {"store": store.name, "codec": store.codec["spec"],
                             "corpus": store.manifest.get("corpus", {}).get("spec", ""),
                             "content_source": ck.vocab.content_source}
    by = scores.set_index(["attribute", "metric"])["model"] if len(scores) else pd.Series(dtype=float)
    for (attr, metric), v in by.items():
        if attr == "pitch" and metric.startswith("AAE"):
            entry["pitch_aae"] = v
        elif attr == "content":
            entry["content_acc"] = 100.0 * v
    files = {"analysis": out / "analysis.csv", "tokens": out / "token_accuracy.csv", "training": out / "training.csv"}
    audio: list[Path] = []
    if cfg.n_utts:
        from .resynth import choose_targets, content_probe, load_store_codec, resynthesise_and_convert, summarise

        codec = load_store_codec(store, device)
        src_rows = test[: cfg.n_utts]
        tgt_rows = choose_targets(store, src_rows, test, cfg.seed)
        probe, said = content_probe(store, src_rows, cfg.seed, device)
        notes.append(f"{store.name}: content retention: {said}." if probe is not None
                     else f"{store.name}: no content retention for conversions: {said}.")
        per = resynthesise_and_convert(ck, store, codec, prep.utts(store, ck.streams, src_rows),
                                       prep.utts(store, ck.streams, tgt_rows), prep.embeddings, device,
                                       cfg.max_seconds, cfg.examples, out / "audio", probe)
        write_csv(per, out / "resynthesis_per_utterance.csv")
        summ = summarise(per)
        write_csv(summ, out / "resynthesis.csv")
        files["resynthesis"] = out / "resynthesis.csv"
        s = summ.set_index("system")
        if "resynthesis" in s.index:
            entry["resynth_stoi"] = float(s.loc["resynthesis", "stoi"])
        if "conversion" in s.index:
            entry["vc_cos"] = float(s.loc["conversion", "cos_target"])
        audio = sorted((out / "audio").rglob("*.wav")) if (out / "audio").is_dir() else []
    return {"entry": entry, "scores": scores, "files": files, "audio": audio}


def _sentences(name: str, scores: pd.DataFrame) -> list[str]:
    out = []
    for _, r in scores.iterrows():
        better = r["model"] < r["baseline"] if r["better"] == "lower" else r["model"] > r["baseline"]
        out.append(f"{name}: {r['attribute']} {r['metric']} {r['model']:.3g} {r['unit']} vs {r['baseline']:.3g} "
                   f"({r['baseline_kind']}){'' if better else ' — not better than the baseline'}.")
    return out


def run_attributes(stores: Sequence[Any], cfg: AttributesConfig, out: Path, progress: bool = True) -> AnalysisResult:
    if not stores:
        raise CodeclensError("attributes: give at least one store")
    notes: list[str] = []
    arts: list[Artifact] = []
    entries, summary = [], []
    for store in stores:
        d = out / _slug(store.name)
        r = analyse_store(store, cfg, d, progress, notes)
        entries.append(r["entry"])
        g = store.name
        arts.append(Artifact(str(r["files"]["analysis"].relative_to(out)),
                             "Attributes predicted from the codec's tokens (all attribute streams hidden), beside baselines", "table", g))
        if "resynthesis" in r["files"]:
            arts.append(Artifact(str(r["files"]["resynthesis"].relative_to(out)),
                                 "Resynthesis from attributes and voice conversion, against the codec's own decode", "table", g))
        arts.append(Artifact(str(r["files"]["tokens"].relative_to(out)),
                             "Codec tokens regenerated from attributes: accuracy per RVQ layer", "table", g))
        arts += [Artifact(str(p.relative_to(out)), f"{p.parent.name}: {p.stem}", "audio", g) for p in r["audio"]]
        summary += _sentences(store.name, r["scores"])
    t1 = table1(entries)
    write_csv(t1, out / "table1.csv")
    pub = Artifact("table1.csv", f"Table 1 shape: published ({SOURCE}) and ours; 'compare_with' says which rows share a setup",
                   "table")
    summary += notes
    return AnalysisResult("attributes", "Attribute model (AnCoGen-Codec): analysis, resynthesis, voice conversion",
                          tuple(arts), " ".join(summary), (pub,))
