"""The generation direction: tokens regenerated from attributes, decoded by the codec.

**Resynthesis**: an utterance's own attributes (content, pitch, loudness, identity)
are visible, every codec token is hidden; the predicted tokens are decoded by the
codec and compared with the reference audio (the source file when the store finds
it, else the codec's decode of the original tokens) by STOI, mel-cepstral distance
and Resemblyzer speaker similarity, beside the same measures for the codec's own
decode of the original tokens (the ceiling the model can reach).

**Conversion**: the same, with the identity tokens of a *target* utterance of
another speaker; scored by Resemblyzer cosine to the target speaker and to the source
speaker (each the mean embedding of that speaker's *other* utterances; see
:func:`speaker_reference`), the source utterance's own cosine to the target speaker
(the value before conversion), and content
retention: the ablate phone probe's accuracy on the re-encoded conversion against
the source's phone labels, beside its accuracy on the re-encoded codec decode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...errors import CodeclensError
from ..ablate import measures as ms
from ..ablate.engine import utterance_scales
from ..ablate.run import decode_codes, encode_audio, original_audio
from . import streams as S
from .model import CODEC
from .training import Checkpoint, predict


def load_store_codec(store, device):
    from ...codecs import load_codec

    try:
        codec = load_codec(store.codec["spec"], device)
    except CodeclensError as e:
        raise CodeclensError(f"{store.path}: resynthesis needs the store's codec: {e}") from None
    if codec.n_layers != store.n_layers:
        raise CodeclensError(f"{store.path}: codec '{store.codec['spec']}' has {codec.n_layers} layers, the store {store.n_layers}")
    return codec


def content_probe(store, source_rows: Sequence[int], seed: int, device) -> tuple[Any, str]:
    """The ablate phone probe for content retention, trained on speakers none of ``source_rows`` has
    (None when there are none), and the sentence saying what it was trained on or why it is missing."""
    from ..ablate.phoneprobe import fit_phone_probe

    return fit_phone_probe(store, source_rows, seed=seed, device=str(device))


def crop(u: S.Utt, n: int) -> S.Utt:
    return S.Utt(u.row, u.codes[:n], {k: v[:n] for k, v in u.frames.items()}, u.identity)


def generate(ck: Checkpoint, u: S.Utt, device, identity: np.ndarray | None = None) -> np.ndarray:
    """``[T, L]`` codes predicted from ``u``'s attributes (its identity replaced by ``identity``)."""
    if identity is not None:
        u = S.Utt(u.row, u.codes, u.frames, np.asarray(identity, np.int64))
    return predict(ck, [u], [CODEC], device)[0][CODEC]


def choose_targets(store, rows: Sequence[int], pool: Sequence[int], seed: int) -> list[int]:
    """For each source row, a target row of another speaker (from ``pool``, else any), deterministic."""
    spk = store.utterances["speaker"].astype(str).to_numpy()
    out = []
    for r in rows:
        rng = np.random.default_rng([seed, int(r), 11])
        cands = [p for p in pool if spk[p] != spk[r]] or [p for p in range(len(spk)) if spk[p] != spk[r]]
        if not cands:
            raise CodeclensError(f"{store.path}: conversion needs utterances of at least two speakers")
        out.append(int(rng.choice(cands)))
    return out


def speaker_reference(store, embeddings: np.ndarray | None, speaker: str, exclude: Sequence[int]) -> tuple[np.ndarray | None, int]:
    """Unit-norm mean embedding of ``speaker``'s utterances other than rows ``exclude``, and how many
    it averages (``None, 0`` when there are none). Conversions are scored against these, never
    against the utterance itself: a conversion shares its source's words and prosody, and
    Resemblyzer is not blind to them, so a cosine to the source *utterance* overstates how much of
    the source *voice* is left."""
    if embeddings is None:
        return None, 0
    spk = store.utterances["speaker"].astype(str).to_numpy()
    rows = [r for r in np.flatnonzero(spk == str(speaker)) if int(r) not in set(int(x) for x in exclude)]
    if not rows:
        return None, 0
    m = np.asarray(embeddings, np.float64)[rows].mean(0)
    n = float(np.linalg.norm(m))
    return (m / n if n else m).astype(np.float32), len(rows)


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    import soundfile as sf

    from ...util.atomic import atomic_path

    with atomic_path(path, ".wav") as tmp:
        sf.write(tmp, np.asarray(audio, np.float32), sr, format="WAV", subtype="FLOAT")  # lossless: comparable


