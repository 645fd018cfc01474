"""Training the attribute model: crops, Dirichlet masking, checkpoints that resume exactly.

Masking (per sample): with probability ``p_inference`` one of the two maskings used at
inference (all attributes hidden: analysis; all codec tokens hidden: generation);
otherwise shares ``w ~ Dirichlet(alpha)`` over the streams give each stream the masking
ratio ``1 - w_s / max(w)`` (the stream with the largest share stays fully visible, so a
sample is never masked whole), applied to random positions of each frame stream; the
identity stream is masked whole with its ratio as probability, never in part. Crops and
masks of step ``i`` come from a generator seeded by ``(seed, i)``, so a run resumed from
a checkpoint takes the same steps as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ...errors import CodeclensError
from ...util.atomic import atomic_dir
from .config import ModelConfig, StreamConfig, TrainConfig
from .model import CODEC, IDENTITY, AttributeModel, Batch, masked_loss
from .streams import MISSING, IdentityQuantizer, Utt, Vocab

FORMAT = "codeclens-attributes/1"


# -- batches -----------------------------------------------------------------------

def make_batch(utts: Sequence[Utt], starts: Sequence[int], window: int, attrs: Sequence[str], identity_dims: int = 0) -> Batch:
    """Windows ``[start, start + window)`` of each utterance, padded past its end."""
    B, L = len(utts), utts[0].codes.shape[1]
    codes = np.zeros((B, window, L), np.int64)
    valid = np.zeros((B, window), bool)
    av = {a: np.full((B, window), MISSING, np.int64) for a in attrs}
    for i, (u, s) in enumerate(zip(utts, starts)):
        n = max(0, min(window, len(u.codes) - s))
        codes[i, :n] = u.codes[s : s + n]
        valid[i, :n] = True
        for a in attrs:
            av[a][i, :n] = u.frames[a][s : s + n]
    ident = None
    if identity_dims:
        k = identity_dims
        # A hidden identity's values never reach the encoder: zeros stand in where none were computed.
        ident = torch.from_numpy(np.stack([u.identity if u.identity is not None else np.zeros(k, np.int64)
                                           for u in utts]).astype(np.int64))
    return Batch(torch.from_numpy(codes), {a: torch.from_numpy(v) for a, v in av.items()}, torch.from_numpy(valid), ident)


def windows(utts: Sequence[Utt], window: int) -> list[tuple[int, int]]:
    """(utterance index, start frame) of consecutive windows covering every utterance."""
    return [(i, s) for i, u in enumerate(utts) for s in range(0, max(len(u.codes), 1), window)]


def sample_mask(model: AttributeModel, b: Batch, rng: np.random.Generator, cfg: TrainConfig) -> torch.Tensor:
    B, T = b.valid.shape
    P = T // model.cfg.patch
    names = list(model.streams) + ([IDENTITY] if model.has_identity else [])
    pos_valid = b.valid.view(B, P, -1).any(-1).numpy()
    rows = []
    for i in range(B):
        if rng.random() < cfg.p_inference:
            hidden = [s for s in names if s != CODEC] if rng.random() < 0.5 else [CODEC]
            ratio = {s: float(s in hidden) for s in names}
        else:
            w = rng.dirichlet(np.full(len(names), cfg.alpha))
            ratio = {s: 1.0 - w[j] / w.max() for j, s in enumerate(names)}
        parts = []
        nv = np.flatnonzero(pos_valid[i])
        for s in model.streams:
            m = np.zeros(P, bool)
            k = int(round(ratio[s] * len(nv)))
            m[rng.choice(nv, size=k, replace=False)] = True
            parts.append(m)
        if model.has_identity:
            parts.append(np.full(model.vocab.identity_dims, rng.random() < ratio[IDENTITY]))
        rows.append(np.concatenate(parts))
    return torch.from_numpy(np.stack(rows))


# -- checkpoints -----------------------------------------------------------------------

@dataclasses.dataclass
class Checkpoint:
    """A trained (or training) attribute model with everything needed to use it on a store."""

    model: AttributeModel
    streams: StreamConfig
    vocab: Vocab
    codec: dict[str, Any]
    """The store's codec entry (spec, n_layers, codebook_sizes, frame_rate)."""
    identity: IdentityQuantizer | None
    step: int = 0
    store_fingerprint: str = ""
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def save(self, path: Path, optimizer: torch.optim.Optimizer | None = None) -> None:
        from safetensors.torch import save_file

        with atomic_dir(path) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            if self.identity is not None:
                state.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.identity.arrays().items()})
            save_file(state, str(tmp / "model.safetensors"))
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            meta = {"format": FORMAT, "step": self.step, "streams": dataclasses.asdict(self.streams),
                    "model": dataclasses.asdict(self.model.cfg), "vocab": self.vocab.to_json(),
                    "codec": {k: self.codec.get(k) for k in ("spec", "n_layers", "codebook_sizes", "frame_rate")},
                    "store_fingerprint": self.store_fingerprint, "train": self.train, "history": self.history}
            (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Checkpoint":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        f = path / "checkpoint.json"
        try:
            meta = json.loads(f.read_text())
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
            state = load_file(str(path / "model.safetensors"))
            sc = StreamConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["streams"].items()})
            vocab = Vocab.from_json(meta["vocab"])
            model = AttributeModel(ModelConfig(**meta["model"]), vocab, sc.attributes)
            ident = None
            if any(k.startswith("identity.") for k in state):
                ident = IdentityQuantizer.from_arrays({k: v.numpy() for k, v in state.items() if k.startswith("identity.")})
            # A truncated or hand-edited checkpoint: weights that do not fit the network it describes.
            model.load_state_dict({k: v for k, v in state.items() if not k.startswith("identity.")})
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CodeclensError(f"{path}: not an attribute-model checkpoint ({type(e).__name__}: {msg})") from None
        model.to(device).eval()
        return cls(model, sc, vocab, meta["codec"], ident, int(meta["step"]), meta.get("store_fingerprint", ""),
                   meta.get("train", {}), meta.get("history", []))

    def check_store(self, store) -> None:
        """One-line error when ``store`` holds another codec's tokens than the model was trained on."""
        sizes = [int(k) for k in self.codec["codebook_sizes"]]
        if store.codebook_sizes != sizes or store.codec["spec"] != self.codec["spec"]:
            raise CodeclensError(
                f"{store.path}: the attribute model was trained on codec '{self.codec['spec']}' "
                f"({len(sizes)} layers x {sizes[0]} codes), the store holds '{store.codec['spec']}' "
                f"({store.n_layers} layers x {store.codebook_sizes[0]} codes)")


