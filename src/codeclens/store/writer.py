"""Extraction: corpus x codec -> feature store, sharded, atomic and resumable.

Utterances are taken in corpus order and cut into fixed shards of
``shard_size``. Each finished shard is written to a temporary directory and
renamed into ``shards/``; a re-run skips finished shards, so an interrupted
extraction ends with the same store as an uninterrupted one. When every shard
is there they are concatenated into the final arrays and the manifest is marked
complete.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from ..audio import AudioError
from ..codecs import CodecAdapter, load_codec
from ..config import to_dict
from ..corpora import Corpus, Utterance, load_corpus
from ..errors import CodeclensError
from ..labels import LABELLERS, Labeller, frame_times, load_labeller, parse_label_list
from ..labels.splits import add_splits
from ..util.atomic import atomic_dir, atomic_path, write_json
from ..util.provenance import config_hash, provenance
from . import layout

DEFAULT_LABELS = ("phone", "f0", "loudness")


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    corpus: str
    """Corpus spec: a folder of audio, synthetic?n=..., librispeech:PATH, manifest:FILE."""
    codec: str
    """Codec spec, e.g. melrvq?checkpoint=DIR, encodec:24khz@6kbps."""
    out: str
    """Output store directory."""
    limit: int | None = None
    """Only the first N utterances of the corpus."""
    device: str = "auto"
    """Torch device (auto: CUDA when present)."""
    batch_seconds: float = 60.0
    """Audio seconds encoded per batch."""
    latent: bool = False
    """Also store the pre-quantization latent (float16)."""
    labels: tuple[str, ...] = ("auto",)
    """Labellers to run (auto: phone, f0, loudness where available; none: no labels)."""
    shard_size: int = 64
    """Utterances per shard (the unit of resuming)."""
    seed: int = 0
    """Seed of the train/val/test splits."""
    overwrite: bool = False
    """Replace an existing store made with a different configuration."""
    name: str | None = None
    """Display name of the store (default: the directory name)."""
    engine: str = "local"
    """Where shards are encoded: local (this process) or ray (a Ray cluster; pip install codeclens[ray])."""
    address: str | None = None
    """Ray engine: address of a running cluster (e.g. ray://head:10001 or auto; default: start a local one)."""
    num_gpus: float = 0.0
    """Ray engine: GPUs per codec actor (0: CPU actors)."""
    workers: int | None = None
    """Ray engine: codec actors (default: the cluster's GPUs / num_gpus, or its CPUs / 2)."""

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1")
        if self.batch_seconds <= 0:
            raise ValueError("batch_seconds must be > 0")
        if self.shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        if self.engine not in ("local", "ray"):
            raise ValueError("engine must be local or ray")
        if self.num_gpus < 0 or (self.workers is not None and self.workers < 1):
            raise ValueError("num_gpus must be >= 0 and workers >= 1")

    def identity(self) -> dict[str, Any]:
        """What determines the store's contents (device and batching do not)."""
        d = to_dict(self)
        for k in ("out", "device", "batch_seconds", "overwrite", "name", "engine", "address", "num_gpus", "workers"):
            d.pop(k)
        return d


def resolve_labels(names: Iterable[str]) -> list[str]:
    names = list(names)
    if names == ["none"] or not names:
        return []
    if "auto" in names:
        rest = [n for n in names if n != "auto"]
        return [n for n in DEFAULT_LABELS if n in LABELLERS] + rest
    return names


def extract(cfg: ExtractConfig, progress: bool = True, log=print) -> Path:
    """Run (or resume) an extraction; returns the store directory."""
    out = Path(cfg.out)
    ident = cfg.identity()
    h = config_hash(ident)
    mf_path = out / layout.MANIFEST
    if out.exists() and not out.is_dir():
        raise CodeclensError(f"{out} is a file, not a store directory; choose another --out")
    if mf_path.is_file():
        old = json.loads(mf_path.read_text())
        if old.get("config_hash") == h and old.get("complete"):
            log(f"{out}: up to date (config {h})")
            return out
        if old.get("config_hash") != h:
            if not cfg.overwrite:
                raise CodeclensError(
                    f"{out} holds a store made with a different configuration; "
                    "choose another --out or pass --overwrite"
                )
            shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise CodeclensError(f"{out} exists and is not a feature store; choose another --out")
        shutil.rmtree(out)

    corpus = load_corpus(cfg.corpus)
    codec = load_codec(cfg.codec, None if cfg.device == "auto" else cfg.device)
    if cfg.latent and type(codec).latent is CodecAdapter.latent:
        raise CodeclensError(f"codec '{cfg.codec}' has no pre-quantization latent; extract without --latent")
    labellers = [load_labeller(s) for s in parse_label_list(resolve_labels(cfg.labels))]
    utts = list(corpus)
    if cfg.limit is not None:
        utts = utts[: cfg.limit]
    if not utts:
        raise CodeclensError(f"corpus '{cfg.corpus}' has no utterances")
    out.mkdir(parents=True, exist_ok=True)

    manifest: dict[str, Any] = {
        "format": layout.FORMAT_VERSION,
        "name": cfg.name or out.name,
        "config": to_dict(cfg),
        "config_hash": h,
        "codec": codec.describe(),
        "corpus": corpus.describe(),
        "labels": [lb.describe() for lb in labellers],
        "complete": False,
        **provenance(),
    }
    write_json(mf_path, manifest)
    _save_tables(codec, out / layout.TABLES)

    for lb in labellers:
        lb.fit(utts)

    shards = [utts[i : i + cfg.shard_size] for i in range(0, len(utts), cfg.shard_size)]
    shard_dir = out / layout.SHARDS
    todo = [i for i in range(len(shards)) if not (shard_dir / _shard_name(i)).is_dir()]
    bar = _progress(len(utts), sum(len(shards[i]) for i in set(range(len(shards))) - set(todo)), progress)
    t0, audio_s = time.perf_counter(), 0.0
    try:
        if cfg.engine == "ray" and todo:  # same shards, same names, encoded by a pool of Ray actors
            from .engines.ray_engine import run_shards

            run_shards(cfg, todo, cfg.address, cfg.num_gpus, cfg.workers, log)
            todo = []
        for i in todo:
            audio_s += _write_shard(shards[i], codec, labellers, cfg, shard_dir / _shard_name(i), bar)
            if bar is not None:
                dt = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"{audio_s / dt:.1f}x real time")
    finally:  # an interrupted run must not leave a half-drawn bar over the error line
        if bar is not None:
            bar.close()

    problems = [dataclasses.asdict(p) for p in corpus.problems]
    _finalize(out, len(shards), manifest, cfg, problems)
    log(f"{out}: done")
    return out


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="utt", desc="extract", dynamic_ncols=True)


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _save_tables(codec: CodecAdapter, path: Path) -> None:
    from safetensors.numpy import save_file

    tabs = {f"layer_{l}": t.detach().float().cpu().numpy() for l, t in enumerate(codec.tables())}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(tabs, str(tmp))


