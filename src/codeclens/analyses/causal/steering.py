"""SAE feature steering: edit the frame-level SAE latents associated with a label, decode, measure.

A TopK SAE (:mod:`codeclens.analyses.sae.model`) reads a representation that is a sum of
table lookups, ``layer:k`` or ``cumulative:k``, so it enters the codec's quantized sum q
additively. Per frame, with z = SAE.encode(x), the chosen latents are multiplied by s
(s = 0 zeroes them) to give z', and the edit keeps the SAE's reconstruction error term:

    x' = x + dec(z') − dec(z) = x + scale · W_dec (z' − z),   q' = q + (x' − x),

decoded through ``decode_quantized``. So s = 1 is exactly the identity, and a latent that is
inactive on every frame changes nothing (z' = z bit for bit). Effects are paired against the
unedited vector decode (``decode_quantized(q)``) with the decoder measures, as in
:mod:`.dose`.

Which latents: ``steer_label`` is a store label (``f0_hz``, ``phone``, ...; ``phone=aa`` for
one class). On the SAE's training frames (the store's train split, never a measured speaker)
every latent is scored as ``sae-latents`` scores it (:func:`~codeclens.analyses.sae.latents.probe_latents`:
purity for categorical labels, |Spearman ρ| for continuous ones); the ``steer_latents`` best
that beat their own shuffled-label null are edited. The SAE is ``steer_sae`` (a directory
``sae-latents`` or ``sae`` saved) or, when empty, a small one trained here on the same frames.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ...errors import CodeclensError


@dataclasses.dataclass(frozen=True)
class SteerFields:
    """Options of SAE feature steering (fields of :class:`~.run.CausalConfig`)."""

    steer_label: str = ""
    """SAE feature steering: edit the latents most associated with this label (f0_hz, phone, ...; phone=aa
    for one class); "" = no steering."""
    steer_sae: str = ""
    """A saved SAE directory (sae-latents writes them under stores/<store>/saes/<repr>); "" = train a small
    one on the store's train-split frames."""
    steer_repr: str = ""
    """Representation the SAE reads: layer:k or cumulative:k ("" = the saved SAE's own, else cumulative:L)."""
    steer_scales: tuple[float, ...] = (0.0, 0.5, 2.0)
    """Factors s applied to the chosen latents' activations (0 zeroes them; 1 is the identity)."""
    steer_latents: int = 2
    """How many latents are edited (the most associated with the label that beat the shuffled null)."""
    steer_epochs: int = 20
    """Epochs of the SAE trained when no steer_sae is given (4 d latents, k = ceil(0.25 d))."""


def check_steer(cfg) -> None:
    if cfg.steer_latents < 1 or cfg.steer_epochs < 1:
        raise ValueError("steer_latents and steer_epochs must be >= 1")
    if any(not (s >= 0) for s in cfg.steer_scales):
        raise ValueError("steer_scales must be >= 0")
    if cfg.steer_repr and not cfg.steer_repr.split(":")[0] in ("layer", "cumulative"):
        raise ValueError("steer_repr must be layer:k or cumulative:k (a sum of table lookups)")


def repr_layers(rep, n_layers: int) -> list[int]:
    """0-based layers whose lookups sum to ``rep`` (layer:k or cumulative:k)."""
    if rep.pooled or rep.kind not in ("layer", "cumulative"):
        raise CodeclensError(f"SAE steering needs a frame-level sum of table lookups (layer:k, cumulative:k), not {rep.name}")
    k = int(rep.layer)
    if not 1 <= k <= n_layers:
        raise CodeclensError(f"{rep.name}: the store has {n_layers} layers")
    return [k - 1] if rep.kind == "layer" else list(range(k))


@torch.inference_mode()
def steer_delta(sae, x: torch.Tensor, latents: Sequence[int], scale: float) -> tuple[torch.Tensor, float]:
    """``(x' − x [T, D], fraction of frames where a chosen latent is active)`` for ``x [T, D]``."""
    z = sae.encode(x.to(sae.W_dec.device).float())
    z2 = z.clone()
    idx = torch.as_tensor(list(latents), dtype=torch.long, device=z.device)
    z2[:, idx] = z[:, idx] * float(scale)
    delta = ((z2 - z) @ sae.W_dec.t()) * sae.scale
    return delta.to(x.device), float((z[:, idx] > 0).any(1).float().mean()) if len(z) else 0.0


def train_rows(store) -> np.ndarray:
    """Frames of the SAE and the latent association: the train split's (speaker-disjoint when the
    store has one), else every frame."""
    u = store.utterances
    split = next((c for c in ("split_spk", "split_utt", "split") if c in u.columns), None)
    if split is None:
        return np.arange(store.n_frames)
    rows = np.flatnonzero(u[split].astype(str).to_numpy()[store.frame_utt] == "train")
    return rows if len(rows) else np.arange(store.n_frames)


