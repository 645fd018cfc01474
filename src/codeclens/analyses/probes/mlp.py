"""Optional one-hidden-layer MLP probes (``--mlp``), beside the linear ones.

A linear probe asks whether an attribute is *linearly* readable; an MLP asks
whether it is readable at all by a small non-linear reader. The gap between the
two says how non-linearly the attribute is encoded. An MLP can also memorise
input types, so its score only means something next to its control task
(Hewitt & Liang): the same control labels as the linear probe, the same
selectivity.

Each probe sees exactly the linear probe's inputs: the representation
PCA-whitened on the train rows. Architecture: ``z -> ReLU(z W1 + b1) W2 + b2``.
Objective: mean (class-weighted with ``--balance``) cross-entropy, or squared
error on train-standardised targets, plus ``wd (|W1|^2 + |W2|^2)``. Every
strength of the grid is one member of a batched tensor program (weights
``[G, r, H]``), trained by Adam on shared minibatches; since Adam's state is
per element and the members share no parameters, this is G independent
trainings. Training goes in rounds (one pass over the train rows, or as many
passes as make ``MIN_STEPS`` steps on small sets); each member keeps its
best-validation-loss round (early stopping after ``patience`` rounds without
improvement), and the probe keeps the member that is best on val (macro-F1;
squared error for regression).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Sequence

import numpy as np
import torch

from ...errors import CodeclensError
from .config import ProbeConfig
from .data import TaskData
from .linear import threads_for
from .metrics import macro_f1
from .torch_backend import Job, _class_weights, _RepFeatures

BATCH = 256  # rows per Adam step
MIN_STEPS = 50  # Adam steps per round at least: on small sets (utterance level) an epoch is one or two steps
LR = 2e-3  # Adam step size; inputs are whitened, so one value suits every representation
EVAL_ROWS = 16384  # rows per forward pass when scoring a split


@dataclasses.dataclass(frozen=True)
class MlpFit:
    """A fitted MLP probe: its chosen strength and its test predictions."""

    weight_decay: float
    """The strength kept (best on val)."""
    pred_test: np.ndarray
    """Predicted class index / value of every test row."""
    epochs: int
    """Rounds run (all members; each keeps its own best round)."""
    best_epoch: int
    """Round of the kept member's best validation loss (the last round without a val split)."""


def eligible(job: Job) -> bool:
    """Open-set tasks are identified by class-score embeddings, which an MLP head does not define."""
    return not job.td.open_set


def job_seed(job: Job, seed: int) -> int:
    """A seed per probe that does not depend on which other probes run beside it."""
    key = f"{job.store.name}|{job.rep.name}|{job.td.task}|{job.control}"
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63


def fit_mlp_jobs(jobs: Sequence[Job], cfg: ProbeConfig, device: torch.device, log=None) -> list[MlpFit | None]:
    """An MLP probe for every eligible job (None for the others); results in job order."""
    out: list[MlpFit | None] = [None] * len(jobs)
    cached: tuple | None = None  # a task job and its control share features; they are adjacent
    for i, job in enumerate(jobs):
        if not eligible(job):
            continue
        key = (id(job.store), job.rep, id(job.td))
        if cached is None or cached[0] != key:
            cached = (key, features(job, cfg, device))
        out[i] = fit_mlp(cached[1], job.y, job.td, cfg, device, job_seed(job, cfg.seed))
        if log:
            log(1)
    return out


