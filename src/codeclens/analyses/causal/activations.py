"""Activation patching inside torch decoders: block × layer effect maps.

For a measured utterance (the *clean* codes) and a donor of another speaker (same sentence
where the corpus has one; :func:`.run.donor_for`), and for each **layer set** S (each single
RVQ layer, and all layers):

1. the *donor-S run* decodes the clean codes with layers S swapped in from the donor, and
   every decoder block's output is recorded;
2. for each **block** b, the *patched run* decodes the clean codes while a forward hook
   replaces block b's output by the donor-S run's (within a time window, or whole);
3. the patched decode is measured.

So cell (b, S) of the map answers: *how much of what swapping layers S does passes through
block b's activation?* A block that layers S never reach (a parallel path that does not read
them) has exactly the clean activation in the donor-S run, so patching it changes nothing:
the cell is exactly 0. Patching the full output of a block through which everything flows
(the last block, or any block of a purely sequential decoder) reproduces the donor-S decode
exactly (``rms_to_donor`` = 0).

Measures per patched decode (``activation_per_utterance.csv``):

- the decoder measures of :mod:`.decoder` against the clean decode, as changes from the
  clean decode's own value (``speaker``: cosine − 1, ``f0_kept`` − 1, ...);
- ``f0_follows_donor`` / ``spectrum_follows_donor``: as in the interchange (F0 nearer the
  donor's decode than the clean decode's; spectral envelope nearer), against the donor
  utterance's own decode, so a patch that moves only pitch does not count as moving the
  spectrum; on the window's span for windowed patches;
- ``rms_change`` (RMS of patched − clean) and ``rms_to_donor`` (RMS of patched − donor-S);
  ``rms_to_donor_in_window`` (per-utterance table only) over the window's samples.

F0 is tracked by pYIN on the whole patched decode and read per window; its global (Viterbi)
decoding can still pick another octave in a window whose samples equal the donor's, so the
windowed ``f0_follows_donor`` is noisier than the whole-utterance one.

**Blocks** come from the adapter's ``decoder_blocks()`` (a list of ``(name, module)`` in
forward order) when it has one, else from its decoder module (``model.decoder``,
``model.acoustic_decoder`` or ``decoder``): its children in order, containers
(``ModuleList``/``Sequential``) expanded one level at a time, parameterless modules
(activations such as ELU or Tanh, elementwise functions of the previous block) left out.

**Time.** A block's time axis is found by decoding the clean codes and a shorter prefix and
taking the output axis whose length changes; frames [t0, t1) map to
[round(t0·n/T), round(t1·n/T)) of a block with n steps for T frames (its length ratio). A block
without a time axis, or a decoder called more than once per decode (chunked codecs), is only
patched whole.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from ...errors import CodeclensError
from .decoder import Reference, decode
from .patching import aligned, patch
from .run import CausalConfig, _ci_rows, _f0_follows, donor_for, utt_codes

DECODER_ATTRIBUTES = ("model.decoder", "model.acoustic_decoder", "decoder")
"""Where the default block discovery looks for an adapter's decoder module (first found)."""
EXTRA_MEASURES = ("f0_follows_donor", "spectrum_follows_donor", "rms_change", "rms_to_donor")

Blocks = list[tuple[str, torch.nn.Module]]


def decoder_module(codec) -> torch.nn.Module | None:
    for path in DECODER_ATTRIBUTES:
        obj = codec
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.Module):
            return obj
    return None


def default_blocks(root: torch.nn.Module, prefix: str = "") -> Blocks:
    """``root``'s children in order, containers expanded, parameterless modules left out."""
    out: Blocks = []
    for name, child in root.named_children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            out.extend(default_blocks(child, f"{prefix}{name}."))
        elif next(child.parameters(), None) is not None:
            out.append((f"{prefix}{name}", child))
    return out


def decoder_blocks(codec) -> Blocks:
    """The blocks to patch (see module docstring); [] for a codec without a torch decoder."""
    hook = getattr(codec, "decoder_blocks", None)
    if callable(hook):
        return [(str(n), m) for n, m in hook()]
    root = decoder_module(codec)
    return default_blocks(root) if root is not None else []


