"""``speechtokenizer``: SpeechTokenizer (16 kHz, 50 Hz, 8 RVQ layers; layer 1 distilled
from HuBERT) through the ``speechtokenizer`` package's own model code.

The package's ``__init__`` imports its trainer (beartype, torchaudio, accelerate...),
which the model does not need; its ``model`` module is imported on its own instead
(see :func:`_model_class`). Its codebooks run k-means on the first forward pass
unless marked initialised: loading marks them initialised, and this adapter only
uses the quantizer's ``encode``/``decode``, which never train.

Checkpoints: ``checkpoint=DIR`` holding ``config.json`` and one weights file
(``*.safetensors`` preferred, else ``*.pt``/``*.pth``/``*.bin``, loaded with
``weights_only=True``), or ``checkpoint=FILE&config=CONFIG.json`` (default: the
``config.json`` beside FILE). The released ``fnlp/SpeechTokenizer`` files
(``speechtokenizer_hubert_avg/config.json`` + ``SpeechTokenizer.pt``) load as they are.

Tables are each layer's codebook (pushed through the layer's output projection when
the codebook dimension differs from the latent's). An utterance of N samples has
``ceil(N / 320)`` frames.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
import warnings
from pathlib import Path

import torch

from ..errors import CodeclensError
from ..spec import Spec
from ..util.atomic import atomic_dir
from . import CODECS
from ._hf import (
    calibration_option,
    ema_codebook_setter,
    TorchCodec, calibration_batch, check_size, init_residual_codebooks, seeded,
    want_random,
)
from .base import CodecAdapter, OneLoader

WEIGHTS = "speechtokenizer.safetensors"
CONFIG = "config.json"
HUB = ("fnlp/SpeechTokenizer", "speechtokenizer_hubert_avg")

#: The released model's architecture.
FULL_CONFIG = {
    "n_filters": 64, "strides": [8, 5, 4, 2], "dimension": 1024, "semantic_dimension": 768, "bidirectional": True,
    "dilation_base": 2, "residual_kernel_size": 3, "n_residual_layers": 1, "lstm_layers": 2, "activation": "ELU",
    "sample_rate": 16000, "codebook_size": 1024, "n_q": 8,
}
#: Same strides, frame rate, layers and codebook size; few channels.
TINY_CONFIG = {**FULL_CONFIG, "n_filters": 4, "dimension": 32, "semantic_dimension": 32, "lstm_layers": 1}

_MODEL_CLASS = None


def _model_class():
    """``speechtokenizer.model.SpeechTokenizer`` without running the package ``__init__``.

    A bare package module stands in for ``speechtokenizer`` while ``.model`` and its
    submodules are imported; afterwards the stand-in is removed again, so a later
    ``import speechtokenizer`` by the user runs the real ``__init__`` (which then finds
    ``speechtokenizer.model`` already imported).
    """
    global _MODEL_CLASS
    if _MODEL_CLASS is not None:
        return _MODEL_CLASS
    if "speechtokenizer.model" in sys.modules:
        _MODEL_CLASS = sys.modules["speechtokenizer.model"].SpeechTokenizer
        return _MODEL_CLASS
    spec = importlib.util.find_spec("speechtokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise CodeclensError("speechtokenizer: the 'speechtokenizer' package is not installed (pip install speechtokenizer)")
    had_pkg = "speechtokenizer" in sys.modules
    if not had_pkg:
        pkg = types.ModuleType("speechtokenizer")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["speechtokenizer"] = pkg
    try:
        module = importlib.import_module("speechtokenizer.model")
    except ImportError as e:
        raise CodeclensError(f"speechtokenizer: cannot import its model code: {e}") from None
    finally:
        if not had_pkg:
            sys.modules.pop("speechtokenizer", None)
    _MODEL_CLASS = module.SpeechTokenizer
    return _MODEL_CLASS


def _build(model_cls, config: dict):
    with warnings.catch_warnings():
        # The package uses torch.nn.utils.weight_norm, deprecated but working.
        warnings.simplefilter("ignore", FutureWarning)
        return model_cls(config)


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CodeclensError(f"speechtokenizer: cannot read config '{path}': {e}") from None
    missing = [k for k in ("n_filters", "strides", "dimension", "n_q", "codebook_size", "sample_rate") if k not in cfg]
    if missing:
        raise CodeclensError(f"speechtokenizer: config '{path}' lacks {', '.join(missing)}")
    return cfg


def _find_weights(d: Path) -> Path:
    for pattern in ("*.safetensors", "*.pt", "*.pth", "*.bin", "*.ckpt"):
        found = sorted(d.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise CodeclensError(f"speechtokenizer: several {pattern} files in '{d}'; pass checkpoint=FILE")
    raise CodeclensError(f"speechtokenizer: no weights file (*.safetensors, *.pt) in '{d}'")


def _resolve_checkpoint(ckpt: str, config: str | None) -> tuple[dict, Path | None]:
    """(config dict, weights path) from a directory, a file, or the hub id."""
    p = Path(ckpt).expanduser()
    if p.is_dir():
        cfg_path = Path(config) if config else p / CONFIG
        if not cfg_path.is_file():
            raise CodeclensError(f"speechtokenizer: no {CONFIG} in '{p}' (or pass config=FILE)")
        return _read_config(cfg_path), _find_weights(p)
    if p.is_file():
        cfg_path = Path(config) if config else p.parent / CONFIG
        if not cfg_path.is_file():
            raise CodeclensError(f"speechtokenizer: weights '{p}' need config=CONFIG.json (none beside it)")
        return _read_config(cfg_path), p
    if ckpt in (HUB[0], f"{HUB[0]}/{HUB[1]}"):
        return _from_hub()
    raise CodeclensError(f"speechtokenizer: checkpoint not found: {ckpt}")


def _architecture(ckpt: str, config: str | None) -> dict:
    """Only the config of a checkpoint (for random_init): no weights file is needed."""
    p = Path(ckpt).expanduser()
    cfg_path = Path(config) if config else (p / CONFIG if p.is_dir() else p.parent / CONFIG)
    if cfg_path.is_file():
        return _read_config(cfg_path)
    return _resolve_checkpoint(ckpt, config)[0]


def _from_hub() -> tuple[dict, Path]:
    from ._hf import hub_reachable, offline

    hint = "pass checkpoint=DIR (config.json + weights) or random_init=1"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CodeclensError(f"speechtokenizer: huggingface_hub is not installed; {hint}") from None

    def fetch(local_only: bool) -> tuple[Path, Path]:
        kw = dict(repo_id=HUB[0], subfolder=HUB[1], local_files_only=local_only)
        return Path(hf_hub_download(filename="config.json", **kw)), Path(hf_hub_download(filename="SpeechTokenizer.pt", **kw))

    try:
        cfg, weights = fetch(True)
    except Exception:  # noqa: BLE001 - not cached
        if offline() or not hub_reachable():
            raise CodeclensError(
                f"speechtokenizer: {HUB[0]} is not in the local Hugging Face cache and the hub is not reachable; {hint}"
            ) from None
        try:
            cfg, weights = fetch(False)
        except Exception as e:  # noqa: BLE001
            raise CodeclensError(f"speechtokenizer: cannot fetch {HUB[0]} ({type(e).__name__}); {hint}") from None
    return _read_config(cfg), weights


@CODECS.register("speechtokenizer")
class SpeechTokenizerCodec(OneLoader, TorchCodec, CodecAdapter):
    options = ("size", "config", "calibration")
    #: Loaded from a checkpoint: weight norm folded into plain weights, training state dropped.
    folded: bool = False

    def __init__(self, model, config: dict, device: torch.device):
        self.model = model.to(device).eval()
        self.config = dict(config)
        self.device = device
        self.sample_rate = int(config["sample_rate"])
        self.hop = int(model.downsample_rate)
        self.frame_rate = self.sample_rate / self.hop
        self.n_layers = int(config["n_q"])
        self.codebook_sizes = [int(config["codebook_size"])] * self.n_layers
        for layer in self._vq_layers:
            layer._codebook.inited.fill_(1.0)

    @classmethod
    def _load(cls, spec: Spec, device: torch.device, extraction_only: bool) -> "SpeechTokenizerCodec":
        if spec.target:
            raise CodeclensError(f"speechtokenizer takes no target (got '{spec}'); use checkpoint=...")
        size = check_size(spec)
        ckpt = spec.get("checkpoint")
        model_cls = _model_class()
        if want_random(spec):
            seed = spec.get("seed", 0, int)
            config = _architecture(ckpt, spec.get("config")) if ckpt else (TINY_CONFIG if size == "tiny" else FULL_CONFIG)
            with seeded(seed):
                model = _build(model_cls, config)
            adapter = cls(model, config, device)
            adapter.calibration_seconds = calibration_option(spec)
            adapter.init_codebooks(seed)
            if extraction_only:
                adapter.keep_encoder_only()
            return adapter
        config, weights = _resolve_checkpoint(ckpt, spec.get("config")) if ckpt else _from_hub()
        from ._extraction import drop_modules, fold_weight_norm, load_kept_state

        # Built on the meta device either way: a built model's random weights and the loaded ones
        # were both alive during a plain load (twice the ~480 MB of a full-size model, the peak of
        # an ablate step), while here the model's tensors are the file's.
        with torch.device("meta"):
            model = _build(model_cls, config)
        dropped = tuple(f"{m}." for m in cls.decoder_modules) if extraction_only else ()
        if extraction_only:
            drop_modules(model, cls.decoder_modules)
        for layer in model.quantizer.vq.layers:
            # The EMA sum of training (as big as the codebook): encode and decode read only ``embed``.
            del layer._codebook._buffers["embed_avg"]
        load_kept_state(model, weights, "speechtokenizer", dropped, dropped_suffixes=("._codebook.embed_avg",))
        # The package's weight norm hooks keep each conv's computed weight beside its two factors
        # after a forward pass: folded, the loaded model holds its convolutions once (the same bits:
        # the hook computes the same product at every call). Full-size model after a decode and an
        # encode of 8 s: 1.15 -> 0.94 GB resident (docs/benchmarks.md, sixth round).
        fold_weight_norm(model)
        adapter = cls(model, config, device)
        adapter.extraction_only = extraction_only
        adapter.folded = True
        return adapter

    @property
    def _vq_layers(self):
        return self.model.quantizer.vq.layers

    def _embed(self, x):
        return self.model.encoder(x[:, None])

    def _encode_one(self, x):
        return self.model.quantizer.encode(self._embed(x), n_q=self.n_layers)[:, 0]

    def _latent_one(self, x):
        return self._embed(x)[0].T

    def _encode_latent_one(self, x):
        z = self._embed(x)
        return self.model.quantizer.encode(z, n_q=self.n_layers)[:, 0], z[0].T

    def _compute_tables(self):
        return [layer.project_out(layer._codebook.embed) for layer in self._vq_layers[: self.n_layers]]

    @torch.no_grad()
    def quantized(self, codes, layers=None):
        codes = codes.to(self.device)
        if layers is None:
            return self.model.quantizer.decode(codes.transpose(0, 1)).transpose(1, 2)
        return self._sum_layers(codes, layers, lambda l, c: self._vq_layers[l].decode(c))

    def _decode_quantized(self, q):
        return self.model.decoder(q.transpose(1, 2)).squeeze(1)

    def reference_decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The package's own ``SpeechTokenizer.decode`` (codes as ``[L, B, T]``)."""
        self.require_full_model("decode")
        with torch.no_grad():
            return self.model.decode(codes.to(self.device).transpose(0, 1)).squeeze(1)

    @torch.no_grad()
    def init_codebooks(self, seed: int) -> None:
        x = calibration_batch(self.sample_rate, seed, self.calibration_seconds).to(self.device)
        resid = self._embed(x)[0].T

        def layer_fns(layer):
            return ema_codebook_setter(layer._codebook), (lambda r: layer.project_in(r)), (lambda r: layer.decode(layer.encode(r.T[None]))[0].T)

        init_residual_codebooks(resid, [layer_fns(l) for l in self._vq_layers], self.codebook_sizes[0], seed)
        self._table_cache = None

    def save(self, out) -> Path:
        """``config.json`` + ``speechtokenizer.safetensors`` (loadable with ``checkpoint=DIR``)."""
        from safetensors.torch import save_file

        self.require_full_model("save a checkpoint")
        if self.folded:
            raise CodeclensError("speechtokenizer: a model loaded from a checkpoint has its weight norm folded, so "
                                 "its state is not in the released layout; copy the checkpoint's own files instead")
        out = Path(out)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_dir(out) as tmp:
            save_file(state, str(tmp / WEIGHTS))
            (tmp / CONFIG).write_text(json.dumps(self.config, indent=2) + "\n")
        return out
