"""Variational mutual-information brackets: a CLUB upper bound and a lower bound from one model.

One conditional model q(y | x) is fitted by maximum likelihood on training
frames and then evaluated on held-out frames:

* continuous y (F0, loudness...): q is a diagonal Gaussian whose mean and log
  variance come from a small MLP; targets are standardised (MI does not change
  under an invertible rescaling of y, the fit does get easier);
* discrete y (phone, speaker, unit): q is a softmax classifier.

Upper bound, CLUB (Cheng et al., ICML 2020):
``E_p(x,y)[log q(y|x)] - E_p(x)E_p(y)[log q(y|x)]``. The second expectation is
computed exactly instead of by sampled pairs: for the Gaussian it only needs the
first two moments of the marginal of y, for the classifier the marginal class
frequencies.

Lower bounds, valid for any q:

* continuous y: InfoNCE (van den Oord et al. 2018) with critic
  ``f(x, y) = log q(y|x) - log m(y)`` (m: q averaged over training x) on M
  held-out pairs, ``<= log M`` by construction;
* discrete y: Barber-Agakov, ``H(Y) + E[log q(y|x)]`` with the plug-in H(Y) of
  the held-out labels.

The lower bound is reported as a one-sided 95% confidence bound (held-out
mean minus 1.645 standard errors; a sample mean of a valid bound can exceed
the truth by noise), replaced by zero when negative (MI is non-negative), so
each estimate is a bracket ``[lower, upper]`` in nats. CLUB is only an upper bound
when q is close to the true conditional; a poorly fitted q makes it small, and
``MIBracket.consistent`` (upper >= lower) and the held-out ``log_likelihood``
let one see whether the fit was good enough.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..util.device import resolve_device
from .infotheory import entropy

#: One-sided 95% normal quantile: the reported lower bound is a confidence bound, not a point value.
Z95 = 1.645


@dataclasses.dataclass(frozen=True)
class BracketConfig:
    """Budget of the variational fit (small by default so a demo runs in minutes on a CPU)."""

    hidden: int = 128
    """Hidden units of the two-layer MLP for q(y|x)."""
    steps: int = 400
    """Optimizer steps (Adam)."""
    batch_size: int = 512
    """Minibatch size."""
    lr: float = 3e-3
    """Adam learning rate."""
    weight_decay: float = 1e-4
    """L2 penalty (AdamW)."""
    eval_every: int = 10
    """Validation interval (steps); the parameters with the lowest validation NLL are kept."""
    nce_pairs: int = 2048
    """Held-out pairs for InfoNCE (the lower bound cannot exceed log of this)."""
    seed: int = 0
    """Seed for initialisation, minibatches and subsampling."""
    cpu_threads: int = 1
    """Torch CPU threads during a fit (0: leave as is); these matrices are too small to gain from more,
    and on a shared machine extra threads oversubscribe the cores (measured 10x slower with 2)."""

    def __post_init__(self):
        if self.cpu_threads < 0:
            raise ValueError("cpu_threads must be >= 0")
        if self.hidden < 1 or self.steps < 1 or self.batch_size < 2 or self.eval_every < 1:
            raise ValueError("hidden, steps, eval_every must be >= 1 and batch_size >= 2")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if self.nce_pairs < 2:
            raise ValueError("nce_pairs must be >= 2")


@dataclasses.dataclass(frozen=True)
class MIBracket:
    """A mutual-information estimate as a bracket, in nats."""

    lower: float
    """One-sided 95% confidence lower bound: point estimate - 1.645 standard errors, clipped at 0."""
    upper: float
    """Upper bound: the CLUB estimate, or a known cap (H(Y) for discrete y, ``upper_cap``) when smaller."""
    lower_method: str
    """infonce | barber-agakov"""
    log_likelihood: float
    """Held-out mean log q(y|x) (nats; standardised units for continuous y)."""
    n_train: int
    """Training frames."""
    n_test: int
    """Held-out frames."""
    club: float = math.nan
    """The CLUB estimate itself (before capping)."""
    lower_point: float = 0.0
    """Point estimate of the lower bound (held-out mean, not clipped)."""
    lower_se: float = 0.0
    """Standard error of ``lower_point`` over held-out rows."""
    lower_cap: float = math.inf
    """Largest value the lower bound can take (log M for InfoNCE, H(Y) for Barber-Agakov)."""

    @property
    def consistent(self) -> bool:
        """False when the upper estimate fell below the lower bound: q(y|x) fitted too poorly for CLUB."""
        return self.upper >= self.lower


class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, d_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _gauss_logq(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log q(y|x) per row for a diagonal Gaussian head ``out = [mu, logvar]``."""
    d = y.shape[1]
    mu, logvar = out[:, :d], out[:, d:].clamp(-9.0, 4.0)
    return (-0.5 * ((y - mu) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))).sum(dim=1)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's CPU thread count (0: leave it; restored afterwards)."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


