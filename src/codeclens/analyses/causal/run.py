"""``causal``: which RVQ layers cause which property, in the decoder and in token consumers.

Per store:

1. **Layer attribution in the decoder**: exact Shapley values of every layer for each decoder
   measure (see :mod:`.decoder`) over all 2^L layer masks (sampled permutations, with their
   standard error, above ``exact_max_layers``), with "absent" as drop-to-zero and as the
   layer's mean code; pairwise interaction indices; 95% intervals over utterances, resampling
   speakers.
2. **Interchange**: for source/donor pairs of different speakers (same sentence where the
   corpus has it), layers S are taken from the donor; a speaker-verification decision with a
   threshold calibrated on the run's own decodes (equal error rate) says whether the voice
   followed the donor.
3. **Downstream consumers**: token classifiers and a token LM (and plug-ins) scored on clean and
   patched tokens (drop / mean / swap layer k): flip rate, KL, change in log-probability, per
   layer and per time offset, and Shapley values of the consumer's confidence over layer masks.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...errors import CodeclensError
from ...util.atomic import atomic_path
from .. import ANALYSES
from ..base import Analysis, AnalysisResult, Artifact
from ..ablate.engine import utterance_codes, utterance_scales
from ..stats.paired import cluster_bootstrap, holm, sign_flip_pvalue
from . import effects as E
from .consumers import as_batch, groups_of, load_consumer
from .dose import DoseFields, check_dose
from .reencoded import ReencodeFields
from .steering import SteerFields, check_steer
from .decoder import ABSENT_VALUES, DECODER_MEASURES, Reference, decode, decode_coalition
from .patching import MODES, aligned, mean_codes, patch
from .shapley import EXACT_MAX_LAYERS, exact_shapley, full_mask, interaction_indices, sampled_shapley


@dataclasses.dataclass(frozen=True)
class CausalConfig(DoseFields, SteerFields, ReencodeFields):
    consumers: tuple[str, ...] = ("speaker", "phone", "lm")
    """Token consumers: a label column (token classifier: speaker, accent, phone, ...), lm (a token
    language model trained on the store) or python:package.module:Class (see docs/causal.md)."""
    modes: tuple[str, ...] = ("drop", "mean", "swap")
    """Token patches of layer k for consumers: drop (absent), mean (the layer's mean code), swap (from a donor)."""
    decoder: bool = True
    """Decode and measure (Shapley attribution and interchange); needs the store's codec to load."""
    measures: tuple[str, ...] = DECODER_MEASURES
    """Decoder measures: speaker, f0_kept, voicing, loudness, stoi."""
    absent: tuple[str, ...] = ("drop", "mean")
    """What an absent layer is in the decoder attribution: drop (contributes nothing), mean (its expected
    table vector: mean ablation, for codecs that decode a quantized representation) and/or mean_code
    (its mean code, for any codec)."""
    n_utts: int = 8
    """Held-out utterances measured (spread over speakers)."""
    max_seconds: float = 3.0
    """Crop each measured utterance to this long (2^L decodes each)."""
    exact_max_layers: int = 8
    """Exact Shapley values up to this many layers; sampled permutations above."""
    permutations: int = 32
    """Permutations of the sampled estimate (when L > exact_max_layers)."""
    interchange_sets: tuple[str, ...] = ("single", "suffix", "all")
    """Layer sets swapped from a donor in the interchange: single (each layer), suffix (k..L), all; () = none."""
    calibration_speakers: int = 6
    """Speakers (two utterances each) whose full decodes calibrate the speaker-verification threshold."""
    offsets: int = 6
    """Time offsets (frames, both directions) of the single-frame patch for frame-level consumers."""
    lm_steps: int = 300
    """Training steps of the token LM."""
    lm_dim: int = 64
    """Width of the token LM."""
    lm_depth: int = 2
    """Transformer blocks of the token LM."""
    activations: bool = False
    """Activation patching inside torch decoders: block × layer maps (docs/causal.md; needs decoder = true)."""
    activation_windows: int = 1
    """Time windows of the activation patches: 1 = whole utterance only; n > 1 adds n equal windows."""
    n_boot: int = 1000
    """Speaker-resampling bootstrap replicates for the intervals."""
    seed: int = 0
    """Seed of utterance choice, the LM and the bootstrap."""
    device: str = "auto"
    """Torch device (auto: CUDA when present)."""

    def __post_init__(self):
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode(s) {', '.join(bad)}; known: {', '.join(MODES)}")
        bad = [m for m in self.measures if m not in DECODER_MEASURES]
        if bad:
            raise ValueError(f"unknown measure(s) {', '.join(bad)}; known: {', '.join(DECODER_MEASURES)}")
        bad = [a for a in self.absent if a not in ABSENT_VALUES]
        if bad:
            raise ValueError(f"absent: unknown {', '.join(bad)}; known: {', '.join(ABSENT_VALUES)}")
        for name in ("n_utts", "lm_steps", "lm_dim", "lm_depth", "permutations"):
            if getattr(self, name) < (2 if name == "permutations" else 1):
                raise ValueError(f"{name} must be >= {2 if name == 'permutations' else 1}")
        if not 1 <= self.exact_max_layers <= EXACT_MAX_LAYERS:
            raise ValueError(f"exact_max_layers must be 1..{EXACT_MAX_LAYERS}")
        if not (self.max_seconds > 0):
            raise ValueError("max_seconds must be > 0")
        if self.offsets < 0 or self.n_boot < 0:
            raise ValueError("offsets and n_boot must be >= 0")
        bad = [x for x in self.interchange_sets if x not in ("single", "suffix", "all")]
        if bad:
            raise ValueError(f"interchange_sets: unknown {', '.join(bad)}; known: single, suffix, all")
        if self.activation_windows < 1:
            raise ValueError("activation_windows must be >= 1")
        if self.activations and not self.decoder:
            raise ValueError("activations needs decoder = true")
        if not self.consumers and not self.decoder:
            raise ValueError("nothing to do: give consumers or decoder = true")
        check_dose(self)
        check_steer(self)


def _stable(s: str, seed: int) -> str:
    return hashlib.blake2b(f"{seed}:{s}".encode(), digest_size=8).hexdigest()


def measured_rows(store, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` held-out utterances (speaker-disjoint test/val split when there is one), taken
    round-robin over speakers in a stable hashed order (the same utterances for every codec)."""
    u = store.utterances
    split = next((c for c in ("split_spk", "split_utt") if c in u.columns), None)
    pool = np.flatnonzero(u[split].to_numpy() != "train") if split else np.arange(len(u))
    if len(pool) == 0:
        pool = np.arange(len(u))
    ids = u["id"].astype(str).to_numpy() if "id" in u.columns else np.arange(len(u)).astype(str)
    spk = u["speaker"].astype(str).to_numpy() if "speaker" in u.columns else np.array(["?"] * len(u))
    by: dict[str, list[int]] = {}
    for i in sorted(pool, key=lambda i: _stable(ids[i], seed)):
        by.setdefault(spk[i], []).append(int(i))
    order = []
    while len(order) < n and any(by.values()):
        for s in sorted(by, key=lambda s: _stable(s, seed)):
            if by[s] and len(order) < n:
                order.append(by[s].pop(0))
    return np.array(order, dtype=np.int64)


def donor_for(store, row: int, seed: int) -> tuple[int, str]:
    """A donor of another speaker: the same sentence when the corpus has it; (row, how)."""
    u = store.utterances
    spk = u["speaker"].astype(str).to_numpy()
    other = np.flatnonzero(spk != spk[row])
    if len(other) == 0:
        raise CodeclensError(f"{store.path}: swaps and interchange need at least two speakers")
    how = "different speaker"
    for col in ("sentence", "text"):
        if col in u.columns:
            same = other[u[col].to_numpy()[other] == u[col].to_numpy()[row]]
            if len(same):
                other, how = same, f"same {col}, different speaker"
                break
    ids = u["id"].astype(str).to_numpy() if "id" in u.columns else np.arange(len(u)).astype(str)
    return int(min(other, key=lambda i: _stable(ids[i] + ids[row], seed))), how


def utt_codes(store, row: int, max_frames: int | None = None) -> np.ndarray:
    """``[T, L]`` codes of utterance ``row`` (the ablate engine's reader, frames first)."""
    return utterance_codes(store, row, max_frames).T


def _ci_rows(df: pd.DataFrame, keys: list[str], value: str, cluster: str, cfg: CausalConfig,
             family: tuple[str, ...] = ()) -> pd.DataFrame:
    """Mean per group with a speaker-clustered bootstrap interval and a sign-flip p-value against
    0, Holm-corrected within each ``family`` (e.g. the layers of one measure), from the shared
    paired statistics."""
    rows = []
    for k, g in df.groupby(keys, sort=False):
        v = g[value].to_numpy(float)
        est = cluster_bootstrap(v, g[cluster].to_numpy(), cfg.n_boot, cfg.seed)
        p = sign_flip_pvalue(v, g[cluster].to_numpy(), seed=cfg.seed) if est.n_clusters >= 2 else float("nan")
        rows.append({**dict(zip(keys, k if isinstance(k, tuple) else (k,))), "value": est.mean, "ci_low": est.lo,
                     "ci_high": est.hi, "p_value": p, "n": est.n, "n_undefined": est.n_undefined,
                     "n_speakers": est.n_clusters})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = np.nan
        for _, g in (out.groupby(list(family), sort=False) if family else [(None, out)]):
            g = g[g["p_value"].notna()]
            if len(g):
                out.loc[g.index, "p_holm"] = holm(g["p_value"].to_numpy())
    return out


# -- consumers ---------------------------------------------------------------------------


def consumer_effects(store, cfg: CausalConfig, rows: np.ndarray, log=print,
                     mean: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """``mean``: the store's mean codes (:func:`.patching.mean_codes`; computed when not given)."""
    L = store.n_layers
    mean = mean_codes(np.asarray(store.codes), store.tables) if mean is None else mean
    spk = store.utterances["speaker"].astype(str).to_numpy()
    eff, offs, shap = [], [], []
    maxf = int(round(cfg.max_seconds * store.frame_rate))
    for spec in cfg.consumers:
        lm_opts = {"steps": cfg.lm_steps, "dim": cfg.lm_dim, "depth": cfg.lm_depth}
        cons = load_consumer(spec, store, seed=cfg.seed, device=cfg.device, lm_options=lm_opts)
        name = getattr(cons, "name", spec)
        log(f"consumer {name}: {len(rows)} utterances")
        for r in rows:
            codes = utt_codes(store, int(r), maxf)
            donor_row, _ = donor_for(store, int(r), cfg.seed)
            donor = aligned(utt_codes(store, donor_row), len(codes))
            batch = [codes]
            labels = [("clean", -1)]
            for mode in cfg.modes:
                for k in range(L):
                    batch.append(patch(codes, [k], mode, mean=mean, donor=donor))
                    labels.append((mode, k))
            X, lens = as_batch(batch)
            out = np.asarray(cons.score(X, lens))
            groups = groups_of(cons, out.shape[-1])
            clean = out[0]
            for (mode, k), o in zip(labels[1:], out[1:]):
                m = E.effect(clean, o, groups, len(codes))
                eff.append({"consumer": name, "mode": mode, "layer": k + 1, "utt": int(r), "speaker": spk[r], **m})
            # confidence in the clean decision with only the layers in S present (others dropped)
            if L <= cfg.exact_max_layers:
                masks = list(range(1 << L))
                Xs, ls = as_batch([patch(codes, [l for l in range(L) if not m >> l & 1], "drop") for m in masks])
                outs = np.asarray(cons.score(Xs, ls))
                top = _top(clean, groups, len(codes))
                vals = {m: _conf(outs[i], top, groups, len(codes)) for i, m in enumerate(masks)}
                phi = exact_shapley(vals, L)
                for k in range(L):
                    shap.append({"consumer": name, "layer": k + 1, "utt": int(r), "speaker": spk[r], "shapley": float(phi[k]),
                                 "full_minus_empty": float(vals[full_mask(L)] - vals[0])})
            if clean.ndim == 2 and cfg.offsets > 0 and len(codes) > 2 * cfg.offsets + 1:
                t0s = np.linspace(cfg.offsets, len(codes) - cfg.offsets - 1, num=min(4, len(codes) - 2 * cfg.offsets)).astype(int)
                for mode in cfg.modes:
                    for k in range(L):
                        Xp = []
                        for t0 in t0s:
                            fr = np.zeros(len(codes), bool)
                            fr[t0] = True
                            Xp.append(patch(codes, [k], mode, mean=mean, donor=donor, frames=fr))
                        Xb, lb = as_batch(Xp)
                        outp = np.asarray(cons.score(Xb, lb))
                        for t0, o in zip(t0s, outp):
                            kl = E.kl_per_frame(clean[: len(codes)], o[: len(codes)], groups)
                            for d in range(-cfg.offsets, cfg.offsets + 1):
                                offs.append({"consumer": name, "mode": mode, "layer": k + 1, "offset": d, "utt": int(r),
                                             "speaker": spk[r], "kl": float(kl[t0 + d])})
    out = {}
    if eff:
        per = pd.DataFrame(eff)
        tidy = per.melt(id_vars=["consumer", "mode", "layer", "utt", "speaker"], value_vars=list(E.MEASURES),
                        var_name="measure", value_name="v")
        out["consumer_effects"] = _ci_rows(tidy, ["consumer", "mode", "layer", "measure"], "v", "speaker", cfg,
                                           family=("consumer", "mode", "measure"))
        out["consumer_per_utterance"] = per
    if shap:
        out["consumer_shapley"] = _ci_rows(pd.DataFrame(shap), ["consumer", "layer"], "shapley", "speaker", cfg,
                                          family=("consumer",))
    if offs:
        out["consumer_offsets"] = _ci_rows(pd.DataFrame(offs), ["consumer", "mode", "layer", "offset"], "kl", "speaker", cfg,
                                          family=("consumer", "mode", "layer"))
    return out


def _top(clean: np.ndarray, groups: list[int], n: int) -> list[np.ndarray]:
    parts = np.split(clean[:n] if clean.ndim == 2 else clean, np.cumsum(groups)[:-1], axis=-1)
    return [np.argmax(p, axis=-1) for p in parts]


def _conf(logp: np.ndarray, top: list[np.ndarray], groups: list[int], n: int) -> float:
    """Mean log-probability of the clean decisions."""
    parts = np.split(logp[:n] if logp.ndim == 2 else logp, np.cumsum(groups)[:-1], axis=-1)
    return float(np.mean([np.take_along_axis(p, t[..., None], -1).mean() for p, t in zip(parts, top)]))


# -- decoder -----------------------------------------------------------------------------


def decoder_attribution(store, codec, cfg: CausalConfig, rows: np.ndarray, log=print,
                        mean: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """``mean``: the store's mean codes (computed when not given)."""
    from ..ablate.measures import speaker_encoder

    L = store.n_layers
    enc = speaker_encoder("cpu")
    from ..ablate.interventions import code_distributions, expected_vectors

    all_codes = np.asarray(store.codes)
    mean = mean_codes(all_codes, store.tables) if mean is None else mean
    expected = expected_vectors(store.tables, code_distributions(all_codes, store.codebook_sizes)) \
        if "mean" in cfg.absent else None
    spk = store.utterances["speaker"].astype(str).to_numpy()
    maxf = int(round(cfg.max_seconds * store.frame_rate))
    sr = int(codec.sample_rate)
    shap, inter, refs, full_audio = [], [], {}, {}
    n_decodes = 0
    for r in rows:
        codes = utt_codes(store, int(r), maxf)
        scales = utterance_scales(store, int(r), codec)
        full = decode(codec, codes, None, scales)
        full_audio[int(r)] = full
        ref = Reference(full, sr, enc)
        refs[int(r)] = ref
        for absent in cfg.absent:
            cache: dict[int, np.ndarray] = {}

            def value(m: int) -> np.ndarray:
                nonlocal n_decodes
                if m not in cache:
                    cache[m] = ref.measure(decode_coalition(codec, codes, m, absent, mean, expected, scales), cfg.measures)
                    n_decodes += 1
                return cache[m]

            if L <= cfg.exact_max_layers:
                phi = exact_shapley(value, L)
                se = np.zeros_like(phi)
                ii = interaction_indices(value, L)
                for a in range(L):
                    for b in range(a + 1, L):
                        for j, meas in enumerate(cfg.measures):
                            inter.append({"absent": absent, "measure": meas, "layer_a": a + 1, "layer_b": b + 1,
                                          "utt": int(r), "speaker": spk[r], "interaction": float(ii[a, b, j])})
            else:
                s = sampled_shapley(value, L, cfg.permutations, cfg.seed)
                phi, se = s.phi, s.se
            total = value(full_mask(L)) - value(0)
            for k in range(L):
                for j, meas in enumerate(cfg.measures):
                    shap.append({"absent": absent, "measure": meas, "layer": k + 1, "utt": int(r), "speaker": spk[r],
                                 "shapley": float(phi[k, j]), "se": float(se[k, j]), "full_minus_empty": float(total[j])})
    out = {}
    if shap:
        per = pd.DataFrame(shap)
        out["decoder_shapley"] = _ci_rows(per, ["absent", "measure", "layer"], "shapley", "speaker", cfg,
                                          family=("absent", "measure"))
        out["decoder_shapley_per_utterance"] = per
    if inter:
        out["decoder_interactions"] = _ci_rows(pd.DataFrame(inter), ["absent", "measure", "layer_a", "layer_b"],
                                               "interaction", "speaker", cfg, family=("absent", "measure"))
    if cfg.interchange_sets:
        out["interchange"] = interchange(store, codec, cfg, rows, refs, full_audio, enc, maxf)
    log(f"decoder: {n_decodes} coalition decodes")
    return out


def eer_threshold(same: np.ndarray, diff: np.ndarray) -> float:
    """The cosine threshold where false accepts equal false rejects."""
    cand = np.unique(np.concatenate([same, diff]))
    if len(same) == 0 or len(diff) == 0:
        return float("nan")
    far = np.array([(diff >= t).mean() for t in cand])
    frr = np.array([(same < t).mean() for t in cand])
    return float(cand[int(np.argmin(np.abs(far - frr)))])


def _f0_follows(hyp, src, don) -> float:
    """Fraction of frames voiced in all three whose F0 is nearer (in cents) the donor's than the
    source's, over the frames where source and donor differ by more than a semitone (elsewhere
    "following the donor" cannot be told from staying)."""
    n = min(len(hyp.f0), len(src.f0), len(don.f0))
    v = hyp.voiced[:n] & src.voiced[:n] & don.voiced[:n]
    v[v] = np.abs(1200 * np.log2(src.f0[:n][v] / don.f0[:n][v])) > 100.0
    if not v.any():
        return float("nan")
    h, a, b = hyp.f0[:n][v], src.f0[:n][v], don.f0[:n][v]
    return float(np.mean(np.abs(np.log2(h / b)) < np.abs(np.log2(h / a))))


def interchange(store, codec, cfg: CausalConfig, rows, refs, full_audio, enc, maxf: int) -> pd.DataFrame:
    """Swap layer sets from a donor; does the speaker-verification decision follow the donor?"""
    L = store.n_layers
    spk = store.utterances["speaker"].astype(str).to_numpy()
    sr = int(codec.sample_rate)
    emb = {r: refs[r].emb for r in refs}
    donors = {}
    for r in rows:
        d, how = donor_for(store, int(r), cfg.seed)
        donors[int(r)] = (d, how)
        if d not in emb:
            emb[d] = enc.embed(decode(codec, utt_codes(store, d, maxf), None, utterance_scales(store, d, codec)), sr)
    # calibration: two utterances each of a few speakers, so same- and different-speaker pairs exist
    u = store.utterances
    for sp in list(dict.fromkeys(spk))[: cfg.calibration_speakers]:
        for i in np.flatnonzero(spk == sp)[:2]:
            if int(i) not in emb:
                emb[int(i)] = enc.embed(decode(codec, utt_codes(store, int(i), maxf), None,
                                               utterance_scales(store, int(i), codec)), sr)
    keys = list(emb)
    same, diff = [], []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            c = float(np.dot(emb[a], emb[b]) / (np.linalg.norm(emb[a]) * np.linalg.norm(emb[b]) + 1e-12))
            (same if spk[a] == spk[b] else diff).append(c)
    tau = eer_threshold(np.array(same), np.array(diff))
    sets = ([("layer", [k]) for k in range(L)] if "single" in cfg.interchange_sets else []) + \
        ([("from", list(range(k, L))) for k in range(1, L)] if "suffix" in cfg.interchange_sets else []) + \
        ([("all", list(range(L)))] if "all" in cfg.interchange_sets else [])
    from ..ablate.measures import f0_track

    from .decoder import envelope_distance

    from .reencoded import Reencoded, follow_columns

    rd = Reencoded(store, codec, rows, cfg.seed, log=lambda *_: None) if cfg.interchange_reencode else None
    rd = rd if rd is not None and rd.active else None
    rec = []
    for r in rows:
        d, how = donors[int(r)]
        codes = utt_codes(store, int(r), maxf)
        donor = utt_codes(store, d)
        looped = max(0.0, 1.0 - len(donor) / len(codes))
        src_audio = full_audio[int(r)]
        # Donor and patched decodes at the recipient's input levels (EnCodec 48 kHz), so they compare.
        scales = utterance_scales(store, int(r), codec)
        don_audio = decode(codec, aligned(donor, len(codes)), None, scales)
        src_f0, don_f0 = refs[int(r)].f0, f0_track(don_audio, sr)
        if rd is not None:
            phones = rd.phones(int(r), len(codes))
            src_read, don_read = rd.read(src_audio, phones, row=int(r)), rd.read(don_audio, None)
        for kind, layers in sets:
            audio = decode(codec, patch(codes, layers, "swap", donor=donor), None, scales)
            e = enc.embed(audio, sr)
            f0_follow = _f0_follows(f0_track(audio, sr), src_f0, don_f0)
            spec_follow = float(envelope_distance(don_audio, audio, sr) < envelope_distance(src_audio, audio, sr))
            cd = float(np.dot(e, emb[d]) / (np.linalg.norm(e) * np.linalg.norm(emb[d]) + 1e-12))
            cs = float(np.dot(e, emb[int(r)]) / (np.linalg.norm(e) * np.linalg.norm(emb[int(r)]) + 1e-12))
            name = f"{layers[0] + 1}" if kind == "layer" else (f"{layers[0] + 1}-{L}" if kind == "from" else f"1-{L}")
            rec.append({"layers": name, "kind": kind, "utt": int(r), "speaker": spk[r], "donor": spk[d], "donor_match": how,
                        "looped_fraction": looped, "cos_donor": cd, "cos_source": cs, "f0_follows_donor": f0_follow,
                        "spectrum_follows_donor": spec_follow,
                        "follows_donor": float(cd >= tau and cs < tau) if np.isfinite(tau) else np.nan, "threshold": tau,
                        **(follow_columns(src_read, don_read, rd.read(audio, phones)) if rd is not None else {})})
    per = pd.DataFrame(rec)
    out = []
    for (name, kind), g in per.groupby(["layers", "kind"], sort=False):
        row = {"layers": name, "kind": kind, "threshold": tau, "donor_match": g["donor_match"].iloc[0],
               "looped_fraction": float(g["looped_fraction"].mean())}
        extra = [c for c in ("accent_follows_donor", "accent_source_correct", "phone_acc_change") if c in g.columns]
        for col in ("follows_donor", "f0_follows_donor", "spectrum_follows_donor", "cos_donor", "cos_source", *extra):
            v = g[col].to_numpy(float)
            est = cluster_bootstrap(v, g["speaker"].to_numpy(), cfg.n_boot, cfg.seed)
            row.update({col: est.mean, f"{col}_ci_low": est.lo, f"{col}_ci_high": est.hi})
        row["n"] = len(g)
        if "accent_follows_donor" in g.columns:
            row["accent_pairs"] = int(g["accent_follows_donor"].notna().sum())
        out.append(row)
    return pd.DataFrame(out)


# -- the analysis ----------------------------------------------------------------------------


@ANALYSES.register("causal")
class CausalAnalysis(Analysis):
    name = "causal"
    title = "Causal analysis of RVQ layers: Shapley attribution, interchange, token consumers"
    Config = CausalConfig

    def run(self, stores: Sequence, cfg: CausalConfig, out: Path, progress: bool = True) -> AnalysisResult:
        from ...codecs import load_codec
        from ...store import open_stores
        from .figures import consumer_figure, offsets_figure, shapley_figure

        stores = open_stores(stores, "causal")
        log = print if progress else (lambda *_: None)
        arts: list[Artifact] = []
        lines = []
        tables: dict[str, list[pd.DataFrame]] = {}
        for st in stores:
            rows = measured_rows(st, cfg.n_utts, cfg.seed)
            # one pass over the store's codes, shared by the consumers and the decoder
            mean = mean_codes(np.asarray(st.codes), st.tables)
            res = consumer_effects(st, cfg, rows, log, mean=mean) if cfg.consumers else {}
            if cfg.decoder:
                try:
                    codec = load_codec(st.codec["spec"], None if cfg.device == "auto" else cfg.device)
                except CodeclensError as e:
                    raise CodeclensError(f"{st.path}: the decoder analysis needs the store's codec: {e}") from None
                if cfg.dose:
                    from .dose import dose_response

                    res.update(dose_response(st, codec, cfg, rows, log))
                if cfg.steer_label:
                    from .steering import steering

                    res.update(steering(st, codec, cfg, rows, log))
                res.update(decoder_attribution(st, codec, cfg, rows, log, mean=mean))
                if cfg.activations:
                    from .activations import activation_patching

                    res.update(activation_patching(st, codec, cfg, rows, log))
            for k, df in res.items():
                df.insert(0, "store", st.name)
                tables.setdefault(k, []).append(df)
            lines.extend(summarise(st.name, res, cfg))
        out = Path(out)
        captions = {
            "decoder_shapley": "Shapley value of each RVQ layer per decoder measure (vs the full decode), absent = drop "
                               "or mean code; 95% CI over utterances resampling speakers. Values sum to v(all) − v(none).",
            "decoder_interactions": "Pairwise Shapley interaction indices (0: additive layers).",
            "interchange": "Layer sets swapped from a donor of another speaker: fraction whose speaker-verification "
                           "decision (EER threshold on the run's decodes) follows the donor, with cosines.",
            "consumer_effects": "Token consumers: flip rate, KL and change in log-probability when layer k is dropped, "
                                "set to its mean code or swapped from a donor; 95% CI resampling speakers.",
            "consumer_shapley": "Shapley value of each layer for the consumer's confidence in its clean decision.",
            "consumer_offsets": "KL of a frame-level consumer at offset δ from a single patched frame (causal models: 0 for δ < 0).",
            "decoder_shapley_per_utterance": "Per-utterance Shapley values (the unit the intervals resample).",
            "consumer_per_utterance": "Per-utterance consumer effects.",
            "dose_response": "Dose-response: effect (vs the unedited decode) of patching layer k on a fraction of the "
                             "frames or interpolating its vectors towards the donor's by α; 95% CI resampling speakers.",
            "dose_per_utterance": "Per-utterance dose-response effects.",
            "steering": "SAE feature steering: effect (vs the unedited decode) of scaling the SAE latents most associated "
                        "with the label by s (reconstruction error kept); 95% CI resampling speakers.",
            "steering_latents": "The steered latents and their association with the label (train-split frames).",
            "steering_per_utterance": "Per-utterance steering effects.",
        }
        from .activations import CAPTIONS as activation_captions

        captions.update(activation_captions)
        for k, parts in tables.items():
            df = pd.concat(parts, ignore_index=True)
            with atomic_path(out / f"{k}.csv", ".csv") as tmp:
                df.to_csv(tmp, index=False)
            tables[k] = df
            arts.append(Artifact(f"{k}.csv", captions.get(k, k), "table"))
        if "decoder_shapley" in tables:
            shapley_figure(tables["decoder_shapley"], out / "decoder_shapley")
            arts.insert(0, Artifact("decoder_shapley.png", "Shapley value per RVQ layer for each decoder measure, per codec "
                                    "(bars: mean over utterances; whiskers: 95% CI resampling speakers).", "figure"))
        if "consumer_effects" in tables:
            consumer_figure(tables["consumer_effects"], out / "consumer_effects")
            arts.insert(1, Artifact("consumer_effects.png", "Flip rate of each token consumer when layer k is patched.", "figure"))
        if "consumer_offsets" in tables:
            offsets_figure(tables["consumer_offsets"], out / "consumer_offsets")
            arts.insert(2, Artifact("consumer_offsets.png", "KL at each time offset from a single patched frame.", "figure"))
        if "activation_patching" in tables:
            from .activation_figures import activation_figure

            activation_figure(tables["activation_patching"], out / "activation_patching")
            arts.insert(1, Artifact("activation_patching.png", "Block × layer maps: change of each measure when one "
                                    "decoder block's output is taken from a run where only layer(s) S came from the donor.",
                                    "figure"))
        if "dose_response" in tables:
            from .dose_figures import dose_figure

            dose_figure(tables["dose_response"], out / "dose_response")
            arts.append(Artifact("dose_response.png", "Dose-response curves per layer and measure: effect vs fraction "
                                 "of frames patched and vs α (95% bands; the square is the unedited decode).", "figure"))
        if "steering" in tables:
            from .dose_figures import steering_figure

            steering_figure(tables["steering"], out / "steering")
            arts.append(Artifact("steering.png", "Effect of scaling the label's SAE latents by s on each decoder measure "
                                 "(s = 1: the unedited decode; 95% CI).", "figure"))
        return AnalysisResult(self.name, self.title, tuple(arts), "\n".join(lines))


def summarise(name: str, res: dict[str, pd.DataFrame], cfg: CausalConfig) -> list[str]:
    """One line per finding; a layer is named only when its interval excludes 0 and its
    Holm-corrected sign-flip test (resampling speakers) rejects 0 at 5%."""
    lines = []
    d = res.get("decoder_shapley")
    if d is not None and len(d):
        for (absent, meas), g in d.groupby(["absent", "measure"], sort=False):
            sig = g[((g["ci_low"] > 0) | (g["ci_high"] < 0)) & (g["p_holm"] < 0.05)]
            if sig.empty or g["n_speakers"].max() < 2:
                lines.append(f"{name}: {meas} (absent={absent}): no layer's Shapley value is distinguishable from 0.")
                continue
            top = sig.loc[sig["value"].abs().idxmax()]
            lines.append(f"{name}: {meas} (absent={absent}) is caused most by layer {int(top['layer'])} "
                         f"(Shapley {top['value']:.3g} [{top['ci_low']:.3g}, {top['ci_high']:.3g}]).")
    c = res.get("consumer_effects")
    if c is not None and len(c):
        for (cons, mode), g in c[c["measure"] == "flip_rate"].groupby(["consumer", "mode"], sort=False):
            top = g.loc[g["value"].idxmax()]
            if not (top["ci_low"] > 0 and top["p_holm"] < 0.05):
                lines.append(f"{name}: {cons}: no {mode} of one layer flips its decisions (interval includes 0).")
            else:
                lines.append(f"{name}: {cons}: {mode} of layer {int(top['layer'])} flips {top['value']:.1%} of its decisions "
                             f"[{top['ci_low']:.1%}, {top['ci_high']:.1%}].")
    if res.get("activation_patching") is not None:
        from .activations import summarise as activation_summary

        lines.extend(activation_summary(name, res["activation_patching"]))
    ic = res.get("interchange")
    if ic is not None and len(ic):
        single = ic[(ic["kind"] == "layer") & ic["follows_donor"].notna()]
        if ic["follows_donor"].isna().all():
            lines.append(f"{name}: interchange: no speaker-verification threshold (the calibration decodes need "
                         "two utterances of one speaker and two speakers); voice-following is not decided.")
        elif len(single):
            top = single.loc[single["follows_donor"].idxmax()]
            lines.append(f"{name}: swapping layer {top['layers']} alone makes the voice follow the donor in "
                         f"{top['follows_donor']:.0%} of pairs ({top['donor_match']} donors).")
        from .reencoded import summary_lines

        lines.extend(summary_lines(name, ic))
    return lines