def resynthesise_and_convert(ck: Checkpoint, store, codec, utts: Sequence[S.Utt], targets: Sequence[S.Utt],
                             embeddings: np.ndarray | None, device, max_seconds: float, examples: int,
                             audio_dir: Path | None, probe=None) -> pd.DataFrame:
    """One row per (utterance, system) with STOI, MCD, speaker similarity and, for conversions,
    cosines to target and source and content retention."""
    sr = int(codec.sample_rate)
    enc = ms.speaker_encoder(str(device))
    n_max = max(1, int(round(max_seconds * store.frame_rate)))
    rows: list[dict[str, Any]] = []
    u_df = store.utterances
    for i, (u, tgt) in enumerate(zip(utts, targets)):
        u = crop(u, n_max)
        # EnCodec 48 kHz: the source's chunk scales restore its level in every decode of it
        # (generated tokens keep the source's length, so its first chunks line up).
        scales = utterance_scales(store, u.row, codec)
        own = decode_codes(codec, u.codes.T, scales=scales)
        src = original_audio(store, u.row, sr, len(own))
        ref = src if src is not None else own
        ref_emb = enc.embed(ref, sr)
        base = {"utt": int(u.row), "utt_id": str(u_df["id"].iloc[u.row]), "speaker": str(u_df["speaker"].iloc[u.row]),
                "reference": "source audio" if src is not None else "codec decode"}
        gen_codes = generate(ck, u, device)
        gen = decode_codes(codec, gen_codes.T, scales=scales)
        outs = {"codec decode": own, "resynthesis": gen}
        for name, audio in outs.items():
            rows.append({**base, "system": name, "stoi": ms.stoi(ref, audio, sr),
                         "mcd_db": ms.mel_cepstral_distance(ref, audio, sr),
                         "spk_sim": ms.cosine(ref_emb, enc.embed(audio, sr)),
                         "token_acc": float(np.mean(gen_codes == u.codes)) if name == "resynthesis" else 1.0})
        conv = None
        if ck.model.has_identity and embeddings is not None:
            # References: the target speaker's *other* utterances (the identity tokens come from
            # tgt itself) and the source speaker's other utterances; each falls back to the one
            # utterance when its speaker has no other.
            t_spk = str(u_df["speaker"].iloc[tgt.row])
            t_ref, n_t = speaker_reference(store, embeddings, t_spk, [tgt.row])
            if t_ref is None:
                t_audio = original_audio(store, tgt.row, sr, 10 ** 9)
                t_ref = enc.embed(t_audio if t_audio is not None else
                                  decode_codes(codec, tgt.codes.T, scales=utterance_scales(store, tgt.row, codec)), sr)
            s_ref, n_s = speaker_reference(store, embeddings, base["speaker"], [u.row])
            if s_ref is None:
                s_ref = ref_emb
            conv = decode_codes(codec, generate(ck, u, device, tgt.identity).T, scales=scales)
            c_emb = enc.embed(conv, sr)
            row = {**base, "system": "conversion", "target_utt": str(u_df["id"].iloc[tgt.row]),
                   "target_speaker": t_spk, "cos_target": ms.cosine(c_emb, t_ref),
                   "cos_source": ms.cosine(c_emb, s_ref), "cos_source_to_target": ms.cosine(ref_emb, t_ref),
                   "cos_source_utterance": ms.cosine(c_emb, ref_emb), "target_ref_utts": max(n_t, 1),
                   "source_ref_utts": max(n_s, 1),
                   "stoi": ms.stoi(ref, conv, sr), "mcd_db": ms.mel_cepstral_distance(ref, conv, sr)}
            if probe is not None:
                labels = store.frames["phone"].to_numpy()[int(u_df["frame_offset"].iloc[u.row]):][: len(u.codes)]
                row["content_retention"] = probe.accuracy(encode_audio(codec, conv), store.tables, labels)
                row["content_codec_decode"] = probe.accuracy(encode_audio(codec, own), store.tables, labels)
            rows.append(row)
        if audio_dir is not None and i < examples:
            d = audio_dir / base["utt_id"].replace("/", "_")
            d.mkdir(parents=True, exist_ok=True)
            if src is not None:
                _write_wav(d / "original.wav", src, sr)
            _write_wav(d / "decode.wav", own, sr)
            _write_wav(d / "resynthesis.wav", gen, sr)
            if conv is not None:
                _write_wav(d / "conversion.wav", conv, sr)
    return pd.DataFrame(rows)


def summarise(per_utt: pd.DataFrame) -> pd.DataFrame:
    """Mean of every measure per system."""
    if per_utt.empty:
        return per_utt
    num = [c for c in per_utt.columns if c not in ("utt",) and pd.api.types.is_numeric_dtype(per_utt[c])]
    out = per_utt.groupby("system", sort=False)[num].mean().reset_index()
    out.insert(1, "n_utts", per_utt.groupby("system", sort=False).size().to_numpy())
    return out