#: Rows standardized at a time (float64 temporaries of this many rows only).
STANDARDIZE_ROWS = 2048


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """float32 ``(a - mean) / sd`` with the train moments in float64, the same numbers as upcasting
    every array to float64 first, without the float64 copies: at D = 1024 and 20 000 + 10 000 rows
    those were ~0.5 GB on top of the float32 inputs (the MI step's peak on a SpeechTokenizer store)."""
    mu = train.mean(axis=0, keepdims=True, dtype=np.float64)
    sd = train.std(axis=0, keepdims=True, dtype=np.float64)
    sd = np.where(sd > 1e-8, sd, 1.0)
    out = []
    for a in (train, *others):
        z = np.empty(a.shape, np.float32)
        for i in range(0, len(a), STANDARDIZE_ROWS):
            z[i : i + STANDARDIZE_ROWS] = (np.asarray(a[i : i + STANDARDIZE_ROWS], np.float64) - mu) / sd
        out.append(z)
    return out


def _floating(a) -> np.ndarray:
    """Float arrays as they are (standardized in float64 row chunks), anything else as float64."""
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _as2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[:, None] if a.ndim == 1 else a


def fit_conditional(
    x: np.ndarray,
    y: np.ndarray,
    discrete: bool,
    n_classes: int = 0,
    cfg: BracketConfig = BracketConfig(),
    device: str | torch.device | None = None,
    groups: np.ndarray | None = None,
) -> nn.Module:
    """Fit q(y|x) by maximum likelihood; ~10% of the rows choose the step to keep.

    ``x`` and (continuous) ``y`` should already be standardised; discrete ``y``
    are integer ids in ``[0, n_classes)``. With ``groups`` (e.g. the utterance
    of each frame) the validation rows are whole groups: frames of one
    utterance are alike, so a frame-level validation split would not see the
    fit memorising utterances.
    """
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x = _as2d(x).astype(np.float32, copy=False)  # the standardized float32 rows as they are: no second copy
    n = len(x)
    perm = torch.randperm(n, generator=gen).numpy()
    n_val = max(1, n // 10) if n >= 20 else 0
    val, tr = perm[:n_val], perm[n_val:]
    if groups is not None and n_val:
        g = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        n_groups = int(g.max()) + 1
        if n_groups >= 5:
            held = np.zeros(n_groups, dtype=bool)
            held[torch.randperm(n_groups, generator=gen).numpy()[: max(1, n_groups // 10)]] = True
            val, tr = np.flatnonzero(held[g]), np.flatnonzero(~held[g])
    xt = torch.from_numpy(x).to(dev)
    if discrete:
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(dev)
        model = _MLP(x.shape[1], cfg.hidden, n_classes).to(dev)
        nll = lambda out, yy: nn.functional.cross_entropy(out, yy)  # noqa: E731
    else:
        y2 = _as2d(y).astype(np.float32)
        yt = torch.from_numpy(y2).to(dev)
        model = _MLP(x.shape[1], cfg.hidden, 2 * y2.shape[1]).to(dev)
        nll = lambda out, yy: -_gauss_logq(out, yy).mean()  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tr_t = torch.from_numpy(tr).to(dev)
    val_t = torch.from_numpy(val).to(dev)
    best, best_state = math.inf, None
    for step in range(1, cfg.steps + 1):
        idx = tr_t[torch.randint(len(tr_t), (min(cfg.batch_size, len(tr_t)),), generator=gen).to(dev)]
        loss = nll(model(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if n_val and (step % cfg.eval_every == 0 or step == cfg.steps):
            with torch.no_grad():
                v = float(nll(model(xt[val_t]), yt[val_t]))
            if v < best:
                best, best_state = v, {k: t.detach().clone() for k, t in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model


@torch.no_grad()
def _pair_logq(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``[len(x), len(y)]`` matrix of log q(y_j | x_i) for a Gaussian head, built in row chunks."""
    d = y.shape[1]
    rows = []
    for a in range(0, len(x), chunk):
        o = model(x[a : a + chunk])
        mu, logvar = o[:, None, :d], o[:, None, d:].clamp(-9.0, 4.0)
        rows.append((-0.5 * ((y[None] - mu) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))).sum(dim=2))
    return torch.cat(rows)


@torch.no_grad()
def _infonce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_ref: torch.Tensor) -> tuple[float, float]:
    """InfoNCE with critic log q(y|x) - log m(y), m = mixture of q(.|x_k) over training rows x_ref.

    Subtracting a fixed marginal estimate removes the log p(y) term that would
    otherwise make the critic favour frequent y values; m is built from training
    rows only, so the critic is a fixed function of (x, y) and the bound holds.
    """
    log_m = torch.logsumexp(_pair_logq(model, x_ref, y), dim=0) - math.log(len(x_ref))
    s = _pair_logq(model, x, y) - log_m[None, :]
    terms = s.diagonal() - torch.logsumexp(s, dim=1) + math.log(len(x))
    return float(terms.mean()), float(terms.std() / math.sqrt(len(x)))


def mi_bracket(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    discrete: bool,
    cfg: BracketConfig = BracketConfig(),
    device: str | torch.device | None = None,
    upper_cap: float = math.inf,
    groups: np.ndarray | None = None,
) -> MIBracket:
    """``[lower, upper]`` bracket of I(X; Y) in nats from a q(y|x) fitted on train, scored on test.

    ``x_*`` are ``[n, D]`` features; ``y_*`` are integer labels (``discrete``)
    or ``[n]`` / ``[n, d]`` real targets. Features (and real targets) are
    standardised with the training statistics. ``upper_cap`` is a known bound
    on I(X; Y), e.g. H(X) when X takes finitely many values (codebook lookups):
    CLUB grows without limit when y is nearly a function of x, the cap does not.
    ``groups`` (one per training row, e.g. utterance ids) makes the internal
    validation split group-wise.
    """
    with torch_threads(cfg.cpu_threads if resolve_device(device).type == "cpu" else 0):
        b = _mi_bracket(x_train, y_train, x_test, y_test, discrete, cfg, device, groups)
    # For discrete y, H(Y) (lower_cap) bounds I(X; Y) as well.
    cap = min(upper_cap, b.lower_cap) if discrete else upper_cap
    # MI >= 0: a slightly negative CLUB estimate (independent x, y) is read as 0.
    return dataclasses.replace(b, upper=max(0.0, min(b.upper, cap)), club=b.upper)


def _mi_bracket(x_train, y_train, x_test, y_test, discrete: bool, cfg: BracketConfig, device, groups) -> MIBracket:
    dev = resolve_device(device)
    x_train, x_test = _standardize(_as2d(_floating(x_train)), _as2d(_floating(x_test)))
    if len(x_train) < 2 or len(x_test) < 2:
        raise ValueError("need at least 2 training and 2 test rows")
    if discrete:
        y_train = np.asarray(y_train, dtype=np.int64)
        y_test = np.asarray(y_test, dtype=np.int64)
        n_classes = int(max(y_train.max(), y_test.max())) + 1
        model = fit_conditional(x_train, y_train, True, n_classes, cfg, dev, groups)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.from_numpy(x_test).to(dev)), dim=1)
            yt = torch.from_numpy(y_test).to(dev)
            row_ll = logp.gather(1, yt[:, None]).squeeze(1)
            pos = row_ll.mean()
            se = float(row_ll.std() / math.sqrt(len(row_ll)))
            p_y = torch.bincount(yt, minlength=n_classes).to(logp.dtype) / len(yt)
            neg = (logp * p_y[None]).sum(dim=1).mean()
        ll = float(pos)
        h_y = entropy(np.bincount(y_test, minlength=n_classes))
        return MIBracket(
            lower=max(0.0, h_y + ll - Z95 * se), upper=float(pos - neg), lower_method="barber-agakov",
            log_likelihood=ll, n_train=len(x_train), n_test=len(x_test),
            lower_point=h_y + ll, lower_se=se, lower_cap=h_y,
        )
    y_train, y_test = _standardize(_as2d(np.asarray(y_train, np.float64)), _as2d(np.asarray(y_test, np.float64)))
    model = fit_conditional(x_train, y_train, False, 0, cfg, dev, groups)
    d = y_test.shape[1]
    with torch.no_grad():
        xt = torch.from_numpy(x_test).to(dev)
        yt = torch.from_numpy(y_test).to(dev)
        out = model(xt)
        pos = _gauss_logq(out, yt).mean()
        mu, logvar = out[:, :d], out[:, d:].clamp(-9.0, 4.0)
        # E_{y' ~ p(y)} (y' - mu)^2 = Var(y) + (E y - mu)^2, exact for the held-out marginal.
        m1, var = yt.mean(dim=0, keepdim=True), yt.var(dim=0, unbiased=False, keepdim=True)
        neg = (-0.5 * ((var + (m1 - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi))).sum(dim=1).mean()
        rng = np.random.default_rng(cfg.seed)
        m = min(cfg.nce_pairs, len(x_test))
        sel = torch.from_numpy(rng.choice(len(x_test), size=m, replace=False)).to(dev)
        ref = torch.from_numpy(rng.choice(len(x_train), size=min(1024, len(x_train)), replace=False))
        nce, se = _infonce(model, xt[sel], yt[sel], torch.from_numpy(x_train)[ref].to(dev))
    return MIBracket(
        lower=max(0.0, nce - Z95 * se), upper=float(pos - neg), lower_method="infonce",
        log_likelihood=float(pos), n_train=len(x_train), n_test=len(x_test),
        lower_point=nce, lower_se=se, lower_cap=math.log(m),
    )
