"""Fitting the attribute model on a store: streams, identity tokens, training, resuming.

A checkpoint directory holds the last checkpoint only (``checkpoint.json`` +
``model.safetensors`` + ``optimizer.pt``), replaced atomically. Calling
:func:`fit` again with the same store and settings resumes from it (or returns it
at once when it has all its steps); more ``steps`` continue the run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...errors import CodeclensError
from . import streams as S
from .config import AttributesConfig, ModelConfig, StreamConfig, TrainConfig
from .model import AttributeModel
from .training import Checkpoint, train

# Settings a resumed run may change without retraining from scratch.
_RESUMABLE = {"steps", "checkpoint_every", "device", "threads"}


@dataclasses.dataclass
class Prepared:
    """A store's streams, split and identity tokens, ready for training or evaluation."""

    split: str
    train_rows: list[int]
    test_rows: list[int]
    vocab: S.Vocab
    identity: S.IdentityQuantizer | None
    tokens: np.ndarray | None
    """``[n_utterances, k]`` identity tokens (None without an identity stream)."""
    embeddings: np.ndarray | None
    """``[n_utterances, 256]`` speaker embeddings (None without an identity stream)."""

    def utts(self, store, sc: StreamConfig, rows) -> list[S.Utt]:
        return S.utterances(store, sc, self.vocab, rows, self.tokens)


def prepare(store, sc: StreamConfig, split: str, device, cache: Path | None, ck: Checkpoint | None = None,
            log: Callable[[str], None] | None = None) -> Prepared:
    """Streams of ``store``; with ``ck``, its streams, vocabulary and identity quantizer (not refitted)."""
    sc = ck.streams if ck is not None else sc
    S.check_labels(store, sc)
    split, tr, te = S.split_rows(store, split)
    vocab = ck.vocab if ck is not None else S.build_vocab(store, sc, tr)
    quant, tokens, emb = None, None, None
    if "identity" in sc.attributes:
        from .embeddings import speaker_embeddings

        emb = speaker_embeddings(store, str(device), cache, log=log)
        quant = ck.identity if ck is not None else S.IdentityQuantizer.fit(emb[tr], sc.identity_dims, sc.identity_bins,
                                                                        store.utterances["speaker"].iloc[tr].tolist())
        tokens = quant(emb)
    return Prepared(split, tr, te, vocab, quant, tokens, emb)


def _settings(cfg: AttributesConfig) -> dict:
    d = {**dataclasses.asdict(cfg.part(StreamConfig)), **dataclasses.asdict(cfg.part(ModelConfig)),
         **dataclasses.asdict(cfg.part(TrainConfig))}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if k not in _RESUMABLE}


def fit(store, cfg: AttributesConfig, ckpt_dir: Path, device: torch.device, progress: bool = True,
        log: Callable[[str], None] | None = None) -> tuple[Checkpoint, Prepared]:
    """Train (or resume, or reuse) the model for ``store`` in ``ckpt_dir``."""
    ckpt_dir = Path(ckpt_dir)
    ck = None
    if (ckpt_dir / "checkpoint.json").is_file():
        ck = Checkpoint.load(ckpt_dir, device)
        ck.check_store(store)
        if ck.store_fingerprint != store.fingerprint:
            raise CodeclensError(f"{ckpt_dir}: the checkpoint was trained on another store's content; give another --out")
        if ck.train.get("settings") != _settings(cfg):
            diff = sorted(k for k, v in _settings(cfg).items() if ck.train.get("settings", {}).get(k) != v)
            raise CodeclensError(f"{ckpt_dir}: the checkpoint was trained with other settings ({', '.join(diff)}); "
                                 "give another --out")
    prep = prepare(store, cfg.part(StreamConfig), cfg.split, device, ckpt_dir.parent / "cache", ck, log)
    if ck is None:
        torch.manual_seed(cfg.seed)
        model = AttributeModel(cfg.part(ModelConfig), prep.vocab, cfg.attributes)
        ck = Checkpoint(model, cfg.part(StreamConfig), prep.vocab, dict(store.codec), prep.identity, 0,
                        store.fingerprint, {"settings": _settings(cfg), "split": prep.split,
                                            "train_utterances": len(prep.train_rows)})
    if ck.step < cfg.steps:
        ck = train(ck, prep.utts(store, ck.streams, prep.train_rows), cfg.part(TrainConfig), ckpt_dir, device,
                   progress, log)
    return ck, prep