def _codes_dtype(codebook_sizes: list[int]) -> type:
    return np.int16 if max(codebook_sizes) <= 32768 else np.int32


def _write_shard(
    utts: list[Utterance], codec: CodecAdapter, labellers: list[Labeller], cfg: ExtractConfig, dest: Path, bar
) -> float:
    """Encode and label one shard; returns the seconds of audio it held."""
    loaded: list[tuple[Utterance, np.ndarray]] = []
    skipped: list[dict[str, str]] = []
    for u in utts:
        try:
            audio, _ = u.load(codec.sample_rate)
            loaded.append((u, audio))
        except AudioError as e:
            skipped.append({"id": u.id, "path": u.path, "error": str(e)})
            if bar is not None:
                bar.update(1)

    results: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for batch in _batches(loaded, cfg.batch_seconds * codec.sample_rate):
        codes, latents = _encode_batch(codec, [a for _, a in batch], cfg.latent)
        for (u, _), c, z in zip(batch, codes, latents):
            results[u.id] = (c, z)

    dtype = _codes_dtype(codec.codebook_sizes)
    utt_rows, frame_tables, codes_all, lat_all = [], [], [], []
    seconds = 0.0
    for j, (u, audio) in enumerate(loaded):
        c, z = results[u.id]
        n = c.shape[0]
        times = frame_times(n, codec.frame_rate)
        row = dict(u.meta)
        row["duration"] = len(audio) / codec.sample_rate
        row["n_frames"] = n
        frame_cols: dict[str, Any] = {"utt": np.full(n, j, dtype=np.int64), "frame": np.arange(n), "time": times}
        for lb in labellers:
            try:
                frame_cols.update(lb.frame_labels(u, audio, codec.sample_rate, times, codec.frame_rate))
                row.update(lb.utterance_labels(u, audio, codec.sample_rate))
            except CodeclensError as e:
                # One bad alignment or label must not stop the run: skip and record.
                skipped.append({"id": u.id, "path": u.path, "error": str(e)})
                break
        else:
            utt_rows.append(row)
            frame_tables.append(pd.DataFrame(frame_cols))
            codes_all.append(c.astype(dtype))
            if z is not None:
                lat_all.append(z.astype(np.float16))
            seconds += row["duration"]
        if bar is not None:
            bar.update(1)

    for k, ft in enumerate(frame_tables):
        ft["utt"] = k
    with atomic_dir(dest) as tmp:
        L = codec.n_layers
        np.save(tmp / layout.CODES, np.concatenate(codes_all) if codes_all else np.zeros((0, L), dtype))
        if cfg.latent:
            d = lat_all[0].shape[1] if lat_all else 0
            np.save(tmp / layout.LATENT, np.concatenate(lat_all) if lat_all else np.zeros((0, d), np.float16))
        pd.DataFrame(utt_rows).to_parquet(tmp / layout.UTTERANCES, index=False)
        frames = pd.concat(frame_tables, ignore_index=True) if frame_tables else pd.DataFrame({"utt": [], "frame": [], "time": []})
        frames.to_parquet(tmp / layout.FRAMES, index=False)
        (tmp / "skipped.json").write_text(json.dumps(skipped))
    return seconds


