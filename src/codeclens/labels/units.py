"""``units`` labeller: discrete content units per codec frame (the unit set of Sadok et al.).

With ``checkpoint=DIR_OR_HUB_ID``: HuBERT features (transformers ``HubertModel``,
output of transformer layer ``layer``, default 6) are clustered by k-means
(``k`` clusters, default 100, ``seed``) fitted in :meth:`UnitsLabeller.fit` on
up to ``max_utterances`` utterances / ``max_frames`` frames of the corpus.
With ``path=FILE.npz`` the fitted k-means is saved there, and re-used when it
exists (so several stores share one unit set); without it the k-means is
refitted per extraction, deterministically for a seed and corpus.

HuBERT frame ``i`` is centred at ``(i*stride + receptive_field/2) / 16000`` s
(320 and 400 samples for the base model) and treated as the interval of one
stride around that centre; each codec frame takes the unit of the HuBERT frame
with the largest overlap with its span (by time, at any codec frame rate).

Without ``checkpoint`` the units are the phones: ``unit`` is the index of the
frame's canonical phone in :data:`codeclens.labels.phones.INVENTORY` (stress
folded), -1 for frames without an alignment. Either way the frame column is
``unit`` (int64, -1 = no unit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..corpora.base import Utterance
from ..errors import CodeclensError
from ..spec import Spec
from ..util.atomic import atomic_path
from . import LABELLERS
from .base import Labeller
from .phones import PhoneLabeller, max_overlap_labels, phone_index

HUBERT_SR = 16000


def _transformers_class(name: str):
    """``transformers.<name>``, importable even where an installed torchaudio is broken
    (the codecs' loader handles that; imported here lazily, as it imports torch)."""
    from ..codecs._hf import hf_class

    return hf_class(name)


@LABELLERS.register("units")
class UnitsLabeller(Labeller):
    """HuBERT k-means unit (or phone index) per codec frame."""

    options = ("checkpoint", "layer", "k", "path", "seed", "max_utterances", "max_frames", "device")

    def __init__(self, spec):
        super().__init__(spec)
        self.checkpoint = spec.get("checkpoint")
        self.layer = spec.get("layer", 6, int)
        self.k = spec.get("k", 100, int)
        self.path = Path(spec.get("path")) if spec.get("path") else None
        self.seed = spec.get("seed", 0, int)
        self.max_utterances = spec.get("max_utterances", 500, int)
        self.max_frames = spec.get("max_frames", 200_000, int)
        self.device_name = spec.get("device", "auto")
        if self.k < 2:
            raise CodeclensError("units: k must be >= 2")
        if self.layer < 0:
            raise CodeclensError("units: layer must be >= 0")
        if self.max_utterances < 1 or self.max_frames < self.k:
            raise CodeclensError("units: need max_utterances >= 1 and max_frames >= k")
        if self.checkpoint is None and self.path is not None:
            raise CodeclensError("units: path= needs checkpoint= (phone units need no fitting)")
        self.centroids: np.ndarray | None = None
        self._model = None
        self._normalize = False
        self._phones = PhoneLabeller(Spec("phone")) if self.checkpoint is None else None

    # -- HuBERT ----------------------------------------------------------------
    def _load_model(self):
        if self._model is not None:
            return self._model
        import torch

        from ..util.device import resolve_device

        HubertModel = _transformers_class("HubertModel")

        self.device = resolve_device(self.device_name)
        try:
            model = HubertModel.from_pretrained(self.checkpoint)
        except (OSError, ValueError) as e:
            raise CodeclensError(f"units: cannot load HuBERT from '{self.checkpoint}' ({str(e).splitlines()[0]})") from None
        n_layers = model.config.num_hidden_layers
        if self.layer > n_layers:
            raise CodeclensError(f"units: layer {self.layer} asked for but the model has {n_layers} layers")
        try:
            fe = _transformers_class("AutoFeatureExtractor").from_pretrained(self.checkpoint)
            self._normalize = bool(getattr(fe, "do_normalize", False))
        except Exception:  # no preprocessor config: HuBERT base takes raw waveforms
            self._normalize = False
        stride, field = 1, 1
        for k, s in zip(model.config.conv_kernel, model.config.conv_stride):
            field += (k - 1) * stride
            stride *= s
        self._stride, self._field = stride, field
        self._model = model.eval().to(self.device)
        torch.manual_seed(self.seed)
        return self._model

    def features(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """(HuBERT layer features [T, D], frame centre times [T]) of one signal."""
        import torch

        from ..audio import resample

        model = self._load_model()
        x = resample(np.asarray(audio, dtype=np.float32), int(sample_rate), HUBERT_SR)
        if len(x) < self._field:
            x = np.pad(x, (0, self._field - len(x)))
        if self._normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        with torch.inference_mode():
            out = model(torch.from_numpy(x)[None].to(self.device), output_hidden_states=True)
        h = out.hidden_states[self.layer][0].float().cpu().numpy()
        centres = (np.arange(len(h)) * self._stride + self._field / 2) / HUBERT_SR
        return h, centres

    def fit(self, utterances: Iterable[Utterance]) -> None:
        if self.checkpoint is None or self.centroids is not None:
            return
        if self.path is not None and self.path.is_file():
            self._load_kmeans()
            return
        from sklearn.cluster import MiniBatchKMeans
        from tqdm.auto import tqdm

        utts = list(utterances)
        rng = np.random.default_rng(self.seed)
        pick = sorted(rng.choice(len(utts), size=min(len(utts), self.max_utterances), replace=False)) if utts else []
        feats = []
        for i in tqdm(pick, desc="units: HuBERT features", unit="utt", leave=False, disable=len(pick) < 20):
            try:
                audio, sr = utts[i].load(HUBERT_SR)
            except CodeclensError:
                continue  # unreadable audio is reported by the extraction itself
            feats.append(self.features(audio, sr)[0])
        x = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
        if len(x) < self.k:
            raise CodeclensError(f"units: only {len(x)} HuBERT frames to fit k={self.k} clusters; use a smaller k")
        if len(x) > self.max_frames:
            x = x[np.sort(rng.choice(len(x), self.max_frames, replace=False))]
        km = MiniBatchKMeans(
            n_clusters=self.k, random_state=self.seed, batch_size=min(10_000, len(x)), n_init=3, max_iter=100
        ).fit(x)
        self.centroids = km.cluster_centers_.astype(np.float32)
        if self.path is not None:
            with atomic_path(self.path, ".npz") as tmp:
                np.savez(tmp, centroids=self.centroids, checkpoint=str(self.checkpoint), layer=self.layer, seed=self.seed)

    def _load_kmeans(self) -> None:
        try:
            z = np.load(self.path)
            c, layer = z["centroids"], int(z["layer"])
        except Exception as e:
            raise CodeclensError(f"units: cannot read k-means file {self.path} ({type(e).__name__})") from None
        if c.shape[0] != self.k or layer != self.layer:
            raise CodeclensError(
                f"units: {self.path} holds k={c.shape[0]} units of layer {layer}, not k={self.k} of layer "
                f"{self.layer}; give another path or remove it"
            )
        self.centroids = c.astype(np.float32)

    def assign(self, feats: np.ndarray) -> np.ndarray:
        """Nearest centroid of each feature row."""
        c = self.centroids
        d = (c * c).sum(1)[None, :] - 2.0 * feats @ c.T
        return np.argmin(d, axis=1).astype(np.int64)

    # -- labeller contract -------------------------------------------------------
    def frame_labels(self, utt, audio, sample_rate, times, frame_rate) -> dict[str, np.ndarray]:
        if self.checkpoint is None:
            phones = self._phones.frame_phones(utt, len(audio) / float(sample_rate), times, frame_rate)
            return {"unit": np.array([phone_index(p) for p in phones], dtype=np.int64)}
        if self.centroids is None:
            if self.path is not None and self.path.is_file():
                self._load_kmeans()
            else:
                raise CodeclensError("units: k-means not fitted (call fit() or give path= to a fitted file)")
        feats, centres = self.features(audio, sample_rate)
        ids = self.assign(feats)
        half = self._stride / 2 / HUBERT_SR
        got = max_overlap_labels(centres - half, centres + half, list(ids), times, frame_rate, missing=-1)
        out = np.array(got, dtype=np.int64)
        if (out < 0).any() and len(ids):
            # Codec frames past HuBERT's last frame (a few ms at the end): the nearest unit.
            j = np.clip(np.searchsorted(centres, np.asarray(times)[out < 0]), 0, len(ids) - 1)
            out[out < 0] = ids[j]
        return {"unit": out}

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": str(self.spec), "columns": ["unit"]}
        if self.checkpoint is None:
            d["source"] = "phones (index in codeclens.labels.phones.INVENTORY)"
        else:
            d.update(source="hubert", checkpoint=str(self.checkpoint), layer=self.layer, k=self.k, seed=self.seed,
                     path=str(self.path) if self.path else None)
        return d
