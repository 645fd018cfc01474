"""Train many TopK SAEs concurrently: one pass over the data feeds every batch to all of them.

Each configuration owns its seeded initialisation and its own Adam, and the batch
order comes from one generator that does not depend on which configurations are
in the sweep, so a sweep gives bit-for-bit the same SAEs as training each
configuration alone with the same seed (tested). What is shared is the data
path: shuffling, gathering rows and, for store-backed frame data, materialising
vectors from codes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import PAPER_Q, PAPER_S
from .model import SAEShape, TopKSAE, adam, auxk_loss, geometric_median, k_of, latent_size, mse



@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by all SAEs of a sweep (paper defaults)."""

    lr: float = 1e-5
    """Adam learning rate."""
    eps: float = 6.25e-10
    """Adam epsilon."""
    batch_size: int = 1024
    """Rows per batch."""
    aux_k: int = -1
    """AuxK: dead latents used to predict the residual (-1 = d/2 as Gao et al., 0 = off)."""
    aux_coef: float = 1.0 / 32
    """Weight of the AuxK loss."""
    dead_samples: int = 0
    """A latent is dead after this many samples without firing (0 = one epoch)."""
    eval_every: int = 0
    """Evaluate monitor loss every this many epochs (0 = about 20 times per run)."""
    normalize: bool = False
    """Divide inputs by one scalar, their RMS distance to the geometric median (not in the paper; makes
    the learning rate mean the same for codecs whose representations differ in scale)."""

    def __post_init__(self):
        if self.lr <= 0 or self.eps <= 0:
            raise ValueError("lr and eps must be positive")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.aux_k < -1 or self.dead_samples < 0 or self.eval_every < 0:
            raise ValueError("aux_k must be >= -1, dead_samples and eval_every >= 0")

    def aux_for(self, d: int) -> int:
        """AuxK latents for input dimension d (Gao et al. use about half the input dimension)."""
        return max(1, d // 2) if self.aux_k < 0 else self.aux_k


@dataclasses.dataclass(frozen=True)
class AutoSchedule:
    """Batch size, epochs and learning rate that fit the data size.

    The paper's settings (batch 1024, lr 1e-5, 200 / 500 epochs) assume ~10^4 optimiser steps on
    Vox-Profile; on a few hundred utterances they give a few hundred steps in which the SAEs
    barely move, and the slow configurations cost an hour. Here the step count is what is fixed:
    batches shrink until an epoch has at least 8 of them, epochs give about ``steps`` (``long_steps``
    for the slow configurations) optimiser steps but never more than the paper's epochs, and the
    learning rate keeps lr × steps at ``lr_steps`` (a total Adam travel of about one RMS spread of
    the normalised data), between 1e-5 and 1e-3."""

    steps: int = 1000
    """Target optimiser steps of the ordinary configurations."""
    long_steps: int = 2500
    """Target optimiser steps of the slow configurations (the paper's 500 / 200 epochs ratio)."""
    paper_epochs: int = 200
    """Never more epochs than the paper's."""
    paper_long_epochs: int = 500
    """Never more epochs than the paper's, slow configurations."""
    paper_batch: int = 1024
    """The paper's batch size, used when an epoch has at least 8 such batches."""
    min_batch: int = 16
    """Smallest batch size chosen."""
    lr_steps: float = 1.0
    """lr × steps of the ordinary configurations."""
    min_lr: float = 1e-5
    """Smallest rate chosen (the paper's)."""
    max_lr: float = 1e-3
    """Largest rate chosen."""

    def batch_for(self, n: int) -> int:
        b = self.paper_batch
        while b > self.min_batch and -(-n // b) < 8:
            b //= 2
        return b

    def epochs_for(self, batch: int, n: int, long: bool) -> int:
        per_epoch = max(1, -(-n // batch))
        steps, cap = (self.long_steps, self.paper_long_epochs) if long else (self.steps, self.paper_epochs)
        return int(min(cap, max(1, -(-steps // per_epoch))))

    def lr_for(self, batch: int, n: int, epochs: int) -> float:
        steps = max(1, epochs * -(-n // batch))
        return float(np.clip(self.lr_steps / steps, self.min_lr, self.max_lr))



@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """One point of the sweep."""

    q: float
    """Latent ratio d_z / d."""
    s: float
    """Relative sparsity: k = ceil(s · d)."""
    epochs: int
    """Passes over the training data."""

    @property
    def tag(self) -> str:
        return f"q{self.q:g}_s{self.s:g}"

    def shape(self, d: int) -> SAEShape:
        return SAEShape(d, latent_size(self.q, d), k_of(self.s, d))

    def seed(self, base: int) -> int:
        """Per-configuration init seed: the same whether trained alone or in a sweep."""
        h = hashlib.sha256(f"{base}|{self.q:g}|{self.s:g}".encode()).digest()
        return int.from_bytes(h[:4], "little")


def paper_grid(
    qs: Sequence[float] = PAPER_Q,
    ss: Sequence[float] = PAPER_S,
    epochs: int = 200,
    long_epochs: int = 500,
    long_q: Sequence[float] = (2.0, 5.0),
    long_s: Sequence[float] = (0.10, 0.05),
) -> list[SAEConfig]:
    """The q × s grid; configurations with q in long_q and s in long_s train long_epochs
    (Wang et al.: 500 for q ∈ {2, 5}, s ∈ {0.10, 0.05}, which converge slower)."""
    out = []
    for q in qs:
        for s in ss:
            long = any(np.isclose(q, a) for a in long_q) and any(np.isclose(s, b) for b in long_s)
            out.append(SAEConfig(float(q), float(s), int(long_epochs if long else epochs)))
    return out


class Source(Protocol):
    """Rows of training data, gathered by index."""

    n: int
    dim: int

    def get(self, idx: np.ndarray) -> np.ndarray: ...


class ArraySource:
    """Rows held in memory (utterance-level representations)."""

    def __init__(self, x: np.ndarray):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.n, self.dim = self.x.shape

    def get(self, idx: np.ndarray) -> np.ndarray:
        return self.x[idx]


class StoreSource:
    """Frame rows materialised from a store's codes batch by batch (memory ∝ batch)."""

    def __init__(self, store, rep, rows: np.ndarray):
        self.store, self.rep, self.rows = store, rep, np.asarray(rows)
        self.n = len(self.rows)
        self.dim = int(store.materialize(rep, self.rows[:1]).shape[1])

    def get(self, idx: np.ndarray) -> np.ndarray:
        # A batch is a set of rows: reading them in disk order keeps memmap access sequential.
        return self.store.materialize(self.rep, np.sort(self.rows[idx]))


def sample_rows(source: Source, n_max: int = 20000, seed: int = 0) -> np.ndarray:
    idx = np.arange(source.n)
    if source.n > n_max:
        idx = np.sort(np.random.default_rng(seed).choice(source.n, n_max, replace=False))
    return source.get(idx)


class Member:
    """One SAE in a sweep: model, optimiser and dead-latent bookkeeping."""

    def __init__(self, cfg: SAEConfig, d: int, b_pre: np.ndarray, seed: int, train: TrainConfig,
                 n_train: int, device: torch.device, scale: float = 1.0):
        self.cfg = cfg
        self.sae = TopKSAE(cfg.shape(d), seed=cfg.seed(seed), b_pre=np.asarray(b_pre) / scale, scale=scale).to(device)
        self.opt = adam(self.sae.parameters(), train.lr, train.eps)
        self.train = train
        self.dead_after = train.dead_samples or n_train
        self.aux_k = train.aux_for(d)
        self.since_fired = torch.zeros(self.sae.shape.d_z, dtype=torch.long, device=device)
        self.history: list[dict] = []
        self.steps = 0

    def step(self, x: torch.Tensor) -> float:
        sae = self.sae
        c = float(sae.scale)
        # pre = (x/c - b_pre) W_encᵀ with b_pre detached in the product, so autograd forms no
        # [batch, d] input gradient (one [batch, d_z] x [d_z, d] product per step less); b_pre's
        # gradient, -W_encᵀ Σ_rows ∂pre, comes from a term whose value is exactly 0 (v - v).
        v = sae.W_enc.detach() @ sae.b_pre
        pre = (x / sae.scale - sae.b_pre.detach()) @ sae.W_enc.t() + (v.detach() - v)
        vals, idx = pre.topk(sae.k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        u_hat = sae.decode(z)
        loss = mse(u_hat, x)
        total = loss / (c * c)  # optimise in scaled units
        if self.aux_k > 0:
            dead = self.since_fired >= self.dead_after
            resid = (x - u_hat).detach() / c
            total = total + self.train.aux_coef * auxk_loss(sae, pre, resid, dead, self.aux_k)
        fired = torch.zeros_like(self.since_fired, dtype=torch.bool)
        fired[idx[vals > 0]] = True  # = (z > 0).any(0), from the k chosen per row
        self.since_fired += x.shape[0]
        self.since_fired[fired] = 0
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        sae.project_decoder_grad()
        self.opt.step()
        sae.normalize_decoder()
        self.steps += 1
        return float(loss.detach())

    @property
    def dead_fraction(self) -> float:
        """Fraction of latents that have not fired for ``dead_after`` training samples."""
        return float((self.since_fired >= self.dead_after).float().mean())


@torch.no_grad()
def reconstruction_loss(sae: TopKSAE, x: np.ndarray, device: torch.device, chunk: int = 8192) -> float:
    tot, n = 0.0, 0
    for a in range(0, len(x), chunk):
        xb = torch.as_tensor(x[a : a + chunk], device=device)
        u_hat, _ = sae(xb)
        tot += float((u_hat - xb).pow(2).sum())
        n += len(xb)
    return tot / max(n, 1)


def train_sweep(
    configs: Sequence[SAEConfig],
    source: Source,
    train: TrainConfig = TrainConfig(),
    seed: int = 0,
    device: torch.device | str = "cpu",
    monitor: np.ndarray | None = None,
    progress: bool = True,
    on_epoch: Callable[[int], None] | None = None,
) -> list[Member]:
    """Train all ``configs`` on ``source`` in one pass per epoch; returns the members in order.

    The batch order for epoch e depends only on (seed, e, n), and each configuration
    simply stops after its own number of epochs.
    """
    device = torch.device(device)
    if source.n < 1:
        raise ValueError("no training rows for the SAE")
    sample = sample_rows(source, seed=seed)
    b_pre = geometric_median(sample)
    scale = 1.0
    if train.normalize:
        rms = float(np.sqrt(((sample - b_pre) ** 2).sum(1).mean()))
        scale = rms if rms > 0 else 1.0
    members = [Member(c, source.dim, b_pre, seed, train, source.n, device, scale) for c in configs]
    n_epochs = max((c.epochs for c in configs), default=0)
    every = train.eval_every or max(1, n_epochs // 20)
    bs = train.batch_size
    n_batches = (source.n + bs - 1) // bs
    bar = tqdm(total=n_epochs * n_batches, desc=f"SAE sweep ({len(members)} configs)", disable=not progress,
               leave=False)
    for epoch in range(n_epochs):
        perm = np.random.default_rng([seed, epoch]).permutation(source.n)
        active = [m for m in members if epoch < m.cfg.epochs]
        losses = np.zeros(len(active))
        for a in range(0, source.n, bs):
            x = torch.as_tensor(source.get(perm[a : a + bs]), device=device)
            for i, m in enumerate(active):
                losses[i] += m.step(x) * len(x)
            bar.update(1)
        last = epoch + 1 == n_epochs
        for i, m in enumerate(active):
            if (epoch + 1) % every == 0 or epoch + 1 == m.cfg.epochs or last:
                rec = {"epoch": epoch + 1, "train_mse": losses[i] / source.n}
                if monitor is not None and len(monitor):
                    rec["monitor_mse"] = reconstruction_loss(m.sae, monitor, device)
                m.history.append(rec)
        if on_epoch is not None:
            on_epoch(epoch)
    bar.close()
    for m in members:
        m.sae.eval()
    return members
