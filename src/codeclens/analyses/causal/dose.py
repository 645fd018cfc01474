"""Dose-response of one RVQ layer: how a decoder measure moves as more of layer k is patched.

Two doses, per layer k and utterance (the donor is the interchange's: another speaker, the
same sentence where the corpus has one):

- ``fraction``: layer k is patched on a fraction f of the frames. The frames are the first
  ⌈f·T⌉ of one random permutation of the utterance's frames (seeded by the run's seed and the
  utterance id), so the patched sets are nested (f = 0.25 patches a superset of f = 0.1's
  frames) and f = 1 patches every frame (the full edit). A patched frame gets the donor's code
  (``swap``, a token edit through the codec's own decode), nothing (``drop``) or the layer's
  expected vector (``mean``); the last two are vector edits through ``decode_quantized``.
- ``alpha``: layer k's vectors are interpolated, q = q_clean + α (v_k(donor) − v_k(clean)),
  and decoded through ``decode_quantized``; α = 1 is the interchange of layer k.

Each decode is measured as the decoder attribution measures it (:class:`.decoder.Reference`)
against the unedited decode *of the same path* (the token decode for ``swap``, the
``decode_quantized`` of the clean quantized sum for the vector edits), and the effect is the
paired difference v(edit) − v(unedited); a decode identical to the unedited one scores exactly
0 (so a layer the decoder ignores has a flat curve at 0). Donor edits also report
``f0_follows_donor`` (the interchange's measure). Intervals resample speakers.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ...errors import CodeclensError
from .decoder import Reference, decode
from .patching import aligned, patch

DOSES = ("fraction", "alpha")
FRACTION_MODES = ("swap", "drop", "mean")


@dataclasses.dataclass(frozen=True)
class DoseFields:
    """Options of the dose-response curves (fields of :class:`~.run.CausalConfig`)."""

    dose: tuple[str, ...] = ()
    """Dose-response curves per layer: fraction (layer k patched on a random, nested fraction of the frames)
    and/or alpha (layer k's vectors interpolated between clean and donor); () = none."""
    dose_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0)
    """Fractions of frames patched (the frames: a seeded random permutation's first ones, nested)."""
    dose_alphas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    """Interpolation weights α of the donor's vectors (0: clean, 1: the donor's layer)."""
    dose_modes: tuple[str, ...] = ("swap", "drop")
    """What a patched frame of the fraction curve gets: swap (the donor's code), drop (nothing) or mean
    (the layer's expected vector); drop and mean need a codec that decodes quantized vectors."""
    dose_layers: tuple[int, ...] = ()
    """1-based layers with curves (() = every layer)."""


def check_dose(cfg) -> None:
    for name, known in (("dose", DOSES), ("dose_modes", FRACTION_MODES)):
        bad = [x for x in getattr(cfg, name) if x not in known]
        if bad:
            raise ValueError(f"{name}: unknown {', '.join(bad)}; known: {', '.join(known)}")
    for name in ("dose_fractions", "dose_alphas"):
        if any(not (0.0 <= x <= 1.0) for x in getattr(cfg, name)):
            raise ValueError(f"{name} must lie in [0, 1]")
    if any(k < 1 for k in cfg.dose_layers):
        raise ValueError("dose_layers are 1-based")


def nested_frames(n: int, fraction: float, key: str, seed: int) -> np.ndarray:
    """Bool ``[n]``: the first ⌈fraction·n⌉ frames of a permutation seeded by (seed, key)."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    out = np.zeros(n, bool)
    out[rng.permutation(n)[: int(np.ceil(round(fraction * n, 9)))]] = True
    return out


@torch.inference_mode()
def decode_vectors(codec, q: torch.Tensor) -> np.ndarray:
    """``q [T, D]`` in the codec's quantized space -> mono audio via ``decode_quantized``."""
    try:
        wave = codec.decode_quantized(q[None].to(codec.device))
    except (NotImplementedError, AttributeError):
        raise CodeclensError(f"codec '{getattr(codec, 'spec', codec)}' cannot decode a quantized representation: "
                             "no vector-level edits (alpha dose, drop/mean fractions, SAE steering)") from None
    return wave[0].detach().float().cpu().numpy()


@torch.inference_mode()
def layer_vectors(codec, codes_tl: np.ndarray, layers: Sequence[int] | None = None) -> torch.Tensor:
    """``[T, D]`` quantized sum of ``layers`` (all by default) of ``[T, L]`` codes."""
    c = torch.from_numpy(np.ascontiguousarray(codes_tl.T, dtype=np.int64))[None].to(codec.device)
    return codec.quantized(c, None if layers is None else list(layers))[0].float()