def _tensor(out):
    """The activation a hook patches: the output, or the first element of a tuple output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _replace(out, new: torch.Tensor):
    return new if isinstance(out, torch.Tensor) else type(out)([new, *out[1:]])


@contextlib.contextmanager
def recording(blocks: Blocks) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Records every block's output (one entry per call) while the block is active."""
    acts: dict[str, list[torch.Tensor]] = {n: [] for n, _ in blocks}
    handles = []
    for name, mod in blocks:
        def hook(_m, _i, out, name=name):
            t = _tensor(out)
            if t is not None:
                acts[name].append(t.detach().clone())
        handles.append(mod.register_forward_hook(hook))
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def patching(module: torch.nn.Module, donor: Sequence[torch.Tensor], span: tuple[int, int] | None = None,
             axis: int | None = None, n_frames: int | None = None) -> Iterator[None]:
    """While active, ``module``'s i-th call returns ``donor[i]`` (on frames ``span`` of
    ``n_frames``, mapped to its time ``axis`` by its length ratio; whole when ``span`` is None)."""
    calls = [0]

    def hook(_m, _i, out):
        i = calls[0]
        calls[0] += 1
        t = _tensor(out)
        if t is None or i >= len(donor):
            raise CodeclensError("activation patching: a block's calls differ between the clean and the donor run")
        d = donor[i].to(t.device, t.dtype)
        if d.shape != t.shape:
            raise CodeclensError(f"activation patching: block output {tuple(t.shape)} vs donor {tuple(d.shape)}")
        if span is None:
            return _replace(out, d.clone())
        n = t.shape[axis]
        a, b = round(span[0] * n / n_frames), round(span[1] * n / n_frames)
        new = t.clone()
        new.narrow(axis, a, b - a).copy_(d.narrow(axis, a, b - a))
        return _replace(out, new)

    h = module.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


def time_axes(codec, blocks: Blocks, codes_tl: np.ndarray) -> dict[str, int | None]:
    """Each block's time axis: the output axis whose length changes between a decode of
    ``codes_tl`` and of a shorter prefix (None when none does)."""
    n = len(codes_tl)
    short = max(1, n // 2) if n > 1 else n
    with recording(blocks) as a:
        decode(codec, codes_tl)
    with recording(blocks) as b:
        decode(codec, codes_tl[:short])
    out = {}
    for name, _ in blocks:
        if not a[name] or not b[name] or a[name][0].ndim != b[name][0].ndim:
            out[name] = None
            continue
        diff = [ax for ax in range(1, a[name][0].ndim) if a[name][0].shape[ax] != b[name][0].shape[ax]]
        out[name] = diff[-1] if diff else None
    return out


def layer_sets(n_layers: int) -> list[tuple[str, list[int]]]:
    """Each single layer ("3"), then all layers ("1-L")."""
    return [(str(k + 1), [k]) for k in range(n_layers)] + [(f"1-{n_layers}", list(range(n_layers)))]


def windows(n_frames: int, n: int) -> list[tuple[str, int, int]]:
    """``(label, t0, t1)``: the whole utterance ("all"), then ``n`` equal windows ("i/n") when ``n`` > 1."""
    edges = np.linspace(0, n_frames, n + 1).round().astype(int) if n > 1 else []
    return [("all", 0, n_frames)] + [(f"{i + 1}/{n}", int(a), int(b))
                                     for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])) if b > a]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


HOP_S = 0.01
"""Frame hop (s) of the F0 track and the mel cepstrum that the follows-donor measures slice per window."""


class _Features:
    """F0 track and spectral envelope (mel cepstrum c1..c4) of one decode, computed once and
    sliced per window (so a decode costs one pitch track whatever the number of windows)."""

    def __init__(self, audio: np.ndarray, sr: int):
        from ..ablate import measures as M

        self.f0 = M.f0_track(audio, sr, hop_s=HOP_S)
        self.env = M.mel_cepstrum(audio, sr, hop_s=HOP_S)[:, :4]

    def window(self, a_s: float, b_s: float):
        from ..ablate.measures import F0Track

        i, j = int(round(a_s / HOP_S)), int(round(b_s / HOP_S))
        return F0Track(self.f0.f0[i:j], self.f0.voiced[i:j]), self.env[i:j]


def _env_distance(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.mean(np.linalg.norm(a[:n] - b[:n], axis=1))) if n else float("nan")


