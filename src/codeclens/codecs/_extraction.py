"""Extraction-only loads: a codec's encoder and quantizer without its decoder.

Extraction only encodes, yet a full load holds the decoder's weights too (about half of
SpeechTokenizer, EnCodec and DAC). Here the decoder is replaced by :class:`DroppedModule`
*before* any weight is read: the model is built on the ``meta`` device (no memory), the
decoder swapped for the placeholder, and only the kept keys are read from the weights
file (safetensors by key, torch pickles memory-mapped), so the decoder's weights never
reach memory, not even for a moment. Weight norm is then folded into plain weights: for
inference ``g * v / |v|`` is a constant, and the old-style hook keeps both ``v`` and the
computed ``weight`` alive (two copies of every convolution).

Codes are bit-identical to the full load's: the kept modules get the same tensors, and
the folded weight is the very ``torch._weight_norm(v, g)`` the hook computes on each call.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable

import torch

from ..errors import CodeclensError


class DroppedModule(torch.nn.Module):
    """Stands where an extraction-only load left a module out; calling it is a one-line error."""

    def __init__(self, name: str):
        super().__init__()
        self.dropped = name

    def forward(self, *args, **kwargs):
        raise CodeclensError(
            f"the codec's {self.dropped} was not loaded (extraction-only load); load the codec with "
            "load_codec(spec) (extraction_only=False) to decode"
        )

    def extra_repr(self) -> str:
        return f"dropped={self.dropped!r}"


def drop_modules(model: torch.nn.Module, names: Iterable[str]) -> None:
    """Replace ``model.<name>`` by a :class:`DroppedModule` for each name (its weights go with it)."""
    for name in names:
        setattr(model, name, DroppedModule(name))


def fold_weight_norm(model: torch.nn.Module) -> int:
    """Turn every weight-normed parameter of ``model`` into the plain weight it stands for
    (both ``torch.nn.utils.weight_norm`` hooks and ``parametrizations.weight_norm``);
    returns how many were folded. Not under ``no_grad``: ``remove_parametrizations`` would
    then register the folded weight as a buffer instead of a parameter."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.weight_norm import WeightNorm

    n = 0
    for m in model.modules():
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations.keys()):
                if all(type(p).__name__ == "_WeightNorm" for p in m.parametrizations[name]):
                    parametrize.remove_parametrizations(m, name, leave_parametrized=True)
                    n += 1
        for hook in [h for h in m._forward_pre_hooks.values() if isinstance(h, WeightNorm)]:
            torch.nn.utils.remove_weight_norm(m, hook.name)
            n += 1
    return n


