"""Resemblyzer speaker embeddings per utterance, for the identity stream.

From the utterance's source audio when the store can find it, else from the codec's
own decode of its tokens (so a store whose audio has moved still works). Cached per
store fingerprint: re-runs reuse them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import CodeclensError
from ...util.atomic import atomic_path


def speaker_embeddings(store, device: str, cache: Path | None = None, codec=None,
                       log: Callable[[str], None] | None = None) -> np.ndarray:
    """``[n_utterances, 256]`` unit-norm embeddings."""
    f = None if cache is None else Path(cache) / f"speaker-emb-{store.fingerprint[:16]}.npy"
    if f is not None and f.is_file():
        emb = np.load(f)
        if emb.shape[0] == store.n_utterances:
            return emb
    from ..ablate.measures import speaker_encoder
    from ..ablate.engine import utterance_scales
    from ..ablate.run import decode_codes, original_audio, utterance_codes

    enc = speaker_encoder(str(device))
    out, decoded = [], 0
    for r in range(store.n_utterances):
        audio = original_audio(store, r, 16000, 10 ** 9)
        sr = 16000
        if audio is None:
            if codec is None:
                codec = _load_codec(store, device)
            audio = decode_codes(codec, utterance_codes(store, r), scales=utterance_scales(store, r, codec))
            sr = int(codec.sample_rate)
            decoded += 1
        out.append(enc.embed(audio, sr))
    if decoded and log is not None:
        log(f"{store.name}: speaker embeddings of {decoded} utterance(s) from the codec's decode (source audio not found)")
    emb = np.stack(out).astype(np.float32)
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(f, ".npy") as tmp:
            np.save(tmp, emb)
    return emb


def _load_codec(store, device):
    from ...codecs import load_codec

    try:
        codec = load_codec(store.codec["spec"], device)
    except CodeclensError as e:
        raise CodeclensError(f"{store.path}: the identity stream needs audio: the source files are missing and "
                             f"the codec cannot be loaded ({e}); drop identity from --attributes") from None
    if codec.n_layers != store.n_layers:
        raise CodeclensError(f"{store.path}: codec '{store.codec['spec']}' has {codec.n_layers} layers, the store {store.n_layers}")
    return codec
