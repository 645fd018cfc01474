"""Models that read codec tokens without decoding them ("downstream consumers").

The contract (also for plug-ins, ``python:package.module:Class?key=value``):

- ``Class(store, **options)``: built from a feature store (fit on it, or load weights);
- ``score(codes, lengths) -> log_probs``: ``codes`` is ``[B, T, L]`` int64 with
  :data:`~codeclens.analyses.causal.patching.ABSENT` (−1) where a layer is dropped, ``lengths``
  ``[B]`` valid frames; returns log-probabilities ``[B, C]`` (one decision per utterance) or
  ``[B, T, C]`` (one per frame);
- optional ``groups``: sizes of consecutive independent distributions along ``C`` (a token
  language model predicts each RVQ layer's next code: one group per layer); default one group;
- optional ``name``.

Built in: token classifiers (``speaker``, ``accent``, ``phone`` or any label column), fit on the
store's train split from the summed table lookups of the tokens, and ``lm``, a small causal
token language model (:mod:`.tokenlm`).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, Sequence

import numpy as np

from ...errors import CodeclensError
from ...spec import parse_spec
from ..ablate.engine import utterance_codes
from .patching import lookup


class TokenConsumer(Protocol):
    name: str

    def score(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...


def groups_of(consumer: Any, n_classes: int) -> list[int]:
    g = list(getattr(consumer, "groups", None) or [n_classes])
    if sum(g) != n_classes:
        raise CodeclensError(f"consumer '{getattr(consumer, 'name', consumer)}': groups {g} do not sum to {n_classes} classes")
    return g


class TokenClassifier:
    """Multinomial logistic regression on summed table lookups of all layers (utterance mean for
    utterance-level labels, per frame for frame labels), fit on the store's train split."""

    def __init__(self, store, label: str = "speaker", max_frames: int = 20000, seed: int = 0, l2: float = 1e-2):
        from sklearn.linear_model import LogisticRegression

        self.name = f"classifier:{label}"
        self.tables = store.tables
        utt = store.utterances
        self.level = "utterance" if label in utt.columns and label not in store.frames.columns else "frame"
        # closed-set speaker identity needs the test speakers in training; everything else is
        # measured on speakers the classifier never saw
        prefer = ("split_utt", "split_spk") if label == "speaker" else ("split_spk", "split_utt")
        split = next((c for c in (*prefer, "split") if c in utt.columns), None)
        train_u = np.flatnonzero(utt[split].to_numpy() == "train") if split else np.arange(len(utt))
        rng = np.random.default_rng(seed)
        if self.level == "utterance":
            y = utt[label].astype(str).to_numpy()[train_u]
            X = np.stack([self._utt_features(utterance_codes(store, int(i)).T) for i in train_u])
        else:
            col = store.frame_column(label)
            rows = np.concatenate([np.arange(int(utt["frame_offset"].iloc[i]),
                                             int(utt["frame_offset"].iloc[i]) + int(utt["n_frames"].iloc[i]))
                                   for i in train_u])
            lab = np.asarray(col[rows])
            ok = np.array([v is not None and v == v and str(v) != "-1" for v in lab])
            rows = rows[ok]
            if len(rows) > max_frames:
                rows = np.sort(rng.choice(rows, max_frames, replace=False))
            y = np.asarray(col[rows]).astype(str)
            X = lookup(np.asarray(store.codes[rows], dtype=np.int64), self.tables)
        if len(set(y)) < 2:
            raise CodeclensError(f"{store.path}: label '{label}' has fewer than 2 classes on the train split")
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-6
        self.model = LogisticRegression(C=1.0 / (l2 * len(X)), max_iter=300).fit((X - self.mu) / self.sd, y)
        self.classes = list(self.model.classes_)

    def _utt_features(self, codes: np.ndarray) -> np.ndarray:
        return lookup(codes, self.tables).mean(axis=0)

    def _log_proba(self, X: np.ndarray) -> np.ndarray:
        # From the logits: sklearn's predict_log_proba takes log(predict_proba), which is -inf
        # once a probability underflows, and KL / delta-logp are then inf or nan.
        from scipy.special import log_expit, log_softmax

        d = self.model.decision_function((X - self.mu) / self.sd)
        if d.ndim == 1:  # two classes: d is the logit of classes_[1]
            return np.stack([log_expit(-d), log_expit(d)], axis=1)
        return log_softmax(d, axis=1)

    def score(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.level == "utterance":
            X = np.stack([self._utt_features(c[: int(n)]) for c, n in zip(codes, lengths)])
            return self._log_proba(X)
        B, T, _ = codes.shape
        return self._log_proba(lookup(codes.reshape(B * T, -1), self.tables)).reshape(B, T, -1)


def load_consumer(spec: str, store, seed: int = 0, device: str = "cpu", lm_options: dict | None = None):
    """``speaker`` / ``accent`` / ``phone`` / any label column (a token classifier), ``lm`` (a token
    language model trained on the store), or ``python:package.module:Class?key=value``."""
    if spec == "lm":
        from .tokenlm import TokenLMConsumer

        return TokenLMConsumer(store, seed=seed, device=device, **(lm_options or {}))
    if spec.startswith("python:"):
        s = parse_spec(spec)
        module_name, sep, cls_name = s.target.partition(":")
        if not sep or not module_name or not cls_name or module_name.startswith("."):
            raise CodeclensError(f"consumer plug-in needs python:package.module:Class, got '{spec}'")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError) as e:
            raise CodeclensError(f"cannot load consumer plug-in '{spec}': {e}") from None
        obj = cls(store, **dict(s.options))
        if not callable(getattr(obj, "score", None)):
            raise CodeclensError(f"consumer plug-in '{spec}' has no score(codes, lengths) method")
        if not getattr(obj, "name", None):
            obj.name = cls_name
        return obj
    if spec not in store.label_columns():
        raise CodeclensError(f"{store.path}: no label '{spec}' for a token classifier; available: "
                             f"{', '.join(store.label_columns())}")
    return TokenClassifier(store, spec, seed=seed)


def as_batch(codes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``[T_i, L]`` code arrays to ``[B, T, L]`` (padding repeats the last frame; it is past
    ``lengths`` and consumers ignore it)."""
    lengths = np.array([len(c) for c in codes], dtype=np.int64)
    T = int(lengths.max())
    out = np.stack([np.concatenate([c, np.repeat(c[-1:], T - len(c), axis=0)]) for c in codes])
    return out, lengths