def features(job: Job, cfg: ProbeConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """Whitened features of every split, in memory (minibatch training revisits rows in random order)."""
    rf = _RepFeatures(job.store, job.rep, job.td)
    n = sum(len(r) for r in job.td.rows.values())
    need = n * rf.whitener.dim * 4
    if need > cfg.memory_mb * 2**20:
        raise CodeclensError(
            f"MLP probe on {job.rep.name} needs {need / 2**20:.0f} MB of features (--memory-mb {cfg.memory_mb}); "
            "raise --memory-mb or lower --max-train-frames"
        )
    return {s: torch.as_tensor(rf.z(r), dtype=torch.float32, device=device) for s, r in job.td.rows.items()}


class _Members(torch.nn.Module):
    """G independent one-hidden-layer MLPs evaluated on the same rows."""

    def __init__(self, G: int, r: int, H: int, out: int, gen: torch.Generator):
        super().__init__()
        # He initialisation for the ReLU layer, LeCun for the linear read-out; drawn on the CPU
        # from a seeded generator so the start is the same on every device.
        self.W1 = torch.nn.Parameter(torch.randn(G, r, H, generator=gen) * math.sqrt(2.0 / r))
        self.b1 = torch.nn.Parameter(torch.zeros(G, 1, H))
        self.W2 = torch.nn.Parameter(torch.randn(G, H, out, generator=gen) * math.sqrt(1.0 / H))
        self.b2 = torch.nn.Parameter(torch.zeros(G, 1, out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z [m, r]`` -> ``[G, m, out]``."""
        h = torch.relu(torch.einsum("mr,grh->gmh", z, self.W1) + self.b1)
        return torch.bmm(h, self.W2) + self.b2

    def penalty(self) -> torch.Tensor:
        return (self.W1**2).sum((1, 2)) + (self.W2**2).sum((1, 2))


def fit_mlp(Z: dict[str, torch.Tensor], y: dict[str, np.ndarray], td: TaskData, cfg: ProbeConfig,
            device: torch.device, seed: int) -> MlpFit:
    """Train the grid of strengths on ``Z['train']``, early-stop and choose on val, predict test."""
    wd = torch.tensor(cfg.mlp_weight_decay, dtype=torch.float32, device=device)
    G, H, r = len(cfg.mlp_weight_decay), cfg.mlp_hidden, Z["train"].shape[1]
    n_tr, n_va = len(y["train"]), len(y["val"])
    if n_va == 0 and G > 1:
        raise CodeclensError(
            f"task '{td.task}' has an empty val split: give one --mlp-weight-decay value to train without validation"
        )
    gen = torch.Generator().manual_seed(seed)
    mu, sd = 0.0, 1.0
    if td.categorical:
        C = td.n_train_classes
        t = {s: torch.as_tensor(v, dtype=torch.long, device=device) for s, v in y.items()}
        # Val rows of classes unseen in train cannot be predicted; they count in the val F1 but not in the loss.
        t["val"] = torch.where(t["val"] < C, t["val"], torch.full_like(t["val"], -1))
        counts = torch.bincount(t["train"], minlength=C)[:C].float()
        cw = _class_weights(counts[None], cfg.balance)[0]
        out_dim = C

        def loss_rows(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            """Summed weighted cross-entropy per member [G], and the weight it covers."""
            ok = tgt >= 0
            lp = torch.log_softmax(pred, -1)
            tc = tgt.clamp(min=0)
            nll = -lp.gather(-1, tc[None, :, None].expand(G, -1, 1)).squeeze(-1)
            wrow = cw[tc] * ok
            return (nll * wrow).sum(-1), wrow.sum()
    else:
        mu, sd = float(np.mean(y["train"])), float(np.std(y["train"]))
        sd = sd if sd > 0 else 1.0
        t = {s: torch.as_tensor((v - mu) / sd, dtype=torch.float32, device=device) for s, v in y.items()}
        out_dim = 1

        def loss_rows(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            return ((pred[..., 0] - tgt) ** 2).sum(-1), torch.tensor(float(len(tgt)), device=device)

    net = _Members(G, r, H, out_dim, gen).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=LR)

    def forward_all(split: str) -> torch.Tensor:
        with torch.no_grad():
            parts = [net(Z[split][a : a + EVAL_ROWS]) for a in range(0, len(Z[split]), EVAL_ROWS)]
        return torch.cat(parts, 1) if parts else torch.zeros((G, 0, out_dim), device=device)

    def val_loss() -> torch.Tensor:
        tot, wsum = loss_rows(forward_all("val"), t["val"])
        return tot / wsum.clamp(min=1e-12)

    best_loss = torch.full((G,), float("inf"), device=device)
    best_epoch = np.full(G, 0)
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    stale = torch.zeros(G, dtype=torch.long, device=device)
    epochs = 0
    work = min(n_tr, BATCH) * G * H * max(r, out_dim)
    with threads_for(work):
        passes = max(1, math.ceil(MIN_STEPS / math.ceil(n_tr / BATCH)))
        for epoch in range(1, cfg.mlp_epochs + 1):
            for _ in range(passes):
                order = torch.randperm(n_tr, generator=gen).to(device)
                for a in range(0, n_tr, BATCH):
                    idx = order[a : a + BATCH]
                    tot, wsum = loss_rows(net(Z["train"][idx]), t["train"][idx])
                    # Mean minibatch loss per member; members are summed, so their gradients stay separate.
                    loss = (tot / wsum.clamp(min=1e-12) + wd * net.penalty()).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            epochs = epoch
            if n_va == 0:
                continue
            vl = val_loss()
            better = vl < best_loss - 1e-6 * best_loss.abs().clamp(max=1e6)
            best_loss = torch.where(better, vl, best_loss)
            stale = torch.where(better, torch.zeros_like(stale), stale + 1)
            b = better.cpu().numpy()
            best_epoch[b] = epoch
            for k, v in net.state_dict().items():
                best_state[k] = torch.where(better.view(-1, *([1] * (v.dim() - 1))), v.detach(), best_state[k])
            if bool((stale >= cfg.patience).all()):
                break
        if n_va:
            net.load_state_dict(best_state)
        else:
            best_epoch[:] = epochs
        g = _choose(forward_all("val"), y["val"], td, mu, sd, cfg.mlp_weight_decay) if n_va and G > 1 else 0
        pt = forward_all("test")[g].cpu().numpy()
    if td.categorical:
        pred = pt.argmax(-1).astype(np.int64)
    else:
        pred = pt[:, 0].astype(np.float64) * sd + mu
    return MlpFit(float(cfg.mlp_weight_decay[g]), pred, epochs, int(best_epoch[g]))


def _choose(pv: torch.Tensor, yv: np.ndarray, td: TaskData, mu: float, sd: float, wd: Sequence[float]) -> int:
    """Best member on val: macro-F1 (classification) or squared error; ties go to the stronger strength."""
    pv = pv.cpu().numpy()
    if td.categorical:
        score = np.array([macro_f1(yv, p.argmax(-1), td.n_classes) for p in pv])
    else:
        score = -np.array([np.mean((p[:, 0] * sd + mu - yv) ** 2) for p in pv])
    score = np.nan_to_num(score, nan=-np.inf)
    tied = np.flatnonzero(score >= score.max())
    return int(tied[np.argmax(np.asarray(wd)[tied])])
