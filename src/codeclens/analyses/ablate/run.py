"""The ``ablate`` analysis: edit codes layer by layer, decode, measure what changed.

For every store (one codec x corpus) it reloads the codec from the store's
manifest, takes ``n_utts`` utterances' codes from the store, decodes them
unedited and after each intervention, and measures each edited decode against
the unedited decode (and against the donor's decode for swaps). Per-utterance
results are cached atomically under ``cache/``, so a re-run skips finished
utterances. Outputs per store: a tidy effect table with bootstrap CIs, an
intervention x measure table, a heatmap and layer profiles, a layer-roles
summary, a voice-conversion-by-swap table and decoded audio examples.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ...audio import AudioError, load_audio
from ...config import to_dict
from ...errors import CodeclensError
from ...util.atomic import atomic_path, write_json
from ...util.device import resolve_device
from ...util.provenance import config_hash
from ..base import Analysis, AnalysisResult, Artifact
from . import interventions as ivs
from . import measures as ms
from .phoneprobe import PhoneProbe, fit_phone_probe, has_phone_labels

MEASURES = ("speaker", "pitch", "stoi", "mcd", "loudness", "phone")
"""Measure groups a user can pick (``wer`` is added when an ASR checkpoint is given)."""

COLUMNS = {
    "speaker": ("spk_sim",),
    "pitch": ("f0_rmse_cents", "voicing_agree"),
    "stoi": ("stoi",),
    "mcd": ("mcd_db",),
    "loudness": ("loudness_db",),
    "phone": ("phone_acc",),
    "wer": ("wer",),
}
"""Result columns of each measure group."""

LABELS = {
    "spk_sim": "speaker similarity (cos)",
    "spk_sim_donor": "similarity to donor (cos)",
    "f0_rmse_cents": "F0 RMSE (cents)",
    "voicing_agree": "voicing agreement",
    "stoi": "STOI",
    "mcd_db": "mel-cepstral distance (dB)",
    "loudness_db": "loudness change (dB)",
    "phone_acc": "phone accuracy (re-encoded)",
    "wer": "WER vs unedited decode",
}

# Value of each measure for audio identical to the reference; "damage" is the distance from it.
IDEAL = {"spk_sim": 1.0, "spk_sim_donor": 1.0, "f0_rmse_cents": 0.0, "voicing_agree": 1.0, "stoi": 1.0,
         "mcd_db": 0.0, "loudness_db": 0.0, "wer": 0.0}


@dataclasses.dataclass(frozen=True)
class AblateConfig:
    interventions: tuple[str, ...] = ("drop", "truncate", "only", "swap", "noise")
    """Interventions: drop, truncate (keep 1..k), only, swap, noise; each swept over --layers, or kind:SET for one multi-layer edit (swap:2-8)."""
    layers: str = "all"
    """1-based layers to sweep (e.g. 1-8, 3, 1,4-5, all)."""
    n_utts: int = 20
    """Utterances per store (test split first)."""
    examples: int = 3
    """Utterances whose decoded audio is saved for every intervention."""
    device: str = "auto"
    """Torch device (auto: CUDA when present)."""
    donor_speaker_different: bool = True
    """Swap donors come from a different speaker (falls back to another utterance if the store has one speaker)."""
    swap_mode: str = "both"
    """Swept swaps: single (layer k), suffix (layers k..L) or both."""
    measures: tuple[str, ...] = MEASURES
    """Measures: speaker, pitch, stoi, mcd, loudness, phone."""
    max_seconds: float = 8.0
    """Crop utterances to this many seconds (measures are slow on long audio)."""
    n_boot: int = 1000
    """Bootstrap resamples for the 95 percent CIs over utterances."""
    seed: int = 0
    """Seed for utterance choice, donors and noise codes."""
    asr: str | None = None
    """Optional local transformers ASR checkpoint: adds WER against the unedited decode's transcript."""
    probe_frames: int = 20000
    """Frames used to train the phone probe (content measure)."""

    def __post_init__(self):
        if self.n_utts < 1:
            raise ValueError("n_utts must be >= 1")
        if self.examples < 0:
            raise ValueError("examples must be >= 0")
        if self.max_seconds <= 0:
            raise ValueError("max_seconds must be > 0")
        if self.swap_mode not in ("single", "suffix", "both"):
            raise ValueError("swap_mode must be single, suffix or both")
        bad = [m for m in self.measures if m not in MEASURES]
        if bad:
            raise ValueError(f"unknown measure(s) {', '.join(bad)}; known: {', '.join(MEASURES)}")
        if not self.interventions:
            raise ValueError("give at least one intervention")