class PairedMeter:
    """Effects v(hyp) − v(unedited) of the decoder measures against one unedited decode; a decode
    identical to the unedited one gets exactly 0 without being measured. The F0 track of the
    last decode measured is kept (``last_f0``), so a caller needing it does not track twice."""

    def __init__(self, audio: np.ndarray, sr: int, enc, measures: Sequence[str]):
        self.ref = Reference(audio, sr, enc)
        self.measures = tuple(measures)
        self.base = self._values(audio, self.ref.f0)
        self.last_f0 = self.ref.f0

    def _values(self, audio: np.ndarray, f0) -> np.ndarray:
        from ..ablate.measures import voicing_agreement
        from .decoder import f0_kept

        out = []
        for m in self.measures:
            if m == "f0_kept":
                out.append(f0_kept(self.ref.f0, f0))
            elif m == "voicing":
                out.append(voicing_agreement(self.ref.f0, f0))
            else:
                out.append(float(self.ref.measure(audio, (m,))[0]))
        return np.array(out, dtype=np.float64)

    def effects(self, audio: np.ndarray) -> dict[str, float]:
        from ..ablate.measures import f0_track

        if audio.shape == self.ref.audio.shape and np.array_equal(audio, self.ref.audio):
            self.last_f0 = self.ref.f0
            d = np.zeros(len(self.measures))
        else:
            self.last_f0 = f0_track(audio, self.ref.sr)
            d = self._values(audio, self.last_f0) - self.base
        return dict(zip(self.measures, d.tolist()))


def dose_response(store, codec, cfg, rows: np.ndarray, log=print) -> dict[str, pd.DataFrame]:
    """Per-utterance effects and their summaries (see module docstring)."""
    from ..ablate.interventions import code_distributions, expected_vectors
    from ..ablate.measures import f0_track, speaker_encoder
    from .run import _ci_rows, _f0_follows, donor_for, utt_codes

    L = store.n_layers
    layers = [k - 1 for k in (cfg.dose_layers or range(1, L + 1))]
    if any(k >= L for k in layers):
        raise CodeclensError(f"{store.path}: dose_layers {list(cfg.dose_layers)} beyond the store's {L} layers")
    enc = speaker_encoder("cpu")
    sr = int(codec.sample_rate)
    maxf = int(round(cfg.max_seconds * store.frame_rate))
    vector_modes = [m for m in cfg.dose_modes if m != "swap"] if "fraction" in cfg.dose else []
    expected = expected_vectors(store.tables, code_distributions(np.asarray(store.codes), store.codebook_sizes)) \
        if "mean" in vector_modes else None
    spk = store.utterances["speaker"].astype(str).to_numpy()
    u = store.utterances
    ids = u["id"].astype(str).to_numpy() if "id" in u.columns else np.arange(len(u)).astype(str)
    rec = []
    n_decodes = 0
    for r in rows:
        r = int(r)
        codes = utt_codes(store, r, maxf)
        d, _ = donor_for(store, r, cfg.seed)
        donor = aligned(utt_codes(store, d), len(codes))
        tok = PairedMeter(decode(codec, codes), sr, enc, cfg.measures)
        src_f0, don_f0 = tok.ref.f0, f0_track(decode(codec, donor), sr)
        needs_vec = "alpha" in cfg.dose or bool(vector_modes)
        q = layer_vectors(codec, codes) if needs_vec else None
        vec = PairedMeter(decode_vectors(codec, q), sr, enc, cfg.measures) if needs_vec else None
        base = {"utt": r, "speaker": spk[r], "donor": spk[d]}

        def add(kind, mode, k, x, meter, audio, follows):
            nonlocal n_decodes
            n_decodes += 1
            e = meter.effects(audio)
            if follows:
                e["f0_follows_donor"] = _f0_follows(meter.last_f0, src_f0, don_f0)
            rec.append({"dose": kind, "mode": mode, "layer": k + 1, "x": float(x), **base, **e})

        for k in layers:
            own = layer_vectors(codec, codes, [k]) if needs_vec else None
            if "fraction" in cfg.dose:
                for f in cfg.dose_fractions:
                    fr = nested_frames(len(codes), f, ids[r], cfg.seed)
                    for mode in cfg.dose_modes:
                        if mode == "swap":
                            add("fraction", mode, k, f, tok, decode(codec, patch(codes, [k], "swap", donor=donor, frames=fr)), True)
                            continue
                        m = torch.from_numpy(fr).to(q.device)[:, None]
                        edit = q - own * m
                        if mode == "mean":
                            edit = edit + torch.as_tensor(np.asarray(expected[k], np.float32), device=q.device) * m
                        add("fraction", mode, k, f, vec, decode_vectors(codec, edit), False)
            if "alpha" in cfg.dose:
                step = layer_vectors(codec, donor, [k]) - own
                for a in cfg.dose_alphas:
                    add("alpha", "interpolate", k, a, vec, decode_vectors(codec, q + float(a) * step), True)
    log(f"dose-response: {n_decodes} decodes")
    if not rec:
        return {}
    per = pd.DataFrame(rec)
    cols = [c for c in (*cfg.measures, "f0_follows_donor") if c in per.columns]
    tidy = per.melt(id_vars=["dose", "mode", "layer", "x", "utt", "speaker"], value_vars=cols,
                    var_name="measure", value_name="v")
    # a drop / mean edit has no donor to follow
    tidy = tidy[~((tidy["measure"] == "f0_follows_donor") & tidy["mode"].isin(["drop", "mean"]))]
    summary = _ci_rows(tidy, ["dose", "mode", "measure", "layer", "x"], "v", "speaker", cfg,
                       family=("dose", "mode", "measure", "x"))
    return {"dose_response": summary, "dose_per_utterance": per}
