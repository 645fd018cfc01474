"""The AnCoGen-Codec network: a masked encoder-decoder transformer over token streams.

The sequence is every stream laid out in time (one token per stream per position,
``patch`` frames per position; the codec's token embeds all RVQ layers of those
frames) followed by the utterance's identity tokens. In the MAE manner only the
*visible* tokens are gathered and encoded (plus one always-visible register token,
so a sample with nothing visible still has something to attend to); the decoder
then sees the encodings at their positions and a learned mask token everywhere
else (mask tokens attend to the encodings, but are not attended to: as keys they
would only dilute attention), and predicts every stream's classes. One output head per RVQ layer. Losses
count masked positions only (:func:`masked_loss`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .config import ModelConfig
from .streams import Vocab

CODEC = "codec"
IDENTITY = "identity"


@dataclasses.dataclass
class Batch:
    """Padded streams of a batch of windows (``T`` a multiple of ``patch``)."""

    codes: torch.Tensor
    """``[B, T, L]`` long."""
    attrs: dict[str, torch.Tensor]
    """Frame attributes: ``[B, T]`` long, -1 = missing."""
    valid: torch.Tensor
    """``[B, T]`` bool: the frame exists (False = padding)."""
    identity: torch.Tensor | None = None
    """``[B, k]`` long identity tokens."""

    def to(self, device) -> "Batch":
        return Batch(self.codes.to(device), {k: v.to(device) for k, v in self.attrs.items()}, self.valid.to(device),
                     None if self.identity is None else self.identity.to(device))


def _sinusoid(n: int, d: int, device) -> torch.Tensor:
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    i = torch.arange(0, d, 2, device=device, dtype=torch.float32)
    ang = pos / torch.pow(10000.0, i / d)
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2] = torch.sin(ang)
    pe[:, 1::2] = torch.cos(ang[:, : d // 2])
    return pe


class AttributeModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab: Vocab, attributes: Sequence[str]):
        super().__init__()
        self.cfg, self.vocab = cfg, vocab
        self.frame_attrs = [a for a in attributes if a != IDENTITY]
        self.has_identity = IDENTITY in attributes
        self.streams = [CODEC, *self.frame_attrs]
        sizes = vocab.sizes(self.frame_attrs)
        d, p = cfg.d_model, cfg.patch
        # One table per (stream, offset in patch): index o*(V+1)+v, v = V for missing/padding.
        self.codec_emb = nn.ModuleList(nn.Embedding(p * (k + 1), d) for k in vocab.codebook_sizes)
        self.attr_emb = nn.ModuleDict({a: nn.Embedding(p * (sizes[a] + 1), d) for a in self.frame_attrs})
        self.stream_emb = nn.Embedding(len(self.streams) + 1, d)
        if self.has_identity:
            self.id_emb = nn.Embedding(vocab.identity_dims * vocab.identity_bins, d)
            self.id_dim_emb = nn.Embedding(vocab.identity_dims, d)
            self.id_head = nn.Linear(d, vocab.identity_bins)
        self.register = nn.Parameter(torch.zeros(d))
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.dec_stream_emb = nn.Embedding(len(self.streams) + 1, d)
        nn.init.normal_(self.register, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

        def stack(n):
            layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.ff_mult * d, cfg.dropout, batch_first=True, norm_first=True)
            return nn.TransformerEncoder(layer, n, enable_nested_tensor=False)

        self.encoder, self.decoder = stack(cfg.enc_layers), stack(cfg.dec_layers)
        self.enc_norm, self.enc_to_dec = nn.LayerNorm(d), nn.Linear(d, d)
        self.dec_norm = nn.LayerNorm(d)
        self.codec_heads = nn.ModuleList(nn.Linear(d, p * k) for k in vocab.codebook_sizes)
        self.attr_heads = nn.ModuleDict({a: nn.Linear(d, p * sizes[a]) for a in self.frame_attrs})
        self.sizes = sizes

    # -- layout ---------------------------------------------------------------------
    def n_tokens(self, T: int) -> int:
        return len(self.streams) * (T // self.cfg.patch) + (self.vocab.identity_dims if self.has_identity else 0)

    def _patch_index(self, x: torch.Tensor, V: int, valid: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` classes -> ``[B, P, patch]`` embedding indices."""
        p = self.cfg.patch
        x = torch.where((x >= 0) & valid, x, torch.full_like(x, V))
        B, T = x.shape
        off = torch.arange(p, device=x.device) * (V + 1)
        return x.view(B, T // p, p) + off

    def embed(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Token vectors ``[B, N, d]`` (content + stream + time) and padding ``[B, N]``."""
        B, T, L = b.codes.shape
        p, d = self.cfg.patch, self.cfg.d_model
        P = T // p
        pe = _sinusoid(P, d, b.codes.device)
        toks = []
        x = sum(self.codec_emb[l](self._patch_index(b.codes[..., l], self.vocab.codebook_sizes[l], b.valid)).sum(2)
                for l in range(L))
        toks.append(x + self.stream_emb.weight[0] + pe)
        for i, a in enumerate(self.frame_attrs, 1):
            x = self.attr_emb[a](self._patch_index(b.attrs[a], self.sizes[a], b.valid)).sum(2)
            toks.append(x + self.stream_emb.weight[i] + pe)
        pos_pad = ~b.valid.view(B, P, p).any(-1)
        pads = [pos_pad] * len(self.streams)
        if self.has_identity:
            k, nb = self.vocab.identity_dims, self.vocab.identity_bins
            idx = b.identity + torch.arange(k, device=b.codes.device) * nb
            toks.append(self.id_emb(idx) + self.id_dim_emb.weight + self.stream_emb.weight[len(self.streams)])
            pads.append(torch.zeros(B, k, dtype=torch.bool, device=b.codes.device))
        return torch.cat(toks, 1), torch.cat(pads, 1)

    def _dec_pos(self, B: int, T: int, device) -> torch.Tensor:
        P, d = T // self.cfg.patch, self.cfg.d_model
        pe = _sinusoid(P, d, device)
        parts = [pe + self.dec_stream_emb.weight[i] for i in range(len(self.streams))]
        if self.has_identity:
            parts.append(self.id_dim_emb.weight + self.dec_stream_emb.weight[len(self.streams)])
        return torch.cat(parts, 0)[None].expand(B, -1, -1)

    def token_times(self, T: int, device) -> torch.Tensor:
        """Position index of every token (NaN for identity tokens, which have no time)."""
        P = T // self.cfg.patch
        t = torch.arange(P, device=device, dtype=torch.float32).repeat(len(self.streams))
        if self.has_identity:
            t = torch.cat([t, torch.full((self.vocab.identity_dims,), float("nan"), device=device)])
        return t

    def _bias(self, times: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """``[B * heads, S, S]`` attention bias: ``-slope_h * |t_i - t_j|`` (ALiBi-style locality, one
        head global) so tokens of different streams at one time find each other quickly; 0 where a
        token has no time; -inf for padded keys."""
        H = self.cfg.n_heads
        slopes = torch.tensor([2.0 ** (-2 * h) for h in range(H - 1)] + [0.0], device=times.device)
        d = (times[:, :, None] - times[:, None, :]).abs().nan_to_num(0.0)
        bias = -slopes[None, :, None, None] * d[:, None]
        bias = bias.masked_fill(pad[:, None, None, :], float("-inf"))
        B, S = pad.shape
        return bias.reshape(B * H, S, S)

    # -- forward ----------------------------------------------------------------------
    def encode(self, tokens: torch.Tensor, visible: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode only the visible tokens. Returns (encodings ``[B, 1+V, d]`` with the register
        first, their token indices ``[B, V]``, key padding ``[B, 1+V]``)."""
        B, N, d = tokens.shape
        n_vis = visible.sum(1)
        V = int(n_vis.max()) if B else 0
        # Visible tokens first, in sequence order (stable sort on "is hidden").
        order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)[:, :V]
        gathered = torch.gather(tokens, 1, order[..., None].expand(-1, -1, d))
        keep = torch.arange(V, device=tokens.device)[None] < n_vis[:, None]
        gathered = gathered * keep[..., None]
        x = torch.cat([self.register.expand(B, 1, d), gathered], 1)
        pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=tokens.device), ~keep], 1)
        t = torch.cat([torch.full((B, 1), float("nan"), device=tokens.device), torch.gather(times.expand(B, -1), 1, order)], 1)
        h = self.enc_norm(self.encoder(x, mask=self._bias(t, pad)))
        return h, order, pad

    def forward(self, b: Batch, mask: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``mask [B, N]`` True = hidden from the encoder. Returns logits per stream."""
        tokens, pad = self.embed(b)
        visible = ~mask & ~pad
        B, N, d = tokens.shape
        T = b.codes.shape[1]
        times = self.token_times(T, tokens.device)
        h, order, epad = self.encode(tokens, visible, times)
        full = self.mask_token.expand(B, N, d).clone()
        enc = self.enc_to_dec(h[:, 1:])
        keep = ~epad[:, 1:]
        bi = torch.arange(B, device=tokens.device)[:, None].expand_as(order)
        full[bi[keep], order[keep]] = enc[keep]
        y = torch.cat([self.enc_to_dec(h[:, :1]), full + self._dec_pos(B, T, tokens.device)], 1)
        # Mask tokens are queries only: as keys they would carry nothing but their position (which
        # the query has already) and would dilute attention to the visible encodings.
        ypad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=tokens.device), pad | ~visible], 1)
        yt = torch.cat([torch.full((1,), float("nan"), device=tokens.device), times])[None].expand(B, -1)
        y = self.dec_norm(self.decoder(y, mask=self._bias(yt, ypad)))[:, 1:]
        return self._heads(y, B, T)

    def _heads(self, y: torch.Tensor, B: int, T: int):
        P, p = T // self.cfg.patch, self.cfg.patch
        out: dict = {}
        seg = lambda i: y[:, i * P : (i + 1) * P]  # noqa: E731
        out[CODEC] = [h(seg(0)).view(B, P, p, -1).reshape(B, T, -1) for h in self.codec_heads]
        for i, a in enumerate(self.frame_attrs, 1):
            out[a] = self.attr_heads[a](seg(i)).view(B, P, p, -1).reshape(B, T, -1)
        if self.has_identity:
            out[IDENTITY] = self.id_head(y[:, len(self.streams) * P :])
        return out

    # -- masks ---------------------------------------------------------------------------
    def stream_mask(self, B: int, T: int, masked: Sequence[str], device) -> torch.Tensor:
        """A mask hiding whole streams (the inference maskings)."""
        P = T // self.cfg.patch
        parts = [torch.full((B, P), s in masked, dtype=torch.bool, device=device) for s in self.streams]
        if self.has_identity:
            parts.append(torch.full((B, self.vocab.identity_dims), IDENTITY in masked, dtype=torch.bool, device=device))
        return torch.cat(parts, 1)

    def frame_mask(self, mask: torch.Tensor, stream: str, T: int) -> torch.Tensor:
        """``[B, T]`` frames of ``stream`` whose position is masked."""
        P = T // self.cfg.patch
        i = self.streams.index(stream)
        return mask[:, i * P : (i + 1) * P].repeat_interleave(self.cfg.patch, 1)


def masked_loss(model: AttributeModel, logits: dict, b: Batch, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on masked, existing, labelled positions only: mean per stream (the codec's
    averaged over its layers), summed over streams."""
    T = b.codes.shape[1]
    total = logits[CODEC][0].new_zeros(())
    parts: dict[str, float] = {}

    def ce(lg, target, m):
        tgt = torch.where(m & (target >= 0), target, torch.full_like(target, -100))
        if not (tgt >= 0).any():
            return None
        return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), ignore_index=-100)

    m = model.frame_mask(mask, CODEC, T) & b.valid
    terms = [ce(lg, b.codes[..., l], m) for l, lg in enumerate(logits[CODEC])]
    terms = [t for t in terms if t is not None]
    if terms:
        v = torch.stack(terms).mean()
        total, parts[CODEC] = total + v, float(v.detach())
    for a in model.frame_attrs:
        v = ce(logits[a], b.attrs[a], model.frame_mask(mask, a, T) & b.valid)
        if v is not None:
            total, parts[a] = total + v, float(v.detach())
    if model.has_identity:
        k = model.vocab.identity_dims
        v = ce(logits[IDENTITY], b.identity, mask[:, -k:])
        if v is not None:
            total, parts[IDENTITY] = total + v, float(v.detach())
    return total, parts


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