# -- codec I/O ------------------------------------------------------------------------

@torch.inference_mode()
def decode_codes(codec, codes_lt: np.ndarray, layers: Sequence[int] | None = None) -> np.ndarray:
    """``[L, T]`` codes -> mono float32 audio, through the codec's own decode."""
    c = torch.from_numpy(np.ascontiguousarray(codes_lt, dtype=np.int64))[None].to(codec.device)
    return codec.decode(c, None if layers is None else list(layers))[0].detach().float().cpu().numpy()


@torch.inference_mode()
def encode_audio(codec, audio: np.ndarray) -> np.ndarray:
    """Mono audio at the codec's rate -> ``[T, L]`` codes."""
    w = torch.from_numpy(np.asarray(audio, dtype=np.float32))[None].to(codec.device)
    codes, n = codec.encode(w, torch.tensor([len(audio)], device=codec.device))
    return codes[0, :, : int(n[0])].T.cpu().numpy().astype(np.int64)


def utterance_codes(store, row: int, max_frames: int | None = None) -> np.ndarray:
    """``[L, T]`` codes of utterance ``row`` of the store."""
    u = store.utterances
    off, n = int(u["frame_offset"].iloc[row]), int(u["n_frames"].iloc[row])
    if max_frames is not None:
        n = min(n, max_frames)
    return np.asarray(store.codes[off : off + n], dtype=np.int64).T.copy()


def original_audio(store, row: int, sr: int, n_samples: int) -> np.ndarray | None:
    """The utterance's source audio (None when the path is missing or cannot be matched)."""
    u = store.utterances.iloc[row]
    path = str(u.get("path", "") or "")
    if not path:
        return None
    start = u.get("start") if "start" in u.index else None
    end = u.get("end") if "end" in u.index else None
    start = None if start is None or pd.isna(start) else float(start)
    end = None if end is None or pd.isna(end) else float(end)
    try:
        audio, _ = load_audio(path, sr, start, end)
    except AudioError:
        return None
    dur = float(u.get("duration", np.nan))
    # A segment whose offsets the store does not record would be compared with the wrong audio.
    if np.isfinite(dur) and abs(len(audio) / sr - dur) > 0.05:
        return None
    return audio[:n_samples]


# -- choosing utterances and donors ---------------------------------------------------

def choose_utterances(store, n: int, seed: int) -> list[int]:
    """Held-out utterances first, so the phone probe (trained on the train split) has not seen
    them: test speakers of the speaker-disjoint split, then the utterance split's test, then the rest."""
    u = store.utterances
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(u))
    rank = np.zeros(len(u), dtype=np.int64)
    for col, w in (("split_spk", 2), ("split_utt", 1)):
        if col in u.columns:
            rank -= w * (u[col].to_numpy() == "test")
    order = order[np.argsort(rank[order], kind="stable")]
    return sorted(int(i) for i in order[:n])


def choose_donor(store, row: int, different_speaker: bool, seed: int) -> tuple[int, bool]:
    """(donor row, whether it is another speaker). Deterministic in (seed, row)."""
    u = store.utterances
    rng = np.random.default_rng([seed, row, 7])
    others = np.array([i for i in range(len(u)) if i != row])
    if len(others) == 0:
        raise CodeclensError(f"{store.path}: swap needs at least two utterances")
    spk = u["speaker"].astype(str).to_numpy() if "speaker" in u.columns else np.array(["?"] * len(u))
    diff = others[spk[others] != spk[row]]
    if different_speaker and len(diff):
        return int(rng.choice(diff)), True
    j = int(rng.choice(others))
    return j, bool(spk[j] != spk[row])


# -- per-utterance work ---------------------------------------------------------------

@dataclasses.dataclass
class _Ref:
    """Precomputed reference features of one decode."""

    audio: np.ndarray
    emb: np.ndarray | None = None
    f0: ms.F0Track | None = None
    transcript: str | None = None


