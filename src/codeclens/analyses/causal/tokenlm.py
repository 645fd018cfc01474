"""A small causal language model over RVQ token streams, trained on a store.

At frame t the model sees every layer's code of frames ≤ t (each layer embedded, the
embeddings summed, a learned position added) and predicts every layer's code at t+1
(one output head per layer). A dropped code (−1) embeds to zero. Tiny by default so it
trains on the demo corpus on a CPU in seconds; ``dim``/``depth``/``steps`` scale it up
for real corpora on a GPU. As a consumer it returns the next-code log-probabilities of
every layer, concatenated (``groups`` = the codebook sizes).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...util.device import resolve_device


class TokenLM(nn.Module):
    def __init__(self, codebook_sizes: list[int], dim: int = 64, depth: int = 2, heads: int = 4, max_len: int = 4096):
        super().__init__()
        self.sizes = [int(k) for k in codebook_sizes]
        self.emb = nn.ModuleList(nn.Embedding(k + 1, dim, padding_idx=k) for k in self.sizes)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.ModuleList(nn.Linear(dim, k) for k in self.sizes)
        self.max_len = max_len

    def forward(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """``codes [B, T, L]`` (−1 = absent) -> per-layer logits ``[B, T, K_l]`` for frame t+1."""
        B, T, L = codes.shape
        x = self.pos(torch.arange(T, device=codes.device).clamp(max=self.max_len - 1))[None]
        for l, e in enumerate(self.emb):
            c = codes[..., l]
            x = x + e(torch.where(c < 0, torch.full_like(c, self.sizes[l]), c))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=codes.device)
        h = self.body(x, mask=mask, is_causal=True)
        return [o(h) for o in self.out]


def train_lm(store, dim: int = 64, depth: int = 2, steps: int = 300, batch: int = 16, crop: int = 96,
             lr: float = 3e-3, seed: int = 0, device: str = "cpu", rows: np.ndarray | None = None) -> TokenLM:
    """Next-frame cross-entropy on random crops of the store's utterances (``rows``: which)."""
    dev = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    u = store.utterances
    rows = np.arange(len(u)) if rows is None else np.asarray(rows)
    offs, lens = u["frame_offset"].to_numpy()[rows], u["n_frames"].to_numpy()[rows]
    keep = lens >= 3
    offs, lens = offs[keep], lens[keep]
    codes = torch.from_numpy(np.asarray(store.codes, dtype=np.int64))
    model = TokenLM(store.codebook_sizes, dim, depth).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to 0
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(i, steps) / max(steps, 1))))
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(offs), (batch,), generator=g).numpy()
        n = int(min(crop, lens[pick].min()))
        starts = [int(o) + int(torch.randint(int(l) - n + 1, (1,), generator=g)) for o, l in zip(offs[pick], lens[pick])]
        x = torch.stack([codes[s : s + n] for s in starts]).to(dev)
        logits = model(x[:, :-1])
        loss = sum(nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:, l].reshape(-1))
                   for l, lg in enumerate(logits)) / len(logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


class TokenLMConsumer:
    """The token LM as a consumer: next-code log-probabilities of every layer at every frame."""

    def __init__(self, store, seed: int = 0, device: str = "cpu", dim: int = 64, depth: int = 2, steps: int = 300,
                 model: TokenLM | None = None):
        self.name = "token LM"
        self.device = resolve_device(device)
        self.model = model or train_lm(store, dim=dim, depth=depth, steps=steps, seed=seed, device=str(self.device))
        self.groups = list(self.model.sizes)

    @torch.inference_mode()
    def score(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(self.device)
        out = self.model(x)
        return torch.cat([torch.log_softmax(o.float(), -1) for o in out], -1).cpu().numpy()