def activation_patching(store, codec, cfg: CausalConfig, rows: np.ndarray, log=print) -> dict[str, pd.DataFrame]:
    """Tables ``activation_patching`` (per block × layer set × window × measure, with a 95%
    interval resampling speakers and sign-flip p-values Holm-corrected over the blocks of each
    layer set, measure and window) and ``activation_per_utterance``; {} for a codec without a
    torch decoder.

    A block whose activation in the donor-S run is bit-identical to the clean run's is not
    decoded again (``decoded`` = False): the patched run *is* the clean run, so its row is the
    clean decode's, exactly."""
    from ..ablate.measures import speaker_encoder, voicing_agreement
    from .decoder import f0_kept

    blocks = decoder_blocks(codec)
    if not blocks:
        log(f"activation patching: codec '{store.codec['spec']}' has no torch decoder blocks; skipped")
        return {}
    enc = speaker_encoder("cpu")
    sr = int(codec.sample_rate)
    spk = store.utterances["speaker"].astype(str).to_numpy()
    maxf = int(round(cfg.max_seconds * store.frame_rate))
    fps = float(store.frame_rate)
    pitch_measures = {"f0_kept": f0_kept, "voicing": voicing_agreement}
    other = [m for m in cfg.measures if m not in pitch_measures]
    rec, axes, n_decodes, n_same = [], None, 0, 0
    for r in rows:
        codes = utt_codes(store, int(r), maxf)
        T = len(codes)
        d, how = donor_for(store, int(r), cfg.seed)
        donor = aligned(utt_codes(store, d), T)
        if axes is None:
            axes = time_axes(codec, blocks, codes)
        with recording(blocks) as clean_acts:
            clean = decode(codec, codes)
        ref = Reference(clean, sr, enc)
        src_f, don_f = _Features(clean, sr), _Features(decode(codec, donor), sr)
        spans = {label: (t0, t1) for label, t0, t1 in windows(T, cfg.activation_windows)}

        def measured(audio: np.ndarray) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
            """Decoder measures against the clean decode, and per window (F0 follows, spectrum follows)."""
            feat = src_f if audio is clean else _Features(audio, sr)
            vals = dict(zip(other, ref.measure(audio, other)))
            vals.update({m: fn(ref.f0, feat.f0) for m, fn in pitch_measures.items() if m in cfg.measures})
            fol = {}
            for label, (t0, t1) in spans.items():
                (hf, he), (sf, se), (df, de) = (x.window(t0 / fps, t1 / fps) for x in (feat, src_f, don_f))
                fol[label] = (_f0_follows(hf, sf, df), float(_env_distance(de, he) < _env_distance(se, he)))
            return np.array([vals[m] for m in cfg.measures], dtype=np.float64), fol

        v0, unchanged = measured(clean)
        for set_name, layers in layer_sets(store.n_layers):
            with recording(blocks) as acts:
                don = decode(codec, patch(codes, layers, "swap", donor=donor))
            for bi, (bname, mod) in enumerate(blocks):
                same = _same(acts[bname], clean_acts[bname])
                for label, (t0, t1) in spans.items():
                    whole = label == "all"
                    if not whole and (axes[bname] is None or len(acts[bname]) != 1):
                        continue
                    if same:
                        audio, vals, fol = clean, v0, unchanged
                        n_same += 1
                    else:
                        with patching(mod, acts[bname], None if whole else (t0, t1), axes[bname], T):
                            audio = decode(codec, codes)
                        n_decodes += 1
                        vals, fol = measured(audio)
                    m = min(len(audio), len(clean), len(don))
                    row = {"block": bname, "block_index": bi + 1, "layers": set_name, "window": label,
                           "start_frame": t0, "end_frame": t1, "utt": int(r), "speaker": spk[r], "donor": spk[d],
                           "donor_match": how, "decoded": not same}
                    row.update({k: float(v - c) for k, v, c in zip(cfg.measures, vals, v0)})
                    row["f0_follows_donor"], row["spectrum_follows_donor"] = fol[label]
                    row["rms_change"] = _rms(audio[:m] - clean[:m])
                    row["rms_to_donor"] = _rms(audio[:m] - don[:m])
                    a, b = int(round(t0 * sr / fps)), min(m, int(round(t1 * sr / fps)))
                    row["rms_to_donor_in_window"] = _rms(audio[a:b] - don[a:b])
                    rec.append(row)
    log(f"activation patching: {len(blocks)} blocks x {store.n_layers + 1} layer sets: {n_decodes} patched decodes, "
        f"{n_same} patches of an unchanged activation")
    if not rec:
        return {}
    per = pd.DataFrame(rec)
    keys = ["block_index", "block", "layers", "window"]
    tidy = per.melt(id_vars=keys + ["utt", "speaker"], value_vars=list(cfg.measures) + list(EXTRA_MEASURES),
                    var_name="measure", value_name="v")
    table = _ci_rows(tidy, keys + ["measure"], "v", "speaker", cfg, family=("layers", "measure", "window"))
    return {"activation_patching": table, "activation_per_utterance": per}


CAPTIONS = {
    "activation_patching": "Activation patching inside the decoder: block b's output taken from a run where only "
                           "layers S came from a donor of another speaker; change of each measure (decoder measures "
                           "vs the clean decode; follows-donor fractions; RMS), 95% CI resampling speakers.",
    "activation_per_utterance": "Per-utterance activation-patching measures (the unit the intervals resample).",
}


def summarise(name: str, df: pd.DataFrame) -> list[str]:
    """Per measure: for each single layer, the first block (input → output) whose patch moves the
    measure (interval excludes 0, Holm-corrected sign-flip p < 0.05), on whole-utterance patches."""
    lines = []
    whole = df[df["window"] == "all"]
    for meas, g in whole[whole["layers"].str.isdigit()].groupby("measure", sort=False):
        if meas in ("rms_change", "rms_to_donor"):
            continue
        sig = g[((g["ci_low"] > 0) | (g["ci_high"] < 0)) & (g["p_holm"] < 0.05)]
        if sig.empty:
            lines.append(f"{name}: activation patching: no decoder block carries a layer's effect on {meas} "
                         "distinguishably from 0.")
            continue
        parts = []
        for lay, gl in sig.groupby("layers", sort=False):
            first = gl.loc[gl["block_index"].idxmin()]
            parts.append(f"layer {lay} from block {int(first['block_index'])} '{first['block']}' "
                         f"({first['value']:.3g} [{first['ci_low']:.3g}, {first['ci_high']:.3g}])")
        lines.append(f"{name}: activation patching, {meas}: " + "; ".join(parts) + ".")
    return lines