class Measurer:
    """Holds the loaded models and computes the measure columns of one edited decode."""

    def __init__(self, measures: Sequence[str], sr: int, device: str, probe: PhoneProbe | None,
                 codec=None, tables=None, asr: ms.AsrScorer | None = None):
        self.measures = set(measures)
        self.sr = sr
        self.device = device
        self.probe = probe
        self.codec = codec
        self.tables = tables
        self.asr = asr

    @functools.cached_property
    def enc(self) -> ms.SpeakerEncoder | None:
        """Loaded on first use, so a fully cached re-run never loads it."""
        return ms.speaker_encoder(self.device) if "speaker" in self.measures else None

    def reference(self, audio: np.ndarray) -> _Ref:
        r = _Ref(audio)
        if self.enc is not None:
            r.emb = self.enc.embed(audio, self.sr)
        if "pitch" in self.measures:
            r.f0 = ms.f0_track(audio, self.sr)
        if self.asr is not None:
            r.transcript = self.asr.transcribe(audio, self.sr)
        return r

    def phone_acc(self, audio: np.ndarray, labels: np.ndarray | None) -> float:
        if self.probe is None or labels is None:
            return float("nan")
        return self.probe.accuracy(encode_audio(self.codec, audio), self.tables, labels)

    def measure(self, ref: _Ref, hyp: np.ndarray, labels: np.ndarray | None, same: bool = False) -> dict[str, float]:
        """Columns for ``hyp`` against ``ref``; ``same`` marks the unedited decode itself."""
        out: dict[str, float] = {}
        m = self.measures
        if "speaker" in m:
            out["spk_sim"] = ms.cosine(ref.emb, self.enc.embed(hyp, self.sr))
        if "pitch" in m:
            h = ref.f0 if same else ms.f0_track(hyp, self.sr)
            out["f0_rmse_cents"] = ms.f0_rmse_cents(ref.f0, h)
            out["voicing_agree"] = ms.voicing_agreement(ref.f0, h)
        if "stoi" in m:
            out["stoi"] = ms.stoi(ref.audio, hyp, self.sr)
        if "mcd" in m:
            out["mcd_db"] = ms.mel_cepstral_distance(ref.audio, hyp, self.sr)
        if "loudness" in m:
            out["loudness_db"] = ms.loudness_change_db(*ms._pair(ref.audio, hyp))
        if "phone" in m:
            out["phone_acc"] = self.phone_acc(hyp, labels)
        if self.asr is not None:
            out["wer"] = ms.word_error_rate(ref.transcript or "", self.asr.transcribe(hyp, self.sr))
        return out


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    import soundfile as sf

    with atomic_path(path, ".wav") as tmp:
        # float samples: the saved unedited decode is bit-identical to the codec's output.
        sf.write(str(tmp), np.asarray(audio, dtype=np.float32), sr, subtype="FLOAT", format="WAV")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:80] or "x"


