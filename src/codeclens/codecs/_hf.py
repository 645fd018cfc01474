"""Shared plumbing of the adapters that wrap neural codecs (transformers models and
SpeechTokenizer): loading checkpoints safely, seeded construction, item-by-item
encoding, and the common spec options.

Encoding is done one utterance at a time. Most of these architectures are not
causal (DAC, SpeechTokenizer's bidirectional LSTM), and even causal ones pad the
last frame from the signal's own end, so a zero-padded batch would change the
codes of an utterance's last frames. One at a time, an utterance's codes never
depend on what else is in the batch.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import sys
import types
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import CodeclensError
from ..spec import Spec
from .calibration import calibration_audio, sample_rows

#: Seconds of the built-in calibration signal used to initialise random codebooks.
CALIBRATION_SECONDS = 8.0
#: Gaussian noise added to sampled rows, relative to the residual's per-dimension spread.
ROW_NOISE = 0.5


_TORCHAUDIO_OK: bool | None = None


def _torchaudio_imports() -> bool:
    """Whether a real torchaudio imports here (it may be installed for another torch build)."""
    global _TORCHAUDIO_OK
    if _TORCHAUDIO_OK is None:
        if "torchaudio" in sys.modules or importlib.util.find_spec("torchaudio") is None:
            _TORCHAUDIO_OK = True  # already imported (or stubbed) by someone, or absent: nothing to do
        else:
            try:
                importlib.import_module("torchaudio")
                _TORCHAUDIO_OK = True
            except Exception:  # noqa: BLE001 - a broken binary raises OSError, others ImportError
                for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
                    del sys.modules[name]
                _TORCHAUDIO_OK = False
    return _TORCHAUDIO_OK


def hf_class(name: str):
    """``transformers.<name>``, importable even when an installed torchaudio is broken.

    transformers imports torchaudio at module level whenever it is installed, although
    these codecs never use it. If it cannot be imported, a stub stands in while the
    transformers modules load and is removed afterwards, so the user's own
    ``import torchaudio`` behaves as before.
    """
    import transformers

    if _torchaudio_imports():
        return getattr(transformers, name)
    stub = types.ModuleType("torchaudio")
    stub.__doc__ = "codeclens stand-in: the installed torchaudio does not import"
    sys.modules["torchaudio"] = stub
    try:
        return getattr(transformers, name)
    finally:
        if sys.modules.get("torchaudio") is stub:
            del sys.modules["torchaudio"]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch inside the block without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (missing/unused keys are checked by us)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors (preferred) or a torch pickle loaded with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from ._extraction import read_torch_state

    return read_torch_state(path, mmap=False)


def load_hf_model(model_cls, config_cls, checkpoint: str, what: str, drop: tuple[str, ...] = ()):
    """A transformers model from a ``save_pretrained`` directory, a weights file beside a
    ``config.json``, or a hub id (from the local cache, else downloaded when online).

    A weights file is loaded through ``from_pretrained`` too (from a temporary folder that
    links it as ``model.safetensors`` beside its ``config.json``), so transformers' own
    key conversion applies: Mimi's saved keys, for one, differ from its module names.
    Weights are always loaded as float32, whatever dtype the checkpoint was saved in.

    ``drop`` names top-level modules (``("decoder",)``) left out for an extraction-only load:
    they are never built with weights nor read from the checkpoint (see :mod:`._extraction`),
    and weight norm is folded into plain weights.
    """
    from ._extraction import fold_weight_norm, hf_extraction_class, load_kept_state, no_meta_left

    load_cls = hf_extraction_class(model_cls, tuple(drop)) if drop else model_cls
    dropped = tuple(f"{name}." for name in drop)
    p = Path(checkpoint).expanduser()
    with quiet_transformers():
        if p.is_dir():
            check_model_type(p / "config.json", config_cls, what)
            model = _from_dir(load_cls, p, p, what, dropped)
        elif p.is_file():
            check_model_type(p.parent / "config.json", config_cls, what)
            if p.suffix != ".safetensors":
                config = config_cls.from_pretrained(str(p.parent), local_files_only=True)
                model = load_cls(config)
                if drop:
                    load_kept_state(model, p, what, dropped)
                else:
                    load_strict(model, load_state_file(p), what)
                model = model.float()
            else:
                import tempfile

                with tempfile.TemporaryDirectory(prefix="codeclens-ckpt-") as tmp:
                    os.symlink(p.resolve(), Path(tmp) / "model.safetensors")
                    os.symlink((p.parent / "config.json").resolve(), Path(tmp) / "config.json")
                    model = _from_dir(load_cls, Path(tmp), p, what, dropped)
        elif checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") > 1:
            raise CodeclensError(f"{what}: checkpoint not found: {checkpoint}")
        else:
            model = _from_hub(load_cls, checkpoint, what)
    if drop:
        no_meta_left(model, what)
        fold_weight_norm(model)
    return model


def _from_dir(model_cls, d: Path, shown: Path, what: str, dropped: tuple[str, ...] = ()):
    try:
        # ignore_mismatched_sizes: shape mismatches come back in the loading info (reported below,
        # naming a tensor) instead of as transformers' "look at the above report" RuntimeError.
        model, info = model_cls.from_pretrained(str(d), local_files_only=True, dtype=torch.float32,
                                                output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as e:  # noqa: BLE001 - safetensors, torch and transformers raise many types
        kind = "a safetensors weights file beside its config.json" if shown.is_file() else "a save_pretrained directory"
        raise CodeclensError(f"{what}: cannot load '{shown}' (expected {kind}): {type(e).__name__}: {_first_line(e)}") from None
    missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
    # A dropped module's keys (named as transformers renames them) are left unread, not wrong.
    unexpected = [k for k in unexpected if not (dropped and k.startswith(dropped))]
    mismatched = info.get("mismatched_keys") or []
    if missing or unexpected or mismatched:
        raise CodeclensError(
            f"{what}: '{shown}' does not match its config.json (missing {len(missing)} keys e.g. {sorted(missing)[:2]}, "
            f"unexpected {len(unexpected)} e.g. {sorted(unexpected)[:2]}, wrong shape {len(mismatched)} e.g. {list(mismatched)[:1]})"
        )
    return model.float()


def _from_hub(model_cls, hub_id: str, what: str):
    hint = "pass checkpoint=DIR (a local save_pretrained directory) or random_init=1"
    try:
        return model_cls.from_pretrained(hub_id, local_files_only=True, dtype=torch.float32).float()
    except Exception:  # noqa: BLE001 - not in the local cache
        pass
    if offline() or not hub_reachable():
        raise CodeclensError(f"{what}: '{hub_id}' is not in the local Hugging Face cache and the hub is not reachable; {hint}")
    try:
        return model_cls.from_pretrained(hub_id, dtype=torch.float32).float()
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        raise CodeclensError(f"{what}: cannot load '{hub_id}' from the hub ({_first_line(e)}); {hint}") from None


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection instead of huggingface_hub's minute of retries."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_model_type(config_json: Path, config_cls, what: str) -> None:
    """A clear error when a checkpoint holds another kind of model (e.g. EnCodec for mimi)."""
    import json

    if not config_json.is_file():
        raise CodeclensError(f"{what}: no config.json in checkpoint directory '{config_json.parent}'")
    try:
        found = json.loads(config_json.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise CodeclensError(f"{what}: cannot read '{config_json}': {e}") from None
    want = getattr(config_cls, "model_type", None)
    if want and found and found != want:
        raise CodeclensError(f"{what}: '{config_json.parent}' holds a '{found}' model, not '{want}'")


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches: another size of the architecture
        raise CodeclensError(f"{what}: checkpoint does not match the architecture: {_first_line(e)}") from None
    if missing or unexpected:
        raise CodeclensError(
            f"{what}: checkpoint does not match the architecture "
            f"(missing {len(missing)} keys e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]})"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def check_size(spec: Spec, sizes: tuple[str, ...] = ("full", "tiny")) -> str:
    size = spec.get("size", "full")
    if size not in sizes:
        raise CodeclensError(f"{spec.kind}: size={size!r} is not one of {', '.join(sizes)}")
    return size


def want_random(spec: Spec) -> bool:
    return bool(spec.get("random_init", False, bool))


def calibration_option(spec: Spec) -> float | None:
    """``calibration=SECONDS``: length of the calibration signal a random_init control's
    codebooks are drawn from (default 8 s; Mimi 24 s). Shorter is faster on full-size models."""
    sec = spec.get("calibration", None, float)
    if sec is not None and not sec > 0:
        raise CodeclensError(f"{spec.kind}: calibration must be > 0 seconds (got {sec:g})")
    return sec


def calibration_batch(sample_rate: int, seed: int, seconds: float | None = None) -> torch.Tensor:
    """``[1, N]`` calibration signal for codebook initialisation."""
    seconds = CALIBRATION_SECONDS if seconds is None else seconds
    return torch.from_numpy(calibration_audio(sample_rate, seconds, seed))[None]


def init_residual_codebooks(
    residual: torch.Tensor,
    layers: list[tuple[Callable[[torch.Tensor], None], Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]],
    k: int,
    seed: int,
) -> None:
    """Initialise residual codebooks from sampled residual frames, layer by layer.

    ``residual`` is ``[N, D]`` in the quantizer's input space. Each layer is
    ``(set_codebook, to_code_space, quantize)``: ``to_code_space`` maps residual frames to
    the space the codebook lives in (an input projection, or identity), ``set_codebook``
    writes ``[K, d]`` rows, and ``quantize`` returns the layer's contribution ``[N, D]``
    (the model's own encode + decode) that is subtracted before the next layer.

    Rows get Gaussian noise of ``ROW_NOISE`` times the residual's per-dimension spread:
    with a few hundred calibration frames for ~1000 codes, noiseless rows would copy the
    frames exactly, leave a zero residual and make every later layer empty. With noise
    the residual shrinks layer by layer, as in a trained RVQ, and later layers still
    carry something.
    """
    for l, (set_codebook, to_code_space, quantize) in enumerate(layers):
        x = to_code_space(residual).detach().float().cpu()
        g = torch.Generator().manual_seed(seed * 1009 + l)
        rows = sample_rows(x, k, seed * 1009 + l)
        rows = rows + ROW_NOISE * x.std(0, keepdim=True) * torch.randn(rows.shape, generator=g)
        set_codebook(rows.to(residual.device, residual.dtype))
        residual = residual - quantize(residual)


def ema_codebook_setter(cb) -> Callable[[torch.Tensor], None]:
    """Setter for an EMA Euclidean codebook (``embed``, ``embed_avg``, ``inited``): the rows
    become the codebook and it is marked initialised, so no k-means runs on first forward."""

    def set_rows(rows: torch.Tensor) -> None:
        cb.embed.copy_(rows)
        cb.embed_avg.copy_(rows)
        cb.inited.fill_(1.0)

    return set_rows


def variance_preserving_init(*modules: torch.nn.Module) -> None:
    """Kaiming-style weights (std ``1/sqrt(fan_in)``) and zero biases for every convolution and
    linear layer in ``modules``.

    transformers initialises these codecs' convolutions with std 0.02, which at random makes
    the signal vanish layer after layer (DAC's latents come out ~1e-6, X-codec's acoustic
    half ~2000x below its semantic half), so a random control would carry nothing through
    that branch. With ``1/sqrt(fan_in)`` each layer roughly preserves the signal's variance.
    A transposed convolution's fan-in per output sample is ``in_channels * kernel / stride``.
    """
    for module in modules:
        for m in module.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.Linear)):
                w = m.weight
                with torch.no_grad():
                    w.normal_(0.0, fan_in(m, w) ** -0.5)
                    if m.bias is not None:
                        m.bias.zero_()


def fan_in(m: torch.nn.Module, weight: torch.Tensor) -> int:
    """Inputs per output sample of a convolution or linear layer with this ``weight`` (a
    transposed convolution's: ``in_channels * kernel / stride``)."""
    if isinstance(m, torch.nn.ConvTranspose1d):
        return max(weight.shape[0] * weight.shape[2] // max(m.stride[0], 1), 1)
    return max(weight[0].numel(), 1)


FrameCount = Callable[[int], int]


def _frame_count(hop: int | FrameCount) -> FrameCount:
    if callable(hop):
        return hop
    return lambda n: math.ceil(n / hop)


def encode_items(
    encode_one: Callable[[torch.Tensor], torch.Tensor], waves: torch.Tensor, lengths: torch.Tensor,
    hop: int | FrameCount,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode each item alone. ``encode_one(x [1, N]) -> codes [L, T]``.

    Valid frames per item: ``ceil(N / hop)`` (the last, partial frame is kept; the codec
    pads it), or ``hop(N)`` when ``hop`` is a function (a chunked codec's exact rule). The
    model must return exactly that many: more or fewer means a wrong hop, and frames
    would be silently dropped or every label misaligned.
    """
    count = _frame_count(hop)
    outs, n_frames = [], []
    for w, n in zip(waves, lengths.tolist()):
        c, want = _one_item(encode_one, w, int(n), count, -1)
        outs.append(c)
        n_frames.append(want)
    t = max(n_frames)
    codes = torch.zeros(len(outs), outs[0].shape[0], t, dtype=torch.long, device=waves.device)
    for i, c in enumerate(outs):
        codes[i, :, : c.shape[-1]] = c.to(codes.device)
    return codes, torch.tensor(n_frames, dtype=torch.long, device=waves.device)


def _one_item(fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor, n: int, count: FrameCount, time_axis: int):
    """``(fn(w[:n][None]), count(n))``, checking the model gave exactly that many frames."""
    if n <= 0:
        raise CodeclensError("cannot encode an empty utterance")
    out = fn(w[:n][None])
    want = int(count(n))
    if out.shape[time_axis] != want:
        raise CodeclensError(f"codec returned {out.shape[time_axis]} frames for {n} samples, expected exactly {want}")
    return out, want


def pad_to_hop(x: torch.Tensor, hop: int) -> torch.Tensor:
    """Zero-pad the last axis to a multiple of ``hop`` (what DAC's reference code does)."""
    extra = (-x.shape[-1]) % hop
    return torch.nn.functional.pad(x, (0, extra)) if extra else x


def latent_items(
    latent_one: Callable[[torch.Tensor], torch.Tensor], waves: torch.Tensor, lengths: torch.Tensor,
    hop: int | FrameCount,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`encode_items` for a float latent: ``latent_one(x) -> [T, D]``."""
    count = _frame_count(hop)
    outs, n_frames = [], []
    for w, n in zip(waves, lengths.tolist()):
        z, want = _one_item(latent_one, w, int(n), count, 0)
        outs.append(z)
        n_frames.append(want)
    t = max(n_frames)
    out = torch.zeros(len(outs), t, outs[0].shape[-1], device=waves.device)
    for i, z in enumerate(outs):
        out[i, : z.shape[0]] = z.to(out.device, out.dtype)
    return out, torch.tensor(n_frames, dtype=torch.long, device=waves.device)


def save_pretrained_atomic(model, out: str | Path) -> Path:
    """``model.save_pretrained`` into ``out`` atomically (config.json + model.safetensors)."""
    from ..util.atomic import atomic_dir

    out = Path(out)
    with atomic_dir(out) as tmp, quiet_transformers():
        model.save_pretrained(str(tmp), safe_serialization=True)
    return out


def load_hf_config(config_cls, checkpoint: str, what: str):
    """Only the architecture (config.json) of a checkpoint, for ``random_init`` controls."""
    p = Path(checkpoint).expanduser()
    if p.is_file():
        p = p.parent
    with quiet_transformers():
        try:
            if p.is_dir():
                check_model_type(p / "config.json", config_cls, what)
                return config_cls.from_pretrained(str(p), local_files_only=True)
            try:
                return config_cls.from_pretrained(checkpoint, local_files_only=True)
            except Exception:  # noqa: BLE001 - not cached
                if offline() or not hub_reachable():
                    raise CodeclensError(
                        f"{what}: '{checkpoint}' is not in the local Hugging Face cache and the hub is not "
                        "reachable; pass checkpoint=DIR or random_init=1 without checkpoint="
                    ) from None
            return config_cls.from_pretrained(checkpoint)
        except CodeclensError:
            raise
        except Exception as e:  # noqa: BLE001
            raise CodeclensError(f"{what}: cannot read the config of '{checkpoint}': {_first_line(e)}") from None


class TorchCodec:
    """Mixin for adapters around a torch model: cached tables, item-by-item encode,
    decode through the model's decoder, and ``save``.

    Subclasses set ``model``, ``device``, ``hop`` (samples per frame) and implement
    ``_encode_one(x [1, N]) -> [L, T]``, ``_latent_one(x) -> [T, D]``,
    ``_compute_tables()``, ``quantized`` and ``_decode_quantized(q [B, T, D]) -> [B, N]``.
    ``decoder_modules`` names the model's top-level modules that only decoding uses (left
    out of an extraction-only load).
    """

    model: torch.nn.Module
    device: torch.device
    hop: int
    decoder_modules: tuple[str, ...] = ("decoder",)
    #: Seconds of calibration signal for random_init (None: the adapter's default).
    calibration_seconds: float | None = None
    _table_cache: list[torch.Tensor] | None = None

    def tables(self) -> list[torch.Tensor]:
        if self._table_cache is None:
            with torch.no_grad():
                self._table_cache = [t.detach().float().contiguous() for t in self._compute_tables()]
        return self._table_cache

    def frames_for(self, n_samples: int) -> int:
        """Exact number of frames the codec gives an utterance of ``n_samples``."""
        return math.ceil(n_samples / self.hop)

    @torch.no_grad()
    def encode(self, waves: torch.Tensor, lengths: torch.Tensor):
        waves = waves.to(self.device, torch.float32)
        return encode_items(self._encode_one, waves, lengths, self.frames_for)

    @torch.no_grad()
    def latent(self, waves: torch.Tensor, lengths: torch.Tensor):
        waves = waves.to(self.device, torch.float32)
        return latent_items(self._latent_one, waves, lengths, self.frames_for)

    @torch.no_grad()
    def encode_with_latent(self, waves: torch.Tensor, lengths: torch.Tensor):
        """One encoder pass per item when the adapter has ``_encode_latent_one(x) -> (codes
        [L, T], latent [T, D])``; else :meth:`encode` then :meth:`latent`."""
        both = getattr(self, "_encode_latent_one", None)
        if both is None:
            return super().encode_with_latent(waves, lengths)
        waves = waves.to(self.device, torch.float32)
        latents: list[torch.Tensor] = []

        def codes_keeping_latent(x):
            c, z = both(x)
            latents.append(z)
            return c

        codes, n_frames = encode_items(codes_keeping_latent, waves, lengths, self.frames_for)
        latents.reverse()  # handed back in item order by pop()
        lat, n_lat = latent_items(lambda x: latents.pop(), waves, lengths, self.frames_for)
        return codes, n_frames, lat, n_lat

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, layers=None) -> torch.Tensor:
        self.require_full_model("decode")
        return self._decode_quantized(self.quantized(codes.to(self.device), layers))

    @torch.no_grad()
    def decode_quantized(self, q: torch.Tensor) -> torch.Tensor:
        self.require_full_model("decode")
        return self._decode_quantized(q.to(self.device, torch.float32))

    def save(self, out: str | Path) -> Path:
        self.require_full_model("save a checkpoint")
        return save_pretrained_atomic(self.model, out)

    def keep_encoder_only(self) -> None:
        """Turn a full load into an extraction-only one: drop ``decoder_modules``, fold weight
        norm. For models built in memory (random_init), whose decoder was already made; a
        checkpoint load for extraction never builds it (see :mod:`._extraction`)."""
        from ._extraction import drop_modules, fold_weight_norm

        drop_modules(self.model, self.decoder_modules)
        fold_weight_norm(self.model)
        self.extraction_only = True

    def _sum_layers(self, codes: torch.Tensor, layers, layer_decode) -> torch.Tensor:
        """``[B, T, D]`` sum of ``layer_decode(l, codes[:, l]) -> [B, D, T]`` over the kept layers,
        through each layer's own decode (so dropped layers contribute nothing)."""
        from .base import layer_mask

        out = torch.zeros(codes.shape[0], self.dim, codes.shape[2], device=self.device)
        for l in layer_mask(self.n_layers, layers):
            out = out + layer_decode(l, codes[:, l])
        return out.transpose(1, 2)
