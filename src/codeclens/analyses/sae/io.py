"""SAEs on disk, self-describing: ``sae.json`` (shape, sweep point, provenance, metrics)
beside ``sae.safetensors`` (W_enc, W_dec, b_pre, scale). :func:`load_sae` needs nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...errors import CodeclensError
from ...util.atomic import atomic_dir, write_json
from .model import SAEShape, TopKSAE

FORMAT = "codeclens-topk-sae/1"
META = "sae.json"
WEIGHTS = "sae.safetensors"


def save_sae(path: str | Path, sae: TopKSAE, meta: dict[str, Any] | None = None) -> Path:
    """Write the SAE directory atomically (a crash leaves the old one or none)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        tensors = {n: p.detach().cpu().contiguous() for n, p in sae.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS))
        shape = sae.shape
        write_json(tmp / META, {
            "format": FORMAT, "d": shape.d, "d_z": shape.d_z, "k": shape.k,
            "model": "TopK SAE: z = ReLU(TopK(W_enc (u/scale - b_pre), k)), u_hat = (W_dec z + b_pre) * scale",
            "scale": float(sae.scale),
            **(meta or {}),
        })
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    f = Path(path) / META
    if not f.is_file():
        raise CodeclensError(f"{path}: not a saved SAE (no {META})")
    meta = json.loads(f.read_text())
    if meta.get("format") != FORMAT:
        raise CodeclensError(f"{path}: unknown SAE format {meta.get('format')!r}")
    return meta


def load_sae(path: str | Path, device: torch.device | str = "cpu") -> tuple[TopKSAE, dict[str, Any]]:
    from safetensors.torch import load_file

    meta = read_meta(path)
    w = Path(path) / WEIGHTS
    if not w.is_file():
        raise CodeclensError(f"{path}: missing {WEIGHTS}")
    sae = TopKSAE(SAEShape(int(meta["d"]), int(meta["d_z"]), int(meta["k"])))
    state = load_file(str(w))
    state.setdefault("scale", torch.tensor(1.0))
    try:
        sae.load_state_dict(state)
    except RuntimeError as e:
        raise CodeclensError(f"{path}: weights do not match {META}: {str(e).splitlines()[0]}") from None
    return sae.to(device).eval(), meta
