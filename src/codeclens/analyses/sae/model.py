"""TopK sparse autoencoder (Gao et al. 2024, as used by Wang et al. 2026).

    z = ReLU(TopK(W_enc (u - b_pre), k)),   û = W_dec z + b_pre

(optionally on u / c for one global scale c, see ``scale``).

No biases inside the linear maps; the only bias is ``b_pre``, initialised at the
geometric median of the training data. Decoder columns are kept at unit norm:
the gradient component parallel to each column is removed before the step (a
step along the column would only change its norm) and the columns are
renormalised after it, so activation magnitudes carry all the scale.
An optional AuxK loss makes dead latents predict the reconstruction residual.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn


def latent_size(q: float, d: int) -> int:
    """d_z = q · d (rounded; at least 1)."""
    return max(1, int(round(q * d)))


def k_of(s: float, d: int) -> int:
    """k = ceil(s · d); rounding first so 0.1 · 30 is 3, not 4."""
    return max(1, int(math.ceil(round(s * d, 6))))


@dataclasses.dataclass(frozen=True)
class SAEShape:
    """The architecture of one SAE."""

    d: int
    """Input dimension (d_codec)."""
    d_z: int
    """Number of latents."""
    k: int
    """Active latents per input."""

    def __post_init__(self):
        if self.d < 1 or self.d_z < 1:
            raise ValueError(f"SAE dimensions must be positive (d={self.d}, d_z={self.d_z})")
        if not 1 <= self.k <= self.d_z:
            raise ValueError(f"k must be in 1..d_z={self.d_z}, got {self.k}")


class TopKSAE(nn.Module):
    """A TopK SAE with its own seeded initialisation (so a sweep can rebuild it alone)."""

    def __init__(self, shape: SAEShape, seed: int = 0, b_pre: np.ndarray | torch.Tensor | None = None,
                 scale: float = 1.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"input scale must be > 0, got {scale}")
        self.shape = shape
        gen = torch.Generator().manual_seed(int(seed))
        w = torch.randn(shape.d, shape.d_z, generator=gen, dtype=torch.float32)
        w = w / w.norm(dim=0, keepdim=True).clamp_min(1e-12)
        # Encoder starts as the decoder's transpose (Gao et al.): every latent begins
        # by reading the direction it writes, which avoids many dead latents early on.
        self.W_dec = nn.Parameter(w)  # [d, d_z]; column j is latent j's direction
        self.W_enc = nn.Parameter(w.t().clone())  # [d_z, d]
        bp = torch.zeros(shape.d) if b_pre is None else torch.as_tensor(np.asarray(b_pre), dtype=torch.float32)
        if bp.shape != (shape.d,):
            raise ValueError(f"b_pre has shape {tuple(bp.shape)}, expected ({shape.d},)")
        self.b_pre = nn.Parameter(bp.clone())  # in scaled units (u / scale)
        # One global input scale (1 = none): the SAE works on u / scale and returns û in u's units.
        # It changes no reported metric (all are scale free), only how far an Adam step goes.
        self.register_buffer("scale", torch.tensor(float(scale)))

    @property
    def k(self) -> int:
        return self.shape.k

    def pre_activations(self, u: torch.Tensor) -> torch.Tensor:
        return (u / self.scale - self.b_pre) @ self.W_enc.t()

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        """Dense ``[n, d_z]`` codes with at most k non-zeros per row."""
        return self._topk(self.pre_activations(u), self.k)

    @staticmethod
    def _topk(pre: torch.Tensor, k: int) -> torch.Tensor:
        vals, idx = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.W_dec.t() + self.b_pre) * self.scale

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(u)
        return self.decode(z), z

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        # sqrt of summed squares, not .norm(dim=0): the same column norms (to float rounding),
        # but a reduction over rows of a row-major matrix, ~10x faster on CPU (every step).
        self.W_dec.div_(self.W_dec.square().sum(0, keepdim=True).sqrt_().clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the part of each column's gradient parallel to the (unit) column."""
        g = self.W_dec.grad
        if g is not None:
            g.sub_((g * self.W_dec).sum(dim=0, keepdim=True) * self.W_dec)


def mse(u_hat: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """L = ||u - û||², averaged over the batch."""
    return (u_hat - u).pow(2).sum(-1).mean()


def auxk_loss(sae: TopKSAE, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, aux_k: int) -> torch.Tensor:
    """AuxK (Gao et al.): the top ``aux_k`` dead latents reconstruct the residual, normalised
    by the residual's variance so the term is scale free. Zero when no latent is dead.

    Only the dead latents' columns of ``pre`` and of the decoder enter: the top-k among them and
    their reconstruction cost O(batch · dead) instead of O(batch · d_z), and give the same loss and
    gradients as masking the live ones to -inf over all latents (tested)."""
    cols = torch.nonzero(dead, as_tuple=True)[0]
    if len(cols) == 0 or aux_k <= 0:
        return pre.new_zeros(())
    z_aux = TopKSAE._topk(pre[:, cols], min(aux_k, len(cols)))  # [B, n_dead]
    e_hat = z_aux @ sae.W_dec[:, cols].t()
    denom = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (e_hat - residual).pow(2).sum(-1).mean() / denom


def adam(params, lr: float, eps: float) -> torch.optim.Optimizer:
    """Adam with one fused kernel per parameter where the device has one (CPU, CUDA, MPS in
    recent torch), else the multi-tensor version: the update rule of the per-element loop, at
    float tolerance (tested), in a fraction of its per-step time (the SAEs here are small, so
    the optimiser's dozen element-wise passes are a visible share of a step)."""
    params = list(params)
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused = all(p.device.type in _get_fused_kernels_supported_devices() and p.is_floating_point()
                    for p in params)
    except ImportError:  # older torch: no fused CPU kernel either
        fused = False
    if fused:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    return torch.optim.Adam(params, lr=lr, eps=eps, foreach=True)


def geometric_median(x: np.ndarray, iters: int = 200, tol: float = 1e-7) -> np.ndarray:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("geometric median of no points")
    y = x.mean(0)
    for _ in range(iters):
        dist = np.linalg.norm(x - y, axis=1)
        # A point sitting on a data sample would divide by zero; clamp it (the usual fix).
        w = 1.0 / np.maximum(dist, 1e-12)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if np.linalg.norm(y_new - y) <= tol * max(1.0, np.linalg.norm(y)):
            y = y_new
            break
        y = y_new
    return y.astype(np.float32)