def load_or_train(store, cfg, device):
    """(SAE, its representation) from ``steer_sae`` or trained on the train-split frames."""
    if cfg.steer_sae:
        from ..sae.io import load_sae

        sae, meta = load_sae(cfg.steer_sae, device)
        name = cfg.steer_repr or meta.get("repr") or f"cumulative:{store.n_layers}"
        [rep] = store.reprs(name)
        d = int(store.materialize(rep, np.arange(1)).shape[1])
        if d != sae.shape.d:
            raise CodeclensError(f"{cfg.steer_sae}: the SAE reads {sae.shape.d} dimensions, {rep.name} has {d}")
        return sae, rep
    from ..sae.sweep import SAEConfig, StoreSource, TrainConfig, train_sweep

    [rep] = store.reprs(cfg.steer_repr or f"cumulative:{store.n_layers}")
    [m] = train_sweep([SAEConfig(4.0, 0.25, cfg.steer_epochs)], StoreSource(store, rep, train_rows(store)),
                      TrainConfig(lr=1e-3, eps=1e-8, batch_size=256, normalize=True), cfg.seed, device, progress=False)
    return m.sae.eval(), rep


def choose_latents(sae, store, rep, label: str, n: int, seed: int = 0, null_shuffles: int = 5,
                   min_active: int = 10) -> pd.DataFrame:
    """The ``n`` latents most associated with ``label`` (``name`` or ``name=class``) on the train
    frames that beat their shuffled-label null: rows of ``probe_latents``, best first."""
    from ..sae.latents import probe_latents
    from ..sae.study import encode_np

    name, _, cls = label.partition("=")
    if name not in store.label_columns():
        raise CodeclensError(f"{store.path}: no label '{name}' to steer; available: {', '.join(store.label_columns())}")
    rows = train_rows(store)
    z, _ = encode_np(sae, store.materialize(rep, rows), sae.W_dec.device)
    df = probe_latents(z, {name: store.frame_column(name)[rows]}, min_active, groups=store.frame_utt[rows],
                       null_shuffles=null_shuffles, seed=seed)
    if len(df):
        df = df[df["score"] > df["null_score"].fillna(-np.inf)]
        if cls:
            df = df[df["best"].astype(str) == cls]
    if not len(df):
        raise CodeclensError(f"{store.path}: no SAE latent of {rep.name} is associated with '{label}' beyond its "
                             "shuffled-label null (train a larger SAE, or steer another label)")
    return df.sort_values("score", ascending=False).head(n).reset_index(drop=True)


def steering(store, codec, cfg, rows: np.ndarray, log=print, sae=None, rep=None,
             latents: Sequence[int] | None = None) -> dict[str, pd.DataFrame]:
    """Per-utterance effects of scaling the chosen latents, and their summaries (``sae``/``rep``/
    ``latents`` override the config's choice, for callers that bring their own)."""
    from ...util.device import resolve_device
    from ..ablate.measures import speaker_encoder
    from .dose import PairedMeter, decode_vectors, layer_vectors
    from .run import _ci_rows, utt_codes

    device = resolve_device(None if cfg.device == "auto" else cfg.device)
    chosen = None
    if sae is None:
        sae, rep = load_or_train(store, cfg, device)
    if latents is None:
        chosen = choose_latents(sae, store, rep, cfg.steer_label, cfg.steer_latents, cfg.seed)
        latents = chosen["latent"].astype(int).tolist()
    bad = [j for j in latents if not 0 <= j < sae.shape.d_z]
    if bad:
        raise CodeclensError(f"latent(s) {bad} outside the SAE's {sae.shape.d_z}")
    own = repr_layers(rep, store.n_layers)
    enc = speaker_encoder("cpu")
    sr = int(codec.sample_rate)
    maxf = int(round(cfg.max_seconds * store.frame_rate))
    spk = store.utterances["speaker"].astype(str).to_numpy()
    rec = []
    for r in rows:
        codes = utt_codes(store, int(r), maxf)
        q = layer_vectors(codec, codes)
        x = layer_vectors(codec, codes, own)
        meter = PairedMeter(decode_vectors(codec, q), sr, enc, cfg.measures)
        for s in cfg.steer_scales:
            delta, active = steer_delta(sae, x, latents, s)
            audio = decode_vectors(codec, q + delta.to(q.device))
            rec.append({"label": cfg.steer_label, "repr": rep.name, "latents": " ".join(map(str, latents)),
                        "scale": float(s), "utt": int(r), "speaker": spk[r], "active_fraction": active,
                        "edit_norm": float(delta.norm(dim=-1).mean()) if len(delta) else 0.0,
                        **meter.effects(audio)})
    log(f"SAE steering: {len(rec)} decodes, latents {latents} of {rep.name}")
    per = pd.DataFrame(rec)
    tidy = per.melt(id_vars=["label", "repr", "latents", "scale", "utt", "speaker"], value_vars=list(cfg.measures),
                    var_name="measure", value_name="v")
    out = {"steering": _ci_rows(tidy, ["label", "repr", "latents", "scale", "measure"], "v", "speaker", cfg,
                                family=("measure",)),
           "steering_per_utterance": per}
    if chosen is not None:
        out["steering_latents"] = chosen
    return out