def read_torch_state(path: Path, mmap: bool) -> dict[str, torch.Tensor]:
    """A state dict from a torch pickle (``weights_only``), memory-mapped when asked and possible
    (a legacy, non-zip pickle cannot be mapped and is read whole)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
        if mmap and "zipfile" in str(e):
            return read_torch_state(path, mmap=False)
        raise CodeclensError(f"cannot load '{path}' as a weights-only torch checkpoint: {str(e).splitlines()[0]}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CodeclensError(f"'{path}' does not hold a state dict")
    return obj


def load_kept_state(model: torch.nn.Module, path: Path, what: str, dropped: tuple[str, ...],
                    dropped_suffixes: tuple[str, ...] = ()) -> None:
    """Load ``model``'s own keys from the weights file ``path``, reading nothing else.

    ``model`` may be on the ``meta`` device (its tensors are then replaced by the loaded ones,
    cast to the model's dtypes). Keys under a ``dropped`` prefix (``"decoder."``) may be in the
    file and are skipped unread; any other key the model lacks, or one it needs that the file
    lacks, is an error, as in a full strict load. Keys ending in ``dropped_suffixes`` (state the
    caller removed from the model, e.g. training-only buffers) are skipped likewise."""
    want = model.state_dict()
    if path.suffix == ".safetensors":
        header, start = read_safetensors_header(path, what)
        _check_keys(want, set(header), dropped, dropped_suffixes, what)
        state = read_safetensors(path, {k: header[k] for k in want}, start)
    else:
        full = read_torch_state(path, mmap=True)
        _check_keys(want, set(full), dropped, dropped_suffixes, what)
        # Copies, so the file's mapping (and any page of it read) goes when ``full`` does.
        state = {k: full[k].clone() if isinstance(full[k], torch.Tensor) else full[k] for k in want}
        del full
    state = {k: v.to(want[k].dtype) if v.is_floating_point() and want[k].is_floating_point() else v
             for k, v in state.items()}
    meta = any(t.is_meta for t in want.values())
    try:
        model.load_state_dict(state, strict=True, assign=meta)
    except RuntimeError as e:  # shape mismatches: another size of the architecture
        raise CodeclensError(f"{what}: checkpoint does not match the architecture: {str(e).strip().splitlines()[0][:300]}") from None
    no_meta_left(model, what)


#: safetensors dtype names -> torch dtypes.
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_header(path: Path, what: str) -> tuple[dict[str, dict], int]:
    """(tensor entries of a safetensors file's header, byte offset where its data starts)."""
    import json

    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        raise CodeclensError(f"{what}: cannot read '{path}' as safetensors: {e}") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors(path: Path, entries: dict[str, dict], start: int) -> dict[str, torch.Tensor]:
    """The tensors ``entries`` names, each read into memory of its own.

    Not through ``safe_open``: its tensors are views of the file's mapping, which then stays
    mapped as long as any of them lives, and every page of it once read stays resident with
    it. After an extraction-only load that held the weight-norm ``v``/``g`` pages folded away
    and, on the first encode, paged in the LSTM and codebooks a second time over: measured on
    full-size SpeechTokenizer, 0.49 GB resident for 0.31 GB of tensors (docs/benchmarks.md)."""
    out = {}
    with open(path, "rb") as fh:
        for k, e in entries.items():
            dtype = _ST_DTYPES.get(e["dtype"])
            if dtype is None:
                raise CodeclensError(f"'{path}': tensor {k} has dtype {e['dtype']}, which codeclens does not read")
            a, b = e["data_offsets"]
            buf = bytearray(b - a)
            fh.seek(start + a)
            if fh.readinto(buf) != b - a:
                raise CodeclensError(f"'{path}' is truncated (tensor {k})")
            t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            out[k] = t.reshape(e["shape"])
    return out


def _check_keys(want: dict, have: set[str], dropped: tuple[str, ...], suffixes: tuple[str, ...], what: str) -> None:
    missing = sorted(set(want) - have)
    unexpected = sorted(k for k in have - set(want) if not k.startswith(dropped) and not (suffixes and k.endswith(suffixes)))
    if missing or unexpected:
        raise CodeclensError(
            f"{what}: checkpoint does not match the architecture "
            f"(missing {len(missing)} keys e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]})"
        )


_HF_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def hf_extraction_class(model_cls: type, drop: tuple[str, ...]) -> type:
    """A subclass of the transformers ``model_cls`` whose ``drop`` modules are placeholders.

    ``from_pretrained`` builds it on the meta device and materialises only the checkpoint
    tensors the model has, so the dropped modules' weights are never read (they are reported
    as unexpected keys, under their renamed names). The subclass keeps the parent's name and
    module: transformers looks up its key conversions by class name and skips them for
    classes it takes for custom code."""
    key = (model_cls, drop)
    if key not in _HF_CLASSES:
        def __init__(self, config, *args, **kwargs):
            model_cls.__init__(self, config, *args, **kwargs)
            drop_modules(self, drop)

        _HF_CLASSES[key] = type(model_cls.__name__, (model_cls,), {
            "__init__": __init__, "__module__": model_cls.__module__, "__qualname__": model_cls.__qualname__,
            "__doc__": f"{model_cls.__name__} without {', '.join(drop)} (codeclens extraction-only load)",
        })
    return _HF_CLASSES[key]


def no_meta_left(model: torch.nn.Module, what: str) -> None:
    """A tensor still on ``meta`` is one no state dict holds (a non-persistent buffer): a
    meta build cannot serve that model, and using it would fail far from here."""
    left = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise CodeclensError(f"{what}: a load onto the meta device left {len(left)} tensors unset (e.g. {left[:2]})")