# -- the loop ------------------------------------------------------------------------------

def _lr(step: int, cfg: TrainConfig) -> float:
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def train(ck: Checkpoint, utts: Sequence[Utt], cfg: TrainConfig, ckpt_dir: Path | None, device: torch.device,
          progress: bool = True, log: Callable[[str], None] | None = None, until: int | None = None) -> Checkpoint:
    """Train ``ck.model`` from ``ck.step`` to ``cfg.steps`` (or stop after step ``until``, as an
    interruption would), checkpointing to ``ckpt_dir``."""
    model = ck.model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if ckpt_dir is not None and (ckpt_dir / "optimizer.pt").is_file() and ck.step > 0:
        opt.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", map_location=device, weights_only=True))
    if not utts:
        raise CodeclensError("no training utterances for the attribute model")
    window = model.cfg.window
    attrs = model.frame_attrs
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bar = None
    if progress and ck.step < cfg.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=ck.step, desc="attributes train", unit="step", dynamic_ncols=True)
    t0, run = time.perf_counter(), []
    try:
        stop = cfg.steps if until is None else min(until, cfg.steps)
        for step in range(ck.step, stop):
            rng = np.random.default_rng([cfg.seed, step])
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout, if any
            pick = rng.integers(0, len(utts), size=cfg.batch_size)
            sel = [utts[i] for i in pick]
            starts = [int(rng.integers(0, max(1, len(u.codes) - window + 1))) for u in sel]
            b = make_batch(sel, starts, window, attrs, model.vocab.identity_dims if model.has_identity else 0)
            mask = sample_mask(model, b, rng, cfg)
            for g in opt.param_groups:
                g["lr"] = _lr(step, cfg)
            loss, parts = masked_loss(model, model(b.to(device), mask.to(device)), b.to(device), mask.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            run.append({"step": step + 1, "loss": float(loss.detach()), **parts})
            ck.step = step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"loss {float(loss.detach()):.3f}")
            if ckpt_dir is not None and (ck.step % cfg.checkpoint_every == 0 or ck.step == stop):
                ck.history.extend(run)
                run = []
                model.eval()
                ck.save(ckpt_dir, opt)
                model.train()
    finally:
        if bar is not None:
            bar.close()
        if cfg.threads:
            torch.set_num_threads(old_threads)
    ck.history.extend(run)
    if log is not None and run:
        log(f"trained {len(run)} steps in {time.perf_counter() - t0:.0f} s")
    model.eval()
    return ck


# -- inference -------------------------------------------------------------------------------

@torch.inference_mode()
def predict(ck: Checkpoint, utts: Sequence[Utt], masked: Sequence[str], device: torch.device,
            batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Per utterance: argmax classes of every stream with the streams ``masked`` hidden, plus the
    best voiced pitch class (``pitch:voiced``). Windows of the training length."""
    model = ck.model.to(device).eval()
    window = model.cfg.window
    wins = windows(utts, window)
    outs: list[dict[str, list]] = [{} for _ in utts]
    for a in range(0, len(wins), batch_size):
        chunk = wins[a : a + batch_size]
        sel = [utts[i] for i, _ in chunk]
        b = make_batch(sel, [s for _, s in chunk], window, model.frame_attrs,
                       model.vocab.identity_dims if model.has_identity else 0).to(device)
        mask = model.stream_mask(len(sel), window, masked, device)
        lg = model(b, mask)
        codes = torch.stack([x.argmax(-1) for x in lg[CODEC]], -1).cpu().numpy()
        per = {CODEC: codes}
        for s in model.frame_attrs:
            per[s] = lg[s].argmax(-1).cpu().numpy()
        if "pitch" in model.frame_attrs:  # best voiced class, for pitch error apart from voicing errors
            per["pitch:voiced"] = 1 + lg["pitch"][..., 1:].argmax(-1).cpu().numpy()
        for j, (ui, st) in enumerate(chunk):
            n = min(window, len(utts[ui].codes) - st)
            for k, v in per.items():
                outs[ui].setdefault(k, []).append(v[j, :n])
    return [{k: np.concatenate(v, 0) for k, v in o.items()} for o in outs]
