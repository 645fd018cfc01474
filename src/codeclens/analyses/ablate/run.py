"""The ``ablate`` analysis: edit codes layer by layer, decode, measure what changed.

For every store (one codec x corpus) it reloads the codec from the store's
manifest, takes ``n_utts`` utterances' codes from the store, decodes them
unedited and after each intervention, and measures each edited decode against
the unedited decode (and against the donor's decode for swaps). Decoding,
measuring and the per-utterance cache are the shared engine
(:mod:`.engine`); donors and their alignment :mod:`.donors`; the paired
statistics :mod:`codeclens.analyses.stats.paired` via :mod:`.tables`; the
summary and its checks :mod:`.summary`. This module wires them together.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...config import to_dict
from ...errors import CodeclensError
from ...util.atomic import atomic_path, write_json
from ...util.device import resolve_device
from ..base import Analysis, AnalysisResult, Artifact
from . import interventions as ivs
from . import measures as ms
from .donors import align_donor, choose_donor, choose_utterances
from .engine import Engine, Measurer, UtteranceCache, cache_key, decode_codes, encode_audio, original_audio, slug, utterance_codes, utterance_scales, write_wav
from .phoneprobe import fit_phone_probe, has_phone_labels, majority_rate
from .published import published_vc
from .summary import run_checks, summary_sentences
from .tables import COLUMNS, IDEAL, LABELS, effect_table, layer_contrasts, layer_roles, rank_swaps, voice_conversion_table, wide_table

MEASURES = ("speaker", "pitch", "stoi", "mcd", "loudness", "phone")
"""Measure groups a user can pick (``wer`` is added when an ASR checkpoint is given)."""

__all__ = ["AblateAnalysis", "AblateConfig", "ablate", "ablate_store", "decode_codes", "encode_audio"]


@dataclasses.dataclass(frozen=True)
class AblateConfig:
    interventions: tuple[str, ...] = ("drop", "mean", "truncate", "only", "swap", "noise")
    """Interventions: drop, mean (mean ablation), truncate (keep 1..k), only, swap, noise; each swept over --layers, or kind:SET for one multi-layer edit (swap:2-8)."""
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
    donor_same_sentence: bool = True
    """Prefer a donor saying the same sentence (the store's sentence or text column) when there is one."""
    donor_align: str = "dtw"
    """How donor codes are put on the source's frames: dtw (on the codes' lookups) or crop (crop/loop)."""
    swap_mode: str = "both"
    """Swept swaps: single (layer k), suffix (layers k..L) or both."""
    measures: tuple[str, ...] = MEASURES
    """Measures: speaker, pitch, stoi, mcd, loudness, phone."""
    max_seconds: float = 8.0
    """Crop utterances to this many seconds (measures are slow on long audio)."""
    n_boot: int = 1000
    """Bootstrap resamples for the 95 percent CIs (and Monte Carlo sign flips beyond 12 clusters)."""
    cluster: str = "speaker"
    """Unit the bootstrap and sign-flip tests resample: speaker (utterances of a speaker together) or utterance."""
    min_defined: float = 0.8
    """Fraction of utterances with a defined value a cell needs before its layer is ranked."""
    min_codec_spk_sim: float = 0.75
    """Below this speaker similarity of original vs unedited decode the codec is too poor to name layer roles."""
    min_codec_stoi: float = 0.75
    """Below this STOI of original vs unedited decode the codec is too poor to name layer roles."""
    seed: int = 0
    """Seed for utterance choice, donors, noise codes and resampling."""
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
        if self.donor_align not in ("dtw", "crop"):
            raise ValueError("donor_align must be dtw or crop")
        if self.cluster not in ("speaker", "utterance"):
            raise ValueError("cluster must be speaker or utterance")
        if not 0.0 <= self.min_defined <= 1.0:
            raise ValueError("min_defined must be in [0, 1]")
        bad = [m for m in self.measures if m not in MEASURES]
        if bad:
            raise ValueError(f"unknown measure(s) {', '.join(bad)}; known: {', '.join(MEASURES)}")
        if not self.interventions:
            raise ValueError("give at least one intervention")


ROW_INDEPENDENT = ("device", "examples", "n_boot", "n_utts", "cluster", "min_defined", "min_codec_spk_sim", "min_codec_stoi")
"""Options that change the summaries but not an utterance's rows (left out of the cache key)."""


def row_options(cfg: AblateConfig) -> dict[str, Any]:
    d = to_dict(cfg)
    for k in ROW_INDEPENDENT:
        d.pop(k)
    return d


# -- per-utterance work ---------------------------------------------------------------

def ablate_utterance(
    store, engine: Engine, row: int, interventions: Sequence[ivs.Intervention],
    distributions: list[np.ndarray], cfg: AblateConfig, audio_dir: Path | None, bar=None,
) -> list[dict[str, Any]]:
    """All intervention rows of one utterance (writes its audio examples when ``audio_dir``)."""
    codec, measurer = engine.codec, engine.measurer
    u = store.utterances
    sr = int(codec.sample_rate)
    max_frames = max(1, int(round(cfg.max_seconds * codec.frame_rate)))
    codes = utterance_codes(store, row, max_frames)
    labels = None
    if has_phone_labels(store):
        off = int(u["frame_offset"].iloc[row])
        labels = store.frames["phone"].to_numpy()[off : off + codes.shape[1]]
    ref_audio, ref, none_vals = engine.begin(codes, labels, utterance_scales(store, row, codec))
    if measurer.probe is not None and labels is not None:
        none_vals["phone_chance"] = majority_rate(labels)  # what always answering this utterance's commonest phone scores
    base = {"utt": row, "utt_id": str(u["id"].iloc[row]), "speaker": str(u["speaker"].iloc[row]) if "speaker" in u.columns else ""}
    rows: list[dict[str, Any]] = []

    def add(kind: str, name: str, layers: str, layer: int | None, values: dict[str, float], **extra):
        rows.append({**base, "kind": kind, "intervention": name, "layers": layers, "layer": layer, **extra, **values})

    # The unedited decode against itself (trivial for similarity measures; phone accuracy is not).
    add("none", "none", ivs.format_layers(range(codec.n_layers)), None, none_vals)
    orig = original_audio(store, row, sr, len(ref_audio))
    if orig is not None:
        # What the codec itself loses: the original audio as the reference, its decode as the hypothesis.
        # (No phone accuracy here: the hypothesis is the unedited decode, already scored in the 'none' row.)
        add("codec", "codec (original vs decode)", "", None, measurer.measure(measurer.reference(orig), ref_audio, None))

    donor_codes = donor_ref = None
    donor_info: dict[str, Any] = {}
    needs_donor = any(iv.needs_donor for iv in interventions)
    if needs_donor or "speaker" in cfg.measures:
        dn = choose_donor(store, row, cfg.donor_speaker_different, cfg.seed, cfg.donor_same_sentence)
        raw = utterance_codes(store, dn.row, max_frames)
        donor_codes, al = align_donor(store.tables, codes, raw, cfg.donor_align)
        donor_ref = measurer.reference(decode_codes(codec, raw, None, utterance_scales(store, dn.row, codec)))
        donor_info = {"donor_id": str(u["id"].iloc[dn.row]), "donor_other_speaker": dn.other_speaker,
                      "donor_same_sentence": dn.same_sentence, "donor_align": al.method,
                      "donor_repeat_frac": al.repeat_frac, "donor_skip_frac": al.skip_frac}
        if measurer.enc is not None:
            # Floor for speaker similarity: the unedited decode against another speaker's decode.
            add("reference", "other speaker", "", None, {"spk_sim": ms.cosine(ref.emb, donor_ref.emb)}, **donor_info)

    examples: dict[str, np.ndarray] = {}
    if audio_dir is not None:
        examples["decode"] = ref_audio
        if orig is not None:
            examples["original"] = orig
        if donor_ref is not None and needs_donor:
            examples["donor"] = donor_ref.audio
    for iv in interventions:
        rng = np.random.default_rng([cfg.seed, row, zlib.crc32(iv.name.encode())])
        ed = ivs.apply(iv, codes, donor=donor_codes, distributions=distributions, rng=rng)
        hyp, vals = engine.run(ed)
        extra: dict[str, Any] = {}
        if iv.needs_donor:
            extra = donor_info
            if measurer.enc is not None:
                vals["spk_sim_donor"] = measurer.similarity(donor_ref, hyp)
        add(iv.kind, iv.name, iv.layer_text, iv.single_layer, vals, **extra)
        if audio_dir is not None:
            examples[iv.slug] = hyp
        if bar is not None:
            bar.update(1)
    if audio_dir is not None:
        for name, a in examples.items():
            write_wav(audio_dir / f"{name}.wav", a, sr)
    return rows


# -- one store --------------------------------------------------------------------------

def ablate_store(store, cfg: AblateConfig, out: Path, progress: bool = True, notes: list[str] | None = None) -> dict[str, Any]:
    """Run the interventions on one store; returns per-utterance results and summaries."""
    from ...codecs import load_codec
    from ...codecs.base import CodecAdapter

    notes = notes if notes is not None else []
    device = resolve_device(cfg.device)
    codec = load_codec(store.codec["spec"], device)
    if codec.n_layers != store.n_layers:
        raise CodeclensError(f"{store.path}: codec '{store.codec['spec']}' has {codec.n_layers} layers, the store {store.n_layers}")
    interventions = ivs.parse_interventions(list(cfg.interventions), codec.n_layers, cfg.layers, cfg.swap_mode)
    if any(iv.kind == "mean" for iv in interventions) and type(codec).decode_quantized is CodecAdapter.decode_quantized:
        # Fail before any work: mean ablation decodes a vector, which this codec cannot.
        raise CodeclensError(f"codec '{store.codec['spec']}' cannot decode a quantized representation (no decode_quantized), "
                             "so no mean ablation: leave 'mean' out of --interventions")
    chosen = choose_utterances(store, cfg.n_utts, cfg.seed)
    probe = None
    if "phone" in cfg.measures:
        probe, said = fit_phone_probe(store, chosen, cfg.probe_frames, cfg.seed, str(device))
        notes.append(f"{store.name}: {said}")
    asr = ms.AsrScorer(cfg.asr, str(device)) if cfg.asr else None
    measurer = Measurer(list(cfg.measures), int(codec.sample_rate), str(device), probe, codec, store.tables, asr)
    distributions = ivs.code_distributions(store.codes, store.codebook_sizes)
    expected = ivs.expected_vectors(store.tables, distributions) if any(iv.kind == "mean" for iv in interventions) else None
    engine = Engine(codec, measurer, expected)

    key = cache_key(store, store.codec["spec"], row_options(cfg), interventions=[iv.name for iv in interventions],
                    probe=probe.key if probe is not None else "")
    cache = UtteranceCache(out / "cache", key)
    all_rows: list[dict[str, Any]] = []
    example_dirs: list[Path] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chosen) * len(interventions), desc=f"ablate {store.name}", unit="edit", dynamic_ncols=True)
    for n_done, row in enumerate(chosen):
        uid = str(store.utterances["id"].iloc[row])
        rows = cache.get(row, uid)
        audio_dir = out / "audio" / slug(uid) if n_done < cfg.examples else None
        if audio_dir is not None:
            example_dirs.append(audio_dir)
            if not (audio_dir / "decode.wav").is_file():
                rows = None  # asked for its audio examples since it was cached
        if rows is None:
            rows = ablate_utterance(store, engine, row, interventions, distributions, cfg, audio_dir, bar)
            cache.put(row, uid, rows)
        elif bar is not None:
            bar.update(len(interventions))
        all_rows.extend(rows)
        if bar is not None:
            bar.set_postfix_str(f"{n_done + 1}/{len(chosen)} utterances")
    if bar is not None:
        bar.close()
    per_utt = _ordered(pd.DataFrame(all_rows))
    effects = effect_table(per_utt, cfg.n_boot, cfg.seed, cfg.cluster)
    checks = run_checks(per_utt, effects, cfg.min_codec_spk_sim, cfg.min_codec_stoi, cfg.n_boot, cfg.seed, cfg.cluster)
    vc = voice_conversion_table(per_utt, codec.n_layers, cfg.n_boot, cfg.seed, cfg.cluster, cfg.min_defined)
    if checks.content_chance and not vc.empty:
        vc = rank_swaps(vc, use_content=False, min_defined=cfg.min_defined)
    # This run's examples only: an earlier run into the same folder may have left other utterances'
    # or other interventions' audio behind.
    stems = ["original", "decode", "donor"] + [iv.slug for iv in interventions]
    audio = [p for a in example_dirs for p in (a / f"{st}.wav" for st in dict.fromkeys(stems)) if p.is_file()]
    return {
        "per_utterance": per_utt,
        "effects": effects,
        "roles": layer_roles(per_utt, effects, cfg.n_boot, cfg.seed, cfg.min_defined, cfg.cluster),
        "contrasts": layer_contrasts(per_utt, effects, cfg.n_boot, cfg.seed, cfg.cluster),
        "vc": vc,
        "checks": checks,
        "interventions": pd.DataFrame([{"name": iv.name, "kind": iv.kind, "layers": iv.layer_text, "slug": iv.slug} for iv in interventions]),
        "codec": pd.DataFrame([{"spec": store.codec["spec"], "n_layers": codec.n_layers, "sample_rate": codec.sample_rate}]),
        "audio": pd.DataFrame({"file": [str(p.relative_to(out)) for p in audio]}),
    }


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order (rows read back from the cache come with sorted keys)."""
    front = ["utt", "utt_id", "speaker", "kind", "intervention", "layers", "layer"]
    meas = [c for cols in COLUMNS.values() for c in cols] + ["phone_chance", "spk_sim_donor", "donor_id", "donor_other_speaker",
                                                             "donor_same_sentence", "donor_align", "donor_repeat_frac", "donor_skip_frac"]
    cols = [c for c in front + meas if c in df.columns]
    return df[cols + [c for c in df.columns if c not in cols]]


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)


class AblateAnalysis(Analysis):
    name = "ablate"
    title = "Layer interventions: drop, mean-ablate, truncate, swap, noise"
    Config = AblateConfig
    resumable = True  # per-utterance rows are cached under <store>/cache, keyed on the store's content and the config

    def run(self, stores, cfg: AblateConfig, out: Path, progress: bool = True) -> AnalysisResult:
        from . import figures

        from ...store import open_stores

        out = Path(out)
        stores = open_stores(stores, "ablate")
        artifacts: list[Artifact] = []
        summary: list[str] = []
        notes: list[str] = []
        vc_by_store: dict[str, pd.DataFrame] = {}
        roles_all: list[pd.DataFrame] = []
        used: set[str] = set()
        for s in stores:
            sub = slug(s.name)
            while sub in used:
                sub += "_"
            used.add(sub)
            d = out / sub
            t = ablate_store(s, cfg, d, progress, notes)
            g = s.name
            _write_csv(t["per_utterance"], d / "per_utterance.csv")
            _write_csv(t["effects"], d / "effects.csv")
            _write_csv(wide_table(t["effects"]), d / "effects_table.csv")
            artifacts.append(Artifact(f"{sub}/effects_table.csv", f"{g}: intervention x measurement, mean [95% {cfg.cluster}-clustered bootstrap CI] over utterances, each edit measured against the unedited decode; undefined values counted, not averaged", "table", g))
            for fig, cap in figures.effect_figures(t["effects"], d, g, LABELS, IDEAL):
                artifacts.append(Artifact(f"{sub}/{fig}", cap, "figure", g))
            if not t["roles"].empty:
                roles_all.append(t["roles"].assign(store=g, codec=s.codec["spec"]))
                _write_csv(t["roles"], d / "layer_roles.csv")
                artifacts.append(Artifact(f"{sub}/layer_roles.csv", f"{g}: layer roles from paired tests: the layer whose drop (and mean ablation) hurts each property most, its paired effect and Holm-corrected tests against the unedited decode and every other layer, and the single layer that keeps most of it", "table", g))
            if not t["contrasts"].empty:
                _write_csv(t["contrasts"], d / "layer_contrasts.csv")
                artifacts.append(Artifact(f"{sub}/layer_contrasts.csv", f"{g}: every pair of layers under the same edit, per measure: paired per-utterance difference with a {cfg.cluster}-clustered 95% CI, sign-flip p and Holm over the pairs", "table", g))
            if not t["vc"].empty:
                _write_csv(t["vc"], d / "voice_conversion.csv")
                artifacts.append(Artifact(f"{sub}/voice_conversion.csv", f"{g}: voice conversion by layer swap with 95% CIs: COS to target (donor) and source speaker, content retention (phone accuracy / the unedited decode's, per utterance), ranked on donor gain x retention; swaps of every layer are the donor itself and are not ranked", "table", g))
                vc_by_store[g] = t["vc"]
                for fig, cap in figures.vc_figure(t["vc"], d, g):
                    artifacts.append(Artifact(f"{sub}/{fig}", cap, "figure", g))
            _write_csv(t["effects"].assign(store=g, codec=s.codec["spec"]), d / "effects_tidy.csv")
            artifacts.append(Artifact(f"{sub}/per_utterance.csv", f"{g}: every utterance x intervention", "table", g))
            for wav in (d / f for f in t["audio"]["file"]):
                artifacts.append(Artifact(str(wav.relative_to(out)), f"{g}: utterance {wav.parent.name}, {wav.stem.replace('_', ' ')}", "audio", f"{g} / {wav.stem.replace('_', ' ')}"))
            summary += summary_sentences(g, t["roles"], t["vc"], t["checks"])
        published: list[Artifact] = []
        if vc_by_store:
            _write_csv(published_vc(vc_by_store), out / "published_vc.csv")
            published.append(Artifact("published_vc.csv", "Voice conversion COS to target: Sadok et al. 2025 (AnCoGen attribute control, LibriSpeech) next to the best-ranked layer swap here (a different method on a different corpus: context, not a replication)", "table", "published"))
        if len(roles_all) > 1:
            ra = pd.concat(roles_all, ignore_index=True)
            ra = ra[["store", "codec"] + [c for c in ra.columns if c not in ("store", "codec")]]
            _write_csv(ra, out / "layer_roles_all.csv")
            artifacts.insert(0, Artifact("layer_roles_all.csv", "Layer roles of every codec side by side: which layer's removal hurts each property most (paired tests)", "table", "all codecs"))
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