def ablate_utterance(
    store, codec, row: int, interventions: Sequence[ivs.Intervention], measurer: Measurer,
    distributions: list[np.ndarray], cfg: AblateConfig, audio_dir: Path | None, bar=None,
) -> list[dict[str, Any]]:
    """All intervention rows of one utterance (writes its audio examples when ``audio_dir``)."""
    u = store.utterances
    sr = int(codec.sample_rate)
    max_frames = max(1, int(round(cfg.max_seconds * codec.frame_rate)))
    codes = utterance_codes(store, row, max_frames)
    labels = None
    if has_phone_labels(store):
        off = int(u["frame_offset"].iloc[row])
        labels = store.frames["phone"].to_numpy()[off : off + codes.shape[1]]
    ref_audio = decode_codes(codec, codes)
    ref = measurer.reference(ref_audio)
    base = {"utt": row, "utt_id": str(u["id"].iloc[row]), "speaker": str(u["speaker"].iloc[row]) if "speaker" in u.columns else ""}
    rows: list[dict[str, Any]] = []

    def add(kind: str, name: str, layers: str, layer: int | None, values: dict[str, float], **extra):
        rows.append({**base, "kind": kind, "intervention": name, "layers": layers, "layer": layer, **extra, **values})

    # The unedited decode against itself (trivial for similarity measures; phone accuracy is not).
    none_vals = measurer.measure(ref, ref_audio, labels, same=True)
    add("none", "none", ivs.format_layers(range(codec.n_layers)), None, none_vals)
    orig = original_audio(store, row, sr, len(ref_audio))
    if orig is not None:
        # What the codec itself loses: the original audio as the reference, its decode as the hypothesis.
        # (No phone accuracy here: the hypothesis is the unedited decode, already scored in the 'none' row.)
        add("codec", "codec (original vs decode)", "", None, measurer.measure(measurer.reference(orig), ref_audio, None))

    donor_row, donor_other = None, False
    donor_codes = donor_ref = None
    if any(iv.needs_donor for iv in interventions) or "speaker" in cfg.measures:
        donor_row, donor_other = choose_donor(store, row, cfg.donor_speaker_different, cfg.seed)
        donor_codes = utterance_codes(store, donor_row, max_frames)
        donor_audio = decode_codes(codec, donor_codes)
        donor_ref = measurer.reference(donor_audio)
        if measurer.enc is not None:
            # Floor for speaker similarity: the unedited decode against another speaker's decode.
            add("reference", "other speaker", "", None, {"spk_sim": ms.cosine(ref.emb, donor_ref.emb)},
                donor_id=str(u["id"].iloc[donor_row]), donor_other_speaker=donor_other)

    examples: dict[str, np.ndarray] = {}
    if audio_dir is not None:
        examples["decode"] = ref_audio
        if orig is not None:
            examples["original"] = orig
        if donor_ref is not None and any(iv.needs_donor for iv in interventions):
            examples["donor"] = donor_ref.audio
    done: dict[tuple, tuple[np.ndarray, dict[str, float]]] = {
        (tuple(range(codec.n_layers)), codes.tobytes()): (ref_audio, none_vals),
    }
    for iv in interventions:
        rng = np.random.default_rng([cfg.seed, row, zlib.crc32(iv.name.encode())])
        ed = ivs.apply(iv, codes, donor=donor_codes, distributions=distributions, rng=rng)
        # Different names can be the same edit (only 1 = keep 1, keep 1..L = unedited): decode once.
        sig = (tuple(ed.layers), ed.codes.tobytes())
        if sig in done:
            hyp, vals = done[sig][0], dict(done[sig][1])
        else:
            hyp = decode_codes(codec, ed.codes, ed.layers)
            vals = measurer.measure(ref, hyp, labels)
            done[sig] = (hyp, dict(vals))
        extra: dict[str, Any] = {}
        if iv.needs_donor:
            extra = {"donor_id": str(u["id"].iloc[donor_row]), "donor_other_speaker": donor_other}
            if measurer.enc is not None:
                vals["spk_sim_donor"] = ms.cosine(donor_ref.emb, measurer.enc.embed(hyp, sr))
        add(iv.kind, iv.name, iv.layer_text, iv.single_layer, vals, **extra)
        if audio_dir is not None:
            examples[iv.slug] = hyp
        if bar is not None:
            bar.update(1)
    if audio_dir is not None:
        for name, a in examples.items():
            _write_wav(audio_dir / f"{name}.wav", a, sr)
    return rows


# -- summaries -------------------------------------------------------------------------

def measure_columns(df: pd.DataFrame) -> list[str]:
    order = [c for cols in COLUMNS.values() for c in cols] + ["spk_sim_donor"]
    return [c for c in order if c in df.columns and df[c].notna().any()]