def _batches(items: list[tuple[Utterance, np.ndarray]], max_samples: float):
    """Group consecutive utterances so a batch holds at most ``max_samples`` (padded) samples."""
    batch: list[tuple[Utterance, np.ndarray]] = []
    longest = 0
    for it in items:
        n = len(it[1])
        if batch and max(longest, n) * (len(batch) + 1) > max_samples:
            yield batch
            batch, longest = [], 0
        batch.append(it)
        longest = max(longest, n)
    if batch:
        yield batch


@torch.inference_mode()
def _encode_batch(codec: CodecAdapter, audios: list[np.ndarray], want_latent: bool):
    lengths = torch.tensor([len(a) for a in audios], dtype=torch.long)
    waves = torch.zeros(len(audios), int(lengths.max()))
    for i, a in enumerate(audios):
        waves[i, : len(a)] = torch.from_numpy(a)
    waves, lengths = waves.to(codec.device), lengths.to(codec.device)
    codes, n_frames = codec.encode(waves, lengths)
    codes = codes.cpu().numpy()
    n_frames = n_frames.cpu().numpy()
    out_codes = [codes[i, :, : n_frames[i]].T.copy() for i in range(len(audios))]
    if not want_latent:
        return out_codes, [None] * len(audios)
    lat, n_lat = codec.latent(waves, lengths)
    lat = lat.float().cpu().numpy()
    return out_codes, [lat[i, : n_frames[i]] for i in range(len(audios))]


def _finalize(out: Path, n_shards: int, manifest: dict[str, Any], cfg: ExtractConfig, problems: list) -> None:
    shard_dir = out / layout.SHARDS
    codes, lats, utts, frames, skipped = [], [], [], [], list(problems)
    offset = 0
    for i in range(n_shards):
        d = shard_dir / _shard_name(i)
        c = np.load(d / layout.CODES)
        u = pd.read_parquet(d / layout.UTTERANCES)
        f = pd.read_parquet(d / layout.FRAMES)
        f["utt"] = f["utt"].astype(np.int64) + sum(len(x) for x in utts)
        codes.append(c)
        if cfg.latent:
            lats.append(np.load(d / layout.LATENT))
        utts.append(u)
        frames.append(f)
        skipped.extend(json.loads((d / "skipped.json").read_text()))
    u = pd.concat(utts, ignore_index=True)
    if len(u) == 0:
        raise CodeclensError(f"{out}: no utterance could be read ({len(skipped)} skipped); see {out / layout.MANIFEST}")
    n = u["n_frames"].to_numpy()
    u["frame_offset"] = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
    u = add_splits(u, cfg.seed)
    all_codes = np.concatenate(codes)
    with atomic_path(out / layout.CODES, ".npy") as tmp:
        np.save(tmp, all_codes)
    if cfg.latent:
        with atomic_path(out / layout.LATENT, ".npy") as tmp:
            np.save(tmp, np.concatenate(lats))
    with atomic_path(out / layout.UTTERANCES, ".parquet") as tmp:
        u.to_parquet(tmp, index=False)
    with atomic_path(out / layout.FRAMES, ".parquet") as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
    manifest.update(
        complete=True,
        n_utterances=int(len(u)),
        n_frames=int(all_codes.shape[0]),
        seconds=float(u["duration"].sum()),
        skipped=skipped,
        codes_dtype=str(all_codes.dtype),
    )
    write_json(out / layout.MANIFEST, manifest)
    shutil.rmtree(shard_dir, ignore_errors=True)