def effect_table(per_utt: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Tidy: one row per (intervention, measure) with mean, 95% CI and n utterances."""
    rows = []
    keys = ["kind", "intervention", "layers", "layer"]
    df = per_utt.copy()
    df["layer"] = df["layer"].astype("float")
    for key, g in df.groupby(keys, sort=False, dropna=False):
        for m in measure_columns(per_utt):
            ci = ms.bootstrap_ci(g[m].to_numpy(dtype=float), n_boot, seed=seed)
            if ci.n == 0:
                continue
            rows.append({**dict(zip(keys, key)), "measure": m, "mean": ci.mean, "ci_lo": ci.lo, "ci_hi": ci.hi, "n": ci.n})
    out = pd.DataFrame(rows)
    if len(out):
        out["layer"] = out["layer"].astype("Int64")
    return out


def wide_table(effects: pd.DataFrame) -> pd.DataFrame:
    """Intervention x measure, cells 'mean [lo, hi]'."""
    if effects.empty:
        return pd.DataFrame()
    e = effects.copy()
    e["cell"] = [f"{m:.3g} [{lo:.3g}, {hi:.3g}]" for m, lo, hi in zip(e["mean"], e["ci_lo"], e["ci_hi"])]
    order = list(dict.fromkeys(e["intervention"]))
    w = e.pivot_table(index="intervention", columns="measure", values="cell", aggfunc="first")
    known = [c for cols in COLUMNS.values() for c in cols] + ["spk_sim_donor"]
    cols = [c for c in known if c in w.columns]
    w = w.reindex(order)[cols]
    w.columns = [LABELS.get(c, c) for c in w.columns]
    return w.reset_index()


PROPERTIES = (
    ("speaker", "spk_sim", "lower"),
    ("pitch", "f0_rmse_cents", "higher"),
    ("voicing", "voicing_agree", "lower"),
    ("content", "phone_acc", "lower"),
    ("intelligibility", "stoi", "lower"),
    ("spectrum", "mcd_db", "higher"),
)
"""(property, measure, direction in which removal hurts)."""


def layer_roles(effects: pd.DataFrame) -> pd.DataFrame:
    """For each property: the layer whose removal hurts it most, and the single layer that keeps most of it."""
    rows = []
    for prop, m, worse in PROPERTIES:
        e = effects[effects["measure"] == m]
        drop = e[e["kind"] == "drop"].dropna(subset=["layer"])
        only = e[e["kind"] == "only"].dropna(subset=["layer"])
        if drop.empty and only.empty:
            continue
        row: dict[str, Any] = {"property": prop, "measure": m}
        none = e[e["kind"] == "none"]
        row["unedited"] = float(none["mean"].iloc[0]) if len(none) else np.nan
        if len(drop):
            d = drop.loc[drop["mean"].idxmin() if worse == "lower" else drop["mean"].idxmax()]
            row.update(most_harmful_drop=int(d["layer"]), drop_mean=d["mean"], drop_ci_lo=d["ci_lo"], drop_ci_hi=d["ci_hi"])
            # Is the worst drop distinguishable from the second worst? (CIs not overlapping)
            rest = drop.drop(index=d.name)
            if len(rest):
                r = rest.loc[rest["mean"].idxmin() if worse == "lower" else rest["mean"].idxmax()]
                sep = d["ci_hi"] < r["ci_lo"] if worse == "lower" else d["ci_lo"] > r["ci_hi"]
                row.update(runner_up=int(r["layer"]), separated=bool(sep))
        if len(only):
            o = only.loc[only["mean"].idxmax() if worse == "lower" else only["mean"].idxmin()]
            row.update(best_single_layer=int(o["layer"]), only_mean=o["mean"], only_ci_lo=o["ci_lo"], only_ci_hi=o["ci_hi"])
        rows.append(row)
    return pd.DataFrame(rows)


def voice_conversion_table(effects: pd.DataFrame) -> pd.DataFrame:
    """Swaps as voice conversion (Sadok et al. Table 1 control column): COS to the target
    (donor) speaker, COS to the source, and content retention."""
    sw = effects[effects["kind"] == "swap"]
    if sw.empty:
        return pd.DataFrame()

    def get(df, name, m):
        r = df[(df["intervention"] == name) & (df["measure"] == m)]
        return (float(r["mean"].iloc[0]), float(r["ci_lo"].iloc[0]), float(r["ci_hi"].iloc[0])) if len(r) else (np.nan,) * 3

    none_phone = get(effects, "none", "phone_acc")[0]
    floor = get(effects, "other speaker", "spk_sim")[0]
    rows = []
    for name in dict.fromkeys(sw["intervention"]):
        layers = sw[sw["intervention"] == name]["layers"].iloc[0]
        tgt, src, st, ph = get(sw, name, "spk_sim_donor"), get(sw, name, "spk_sim"), get(sw, name, "stoi"), get(sw, name, "phone_acc")
        rows.append({
            "swapped_layers": layers, "intervention": name,
            "cos_target": tgt[0], "cos_target_lo": tgt[1], "cos_target_hi": tgt[2],
            "cos_source": src[0], "cos_source_lo": src[1], "cos_source_hi": src[2],
            "stoi_vs_source": st[0], "phone_acc": ph[0],
            "content_retention": ph[0] / none_phone if np.isfinite(none_phone) and none_phone > 0 else np.nan,
            "cos_source_vs_target_unedited": floor,
        })
    return pd.DataFrame(rows)


def sadok_vc_cos() -> list[tuple[str, float]]:
    """Sadok, Hauret, Bavu 2025, Table 1, voice-conversion COS (Resemblyzer), LibriSpeech test,
    from the copy shipped in ``codeclens/data/reference``."""
    t = pd.read_csv(Path(__file__).resolve().parents[2] / "data" / "reference" / "sadok2025_table1.csv")
    names = {"ancogen_melspectrogram": "AnCoGen - Melspectrogram", "ancogen_bigcodec": "AnCoGen - BigCodec",
             "ancogen_speechtokenizer": "AnCoGen - SpeechTokenizer"}
    return [(names.get(m, m), float(v)) for m, v in zip(t["model"], t["vc_cos"])]


def published_vc(vc_by_store: dict[str, pd.DataFrame]) -> pd.DataFrame:
    src = "Sadok, Hauret & Bavu 2025 (Interspeech), Table 1, Voice Conversion COS"
    rows = [{"system": s, "method": "AnCoGen attribute control", "cos_target": v, "source": src} for s, v in sadok_vc_cos()]
    for store, vc in vc_by_store.items():
        if vc.empty or vc["cos_target"].isna().all():
            continue
        best = vc.loc[vc["cos_target"].idxmax()]
        rows.append({"system": f"{store}: {best['intervention']}", "method": "layer swap (codeclens ablate)",
                     "cos_target": float(best["cos_target"]), "source": "ours"})
    return pd.DataFrame(rows)


# -- the analysis ------------------------------------------------------------------------

def _cache_key(store, cfg: AblateConfig, names: list[str], probe_key: str) -> str:
    """What an utterance's cached rows depend on (not how many utterances, examples or resamples)."""
    d = to_dict(cfg)
    for k in ("device", "examples", "n_boot", "n_utts"):
        d.pop(k)
    # The tables' checksum: a store re-extracted in place with a refitted codec keeps its path,
    # spec string and frame count, and must not be served the old codec's cached results.
    tables = 0
    for t in store.tables:
        tables = zlib.crc32(np.ascontiguousarray(t).tobytes(), tables)
    return config_hash({"store": str(store.path), "codec": store.codec.get("spec"), "cfg": d, "interventions": names,
                        "probe": probe_key, "frames": store.n_frames, "tables": tables,
                        "extract": store.manifest.get("config_hash")})


def ablate_store(store, cfg: AblateConfig, out: Path, progress: bool = True, notes: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Run the interventions on one store; returns per-utterance results and summaries."""
    from ...codecs import load_codec

    notes = notes if notes is not None else []
    device = resolve_device(cfg.device)
    codec = load_codec(store.codec["spec"], device)
    if codec.n_layers != store.n_layers:
        raise CodeclensError(f"{store.path}: codec '{store.codec['spec']}' has {codec.n_layers} layers, the store {store.n_layers}")
    interventions = ivs.parse_interventions(list(cfg.interventions), codec.n_layers, cfg.layers, cfg.swap_mode)
    chosen = choose_utterances(store, cfg.n_utts, cfg.seed)
    measures = list(cfg.measures)
    probe = None
    if "phone" in measures:
        if not has_phone_labels(store):
            notes.append(f"{store.name}: no phone labels in the store, so no phone accuracy (extract with a phone labeller)")
        else:
            picked = set(chosen)
            rest = [i for i in range(store.n_utterances) if i not in picked]
            if not rest:
                rest = chosen
                notes.append(f"{store.name}: the phone probe was trained on the evaluated utterances (no others in the store)")
            probe = fit_phone_probe(store, rest, cfg.probe_frames, cfg.seed, str(device))
            if probe is None:
                notes.append(f"{store.name}: fewer than two phone classes, no phone probe")
            else:
                notes.append(f"{store.name}: phone accuracy from {probe.source}")
    asr = ms.AsrScorer(cfg.asr, str(device)) if cfg.asr else None
    measurer = Measurer(measures, int(codec.sample_rate), str(device), probe, codec, store.tables, asr)
    distributions = ivs.code_distributions(store.codes, store.codebook_sizes)

    key = _cache_key(store, cfg, [iv.name for iv in interventions], probe.key if probe is not None else "")
    cache = out / "cache"
    all_rows: list[dict[str, Any]] = []
    example_dirs: list[Path] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chosen) * len(interventions), desc=f"ablate {store.name}", unit="edit", dynamic_ncols=True)
    for n_done, row in enumerate(chosen):
        uid = str(store.utterances["id"].iloc[row])
        f = cache / f"{row:06d}-{_slug(uid)}.json"
        rows = None
        if f.is_file():
            try:
                blob = json.loads(f.read_text())
                rows = blob["rows"] if blob.get("key") == key else None
            except (OSError, ValueError, KeyError):
                rows = None
        audio_dir = out / "audio" / _slug(uid) if n_done < cfg.examples else None
        if audio_dir is not None:
            example_dirs.append(audio_dir)
            if not (audio_dir / "decode.wav").is_file():
                rows = None  # asked for its audio examples since it was cached
        if rows is None:
            rows = ablate_utterance(store, codec, row, interventions, measurer, distributions, cfg, audio_dir, bar)
            write_json(f, {"key": key, "rows": rows})
        elif bar is not None:
            bar.update(len(interventions))
        all_rows.extend(rows)
        if bar is not None:
            bar.set_postfix_str(f"{n_done + 1}/{len(chosen)} utterances")
    if bar is not None:
        bar.close()
    per_utt = _ordered(pd.DataFrame(all_rows))
    effects = effect_table(per_utt, cfg.n_boot, cfg.seed)
    # This run's examples only: an earlier run into the same folder may have left other utterances'
    # or other interventions' audio behind.
    stems = ["original", "decode", "donor"] + [iv.slug for iv in interventions]
    audio = [p for a in example_dirs for p in (a / f"{st}.wav" for st in dict.fromkeys(stems)) if p.is_file()]
    return {
        "per_utterance": per_utt,
        "effects": effects,
        "roles": layer_roles(effects),
        "vc": voice_conversion_table(effects),
        "interventions": pd.DataFrame([{"name": iv.name, "kind": iv.kind, "layers": iv.layer_text, "slug": iv.slug} for iv in interventions]),
        "codec": pd.DataFrame([{"spec": store.codec["spec"], "n_layers": codec.n_layers, "sample_rate": codec.sample_rate}]),
        "audio": pd.DataFrame({"file": [str(p.relative_to(out)) for p in audio]}),
    }


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order (rows read back from the cache come with sorted keys)."""
    front = ["utt", "utt_id", "speaker", "kind", "intervention", "layers", "layer"]
    meas = [c for cols in COLUMNS.values() for c in cols] + ["spk_sim_donor", "donor_id", "donor_other_speaker"]
    cols = [c for c in front + meas if c in df.columns]
    return df[cols + [c for c in df.columns if c not in cols]]


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)


def _summary_sentences(store_name: str, roles: pd.DataFrame, vc: pd.DataFrame) -> list[str]:
    out = []
    for _, r in roles.iterrows():
        if "most_harmful_drop" in r and pd.notna(r.get("most_harmful_drop")):
            overlap = pd.notna(r.get("runner_up", np.nan)) and not r.get("separated", False)
            sep = f" (CI overlaps layer {int(r['runner_up'])}'s)" if overlap else ""
            out.append(f"{store_name}: dropping layer {int(r['most_harmful_drop'])} hurts {r['property']} most "
                       f"({LABELS.get(r['measure'], r['measure'])} {r['drop_mean']:.3g} [{r['drop_ci_lo']:.3g}, {r['drop_ci_hi']:.3g}]){sep}.")
    if not vc.empty and vc["cos_target"].notna().any():
        b = vc.loc[vc["cos_target"].idxmax()]
        out.append(f"{store_name}: best voice conversion by swap is '{b['intervention']}' with COS to target "
                   f"{b['cos_target']:.3f} [{b['cos_target_lo']:.3f}, {b['cos_target_hi']:.3f}] "
                   f"(unedited source vs target: {b['cos_source_vs_target_unedited']:.3f}).")
    return out


class AblateAnalysis(Analysis):
    name = "ablate"
    title = "Layer interventions: drop, truncate, swap, noise"
    Config = AblateConfig
    resumable = True  # per-utterance rows are cached under <store>/cache, keyed by config and store

    def run(self, stores, cfg: AblateConfig, out: Path, progress: bool = True) -> AnalysisResult:
        from . import figures

        from ...store import Store

        out = Path(out)
        stores = [s if isinstance(s, Store) else Store(s) for s in stores]
        if not stores:
            raise CodeclensError("ablate: give at least one store")
        artifacts: list[Artifact] = []
        summary: list[str] = []
        notes: list[str] = []
        vc_by_store: dict[str, pd.DataFrame] = {}
        roles_all: list[pd.DataFrame] = []
        used: set[str] = set()
        for s in stores:
            sub = _slug(s.name)
            while sub in used:
                sub += "_"
            used.add(sub)
            d = out / sub
            t = ablate_store(s, cfg, d, progress, notes)
            g = s.name
            _write_csv(t["per_utterance"], d / "per_utterance.csv")
            _write_csv(t["effects"], d / "effects.csv")
            _write_csv(wide_table(t["effects"]), d / "effects_table.csv")
            artifacts.append(Artifact(f"{sub}/effects_table.csv", f"{g}: intervention x measurement, mean [95% bootstrap CI] over utterances, each edit measured against the unedited decode", "table", g))
            for fig, cap in figures.effect_figures(t["effects"], d, g, LABELS, IDEAL):
                artifacts.append(Artifact(f"{sub}/{fig}", cap, "figure", g))
            if not t["roles"].empty:
                roles_all.append(t["roles"].assign(store=g, codec=s.codec["spec"]))
                _write_csv(t["roles"], d / "layer_roles.csv")
                artifacts.append(Artifact(f"{sub}/layer_roles.csv", f"{g}: layer roles: the layer whose removal hurts each property most, and the single layer that keeps most of it", "table", g))
            if not t["vc"].empty:
                _write_csv(t["vc"], d / "voice_conversion.csv")
                artifacts.append(Artifact(f"{sub}/voice_conversion.csv", f"{g}: voice conversion by layer swap: COS to target (donor) and source speaker, content retention (phone accuracy relative to the unedited decode)", "table", g))
                vc_by_store[g] = t["vc"]
                for fig, cap in figures.vc_figure(t["vc"], d, g):
                    artifacts.append(Artifact(f"{sub}/{fig}", cap, "figure", g))
            _write_csv(t["effects"].assign(store=g, codec=s.codec["spec"]), d / "effects_tidy.csv")
            artifacts.append(Artifact(f"{sub}/per_utterance.csv", f"{g}: every utterance x intervention", "table", g))
            for wav in (d / f for f in t["audio"]["file"]):
                artifacts.append(Artifact(str(wav.relative_to(out)), f"{g}: utterance {wav.parent.name}, {wav.stem.replace('_', ' ')}", "audio", f"{g} / {wav.stem.replace('_', ' ')}"))
            summary += _summary_sentences(g, t["roles"], t["vc"])
        published: list[Artifact] = []
        if vc_by_store:
            _write_csv(published_vc(vc_by_store), out / "published_vc.csv")
            published.append(Artifact("published_vc.csv", "Voice conversion COS to target: Sadok et al. 2025 (AnCoGen attribute control, LibriSpeech) next to the best layer swap here (a different method on a different corpus: context, not a replication)", "table", "published"))
        if len(roles_all) > 1:
            ra = pd.concat(roles_all, ignore_index=True)
            ra = ra[["store", "codec"] + [c for c in ra.columns if c not in ("store", "codec")]]
            _write_csv(ra, out / "layer_roles_all.csv")
            artifacts.insert(0, Artifact("layer_roles_all.csv", "Layer roles of every codec side by side: which layer's removal hurts each property most", "table", "all codecs"))
        write_json(out / "notes.json", notes)
        return AnalysisResult(self.name, self.title, tuple(artifacts), " ".join(summary + notes), tuple(published))


def ablate(stores, cfg: AblateConfig | None = None, out: str | Path = "ablate", progress: bool = True, **overrides) -> AnalysisResult:
    """Python API: ``ablate(Store(path), n_utts=5, interventions=("drop", "swap:2-8"), out="runs/ablate")``."""
    from ...config import build
    from ...store import Store

    if isinstance(stores, (str, Path, Store)):
        stores = [stores]
    stores = [Store(s) if isinstance(s, (str, Path)) else s for s in stores]
    if cfg is None:
        cfg = build(AblateConfig, overrides)
    elif overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return AblateAnalysis()(stores, cfg, out, progress)
