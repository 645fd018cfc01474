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
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ..audio import AudioError
from ..codecs import CodecAdapter, load_codec
from ..config import to_dict
from ..corpora import Corpus, Problem, Utterance, load_corpus
from ..corpora.base import why_empty
from ..errors import CodeclensError
from ..labels import LABELLERS, Labeller, frame_times, load_labeller, parse_label_list
from ..labels.splits import add_splits
from ..util.atomic import atomic_dir, atomic_path, naming_failures, write_json
from ..util.lock import pid_lock
from ..util.provenance import config_hash, provenance
from . import layout
from .codesio import npy_layout

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
    label_workers: int | None = None
    """Ray engine: CPU actors that run the labellers (default: as many as codec actors)."""
    inputs: str | None = None
    """Hash of what the corpus and codec files were made from, part of the store's identity (set by the study runner, not the CLI: a refitted codec or re-synthesized corpus rebuilds the store though its paths are unchanged)."""
    staging: str | None = None
    """Ray engine: fsspec URL (s3://..., gs://..., file://...) where workers commit shards when they share no file system with --out; the driver fetches them."""

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1")
        if not self.batch_seconds > 0:  # also refuses nan
            raise ValueError("batch_seconds must be > 0")
        if self.shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        if self.engine not in ("local", "ray"):
            raise ValueError("engine must be local or ray")
        if self.staging and self.engine != "ray":
            raise ValueError("staging is a Ray engine option: add --engine ray")
        if self.num_gpus < 0 or any(w is not None and w < 1 for w in (self.workers, self.label_workers)):
            raise ValueError("num_gpus must be >= 0 and workers, label_workers >= 1")

    def identity(self) -> dict[str, Any]:
        """What determines the store's contents (device and batching do not)."""
        d = to_dict(self)
        for k in ("out", "device", "batch_seconds", "overwrite", "name", "engine", "address", "num_gpus", "workers",
                  "label_workers", "staging"):
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


def extract(cfg: ExtractConfig, progress: bool = True, log=print, engine=None) -> Path:
    """Run (or resume) an extraction; returns the store directory.

    Nothing the user had is touched until the new store is complete: a fresh or
    interrupted store of this configuration is built in place, while a store that
    ``--overwrite`` replaces is built beside it (``.NAME.build-HASH``) and swapped
    in only when finished. Only a codeclens store is ever replaced, never the
    corpus, and one extraction at a time holds ``--out``. ``engine`` writes the
    shards still to do (default :func:`run_shards_in_process`, same signature).
    """
    from ..util.heap import mmap_large_buffers

    # Utterances of varying length leave a codec's activations fragmenting the heap (RSS creeps
    # from utterance to utterance) unless big buffers are mapped and unmapped (util/heap.py).
    mmap_large_buffers()
    out = Path(os.path.abspath(cfg.out))  # '.' or 'x/..' have no name to put siblings beside
    if out.exists() and not out.is_dir():
        raise CodeclensError(f"{out} is a file, not a store directory; choose another --out")
    with pid_lock(layout.lock_path(out), str(out)):
        return _extract_locked(cfg, out, progress, log, engine)


def _extract_locked(cfg: ExtractConfig, out: Path, progress: bool, log, engine) -> Path:
    ident = cfg.identity()
    h = config_hash(ident)
    _recover_swap(out)
    build = _build_dir(cfg, out, h, log)
    if build is None:
        return out

    # Everything that can be refused is checked before anything is written.
    corpus = load_corpus(cfg.corpus)
    # Extraction only encodes: no decoder weights in memory (codes identical to a full load).
    codec = load_codec(cfg.codec, None if cfg.device == "auto" else cfg.device, extraction_only=True)
    if cfg.latent and type(codec).latent is CodecAdapter.latent:
        raise CodeclensError(f"codec '{cfg.codec}' has no pre-quantization latent; extract without --latent")
    labellers = [load_labeller(s) for s in parse_label_list(resolve_labels(cfg.labels))]
    utts = list(corpus)
    if cfg.limit is not None:
        utts = utts[: cfg.limit]
    _refuse_inputs_inside(out, (u.path for u in utts))
    if not utts:
        raise CodeclensError(
            f"corpus '{cfg.corpus}' has no utterances: {why_empty(corpus.problems, getattr(corpus, 'ignored', []))}"
        )
    for lb in labellers:
        lb.fit(utts)
    with naming_failures(build):
        _build(cfg, out, build, codec, corpus, labellers, utts, progress, engine)
    log(f"{out}: done")
    return out


def _build(cfg: ExtractConfig, out: Path, build: Path, codec: CodecAdapter, corpus: Corpus,
           labellers: list[Labeller], utts: list[Utterance], progress: bool, engine) -> None:
    build.mkdir(parents=True, exist_ok=True)
    manifest = _start_manifest(build, cfg, codec, corpus, labellers, out.name)

    shards = [utts[i : i + cfg.shard_size] for i in range(0, len(utts), cfg.shard_size)]
    todo = [i for i in range(len(shards)) if not committed_shard(build, i)]
    bar = _progress(len(utts), sum(len(shards[i]) for i in set(range(len(shards))) - set(todo)), progress)
    try:
        if engine is None and cfg.engine == "ray" and todo:  # same shards, same names, a pool of Ray actors
            from .engines.ray_engine import ray_engine

            engine = ray_engine(cfg)
        (engine or run_shards_in_process)([(i, shards[i]) for i in todo], codec, labellers, cfg, build, bar)
    finally:  # an interrupted run must not leave a half-drawn bar over the error line
        if bar is not None:
            bar.close()

    finalize_store(build, len(shards), manifest, cfg, list(corpus.problems))
    if cfg.staging:  # the shards are in the store now; the shared staging copy has done its job
        from .sink import sink_for

        sink_for(cfg, build).clear()
    if build != out:
        _swap_in(build, out)


def run_shards_in_process(
    jobs: list[tuple[int, list[Utterance]]], codec: CodecAdapter, labellers: list[Labeller], cfg: ExtractConfig,
    store_dir: Path, bar=None,
) -> None:
    """The default engine: write each ``(shard index, utterances)`` job with :func:`write_shard`
    into ``shard_path(store_dir, index)``, one after another. Another engine (a Ray pool) takes
    the same arguments and must leave the same committed shards."""
    t0, audio_s = time.perf_counter(), 0.0
    for i, utts in jobs:
        audio_s += write_shard(utts, codec, labellers, cfg, shard_path(store_dir, i), bar)
        if bar is not None:
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{audio_s / dt:.1f}x real time")


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a store folder, or None when it is not one (no or unreadable manifest)."""
    try:
        m = json.loads((path / layout.MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return m if isinstance(m, dict) and ("config_hash" in m or "format" in m) else None


def _build_dir(cfg: ExtractConfig, out: Path, h: str, log) -> Path | None:
    """Where to build the store (``out`` itself, or a staging folder beside it), or None when
    ``out`` already holds this store intact."""
    _refuse_inputs_inside(out, _spec_paths(cfg))
    if not out.exists() or not any(out.iterdir()):
        return out
    old = _read_manifest(out)
    if old is None:
        # --overwrite replaces a store, never a folder of someone's files.
        what = "an unreadable store manifest" if (out / layout.MANIFEST).exists() else f"no {layout.MANIFEST}"
        raise CodeclensError(
            f"{out} is not a codeclens store ({what}); --overwrite only replaces a store: choose another --out"
        )
    if old.get("config_hash") == h and not old.get("complete"):
        return out  # an interrupted extraction of this very configuration: resume it
    if old.get("config_hash") == h:
        from .reader import check_store

        try:
            check_store(out)
        except CodeclensError as e:
            if not cfg.overwrite:
                raise CodeclensError(f"{e}; pass --overwrite to rebuild the store") from None
            log(f"{out}: damaged ({e}); rebuilding")
        else:
            from .reader import rebuild_reason

            why = rebuild_reason(out, old)
            if why is None:
                log(f"{out}: up to date (config {h})")
                return None
            if not cfg.overwrite:
                raise CodeclensError(f"{out}: {why}; pass --overwrite to rebuild the store")
            log(f"{out}: {why}; rebuilding")
    elif not cfg.overwrite:
        raise CodeclensError(
            f"{out} holds a store made with a different configuration; choose another --out or pass --overwrite"
        )
    _refuse_foreign_files(out)
    staging = layout.staging_path(out, h)
    staged = _read_manifest(staging) if staging.is_dir() else None
    if staging.exists() and (staged is None or staged.get("config_hash") != h):
        shutil.rmtree(staging)  # ours by name, and not a resumable build of this configuration
    return staging


def _spec_paths(cfg: ExtractConfig) -> list[str]:
    """Paths the corpus and codec specs name (targets and option values)."""
    from ..spec import parse_spec

    paths: list[str] = []
    for text in (cfg.corpus, cfg.codec):
        spec = parse_spec(text)
        paths += [v for v in (spec.target, *dict(spec.options).values()) if v]
    return paths


def _refuse_inputs_inside(out: Path, paths: Iterable[str]) -> None:
    """--out must not be, or contain, anything the extraction reads (it may be replaced)."""
    target = out.resolve()
    for p in paths:
        try:
            rp = Path(p).resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if rp.exists() and (rp == target or target in rp.parents):
            raise CodeclensError(f"--out {out} holds an input of the extraction ({p}); choose another --out")


def _refuse_foreign_files(out: Path) -> None:
    """A store folder holds store files only; anything else is the user's, and replacing the
    store would delete it."""
    own = {layout.MANIFEST, layout.TABLES, layout.CODES, layout.LATENT, layout.UTTERANCES, layout.FRAMES,
           layout.SCALES, layout.SHARDS}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in own and not p.name.startswith("."))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise CodeclensError(
            f"{out} holds files that are not part of a store ({shown}); --overwrite would delete them: "
            "move them or choose another --out"
        )


def _start_manifest(build: Path, cfg: ExtractConfig, codec: CodecAdapter, corpus: Corpus,
                    labellers: list[Labeller], name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": layout.FORMAT_VERSION,
        "name": cfg.name or name,
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg.identity()),
        "codec": codec.describe(),
        "corpus": corpus.describe(),
        "labels": [lb.describe() for lb in labellers],
        "complete": False,
        **provenance(),
    }
    write_json(build / layout.MANIFEST, manifest)
    _save_tables(codec, build / layout.TABLES)
    return manifest


def _swap_in(build: Path, out: Path) -> None:
    """Replace the store at ``out`` by the finished one at ``build`` (two renames)."""
    old = layout.retired_path(out)
    if old.exists():
        shutil.rmtree(old)
    os.replace(out, old)
    os.replace(build, out)  # a crash between the renames is repaired by _recover_swap
    shutil.rmtree(old, ignore_errors=True)


def _recover_swap(out: Path) -> None:
    """Undo half a swap (the old store renamed away, the new one not yet in): put the old back,
    so the run starts from a state that existed; a finished staging build is then reused."""
    old = layout.retired_path(out)
    if old.is_dir() and not out.exists():
        os.replace(old, out)
    elif old.is_dir() and out.is_dir():
        shutil.rmtree(old, ignore_errors=True)


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="utt", desc="extract", dynamic_ncols=True)


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def shard_path(store_dir: str | Path, i: int) -> Path:
    """Directory of shard ``i`` of a store being built (deterministic: engines commit by rename)."""
    return Path(store_dir) / layout.SHARDS / _shard_name(i)


def committed_shard(store_dir: str | Path, i: int) -> bool:
    """Whether shard ``i`` has been committed (renamed into place complete)."""
    return shard_path(store_dir, i).is_dir()


def _save_tables(codec: CodecAdapter, path: Path) -> None:
    from safetensors.numpy import save

    tabs = {f"layer_{l}": t.detach().float().cpu().numpy() for l, t in enumerate(codec.tables())}
    # Serialised in memory and written by Python, so a full disk is an OSError (one line), not
    # a SafetensorError.
    with atomic_path(path, ".safetensors") as tmp:
        tmp.write_bytes(save(tabs))


def _codes_dtype(codebook_sizes: list[int]) -> type:
    return np.int16 if max(codebook_sizes) <= 32768 else np.int32


@dataclasses.dataclass
class EncodedShard:
    """One shard's codes before labelling: what a codec worker hands to the labellers.

    Lists run over the utterances that could be read, in shard order; ``skipped``
    holds the records of those that could not. ``audio`` is kept only in-process (the
    local engine labels right after encoding); a Ray labelling actor re-reads the files
    instead of shipping waveforms through the object store."""

    ids: list[str]
    codes: list[np.ndarray]
    latents: list[np.ndarray] | None
    times: list[np.ndarray]
    durations: list[float]
    skipped: list[dict[str, Any]]
    n_layers: int
    sample_rate: int
    frame_rate: float
    scales: list[np.ndarray] | None = None
    """Per-utterance chunk scales, for codecs whose decode needs them (EnCodec 48 kHz), else None."""
    audio: list[np.ndarray] | None = None


def encode_shard(utts: list[Utterance], codec: CodecAdapter, cfg: ExtractConfig, keep_audio: bool = True) -> EncodedShard:
    """Read and encode one shard (no labels): the part of :func:`write_shard` that needs the codec."""
    loaded: list[tuple[Utterance, np.ndarray]] = []
    skipped: list[dict[str, Any]] = []
    for u in utts:
        try:
            audio, _ = u.load(codec.sample_rate)
            loaded.append((u, audio))
        except AudioError as e:
            skipped.append(_skip(u, e, "audio"))
    results: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}
    for batch in _batches(loaded, cfg.batch_seconds * codec.sample_rate):
        codes, latents, scales = _encode_batch(codec, [a for _, a in batch], cfg.latent)
        for (u, _), c, z, sc in zip(batch, codes, latents, scales):
            results[u.id] = (c, z, sc)
    dtype = _codes_dtype(codec.codebook_sizes)
    codes_l, lat_l, times_l, scales_l = [], [], [], []
    for u, _ in loaded:
        c, z, sc = results[u.id]
        codes_l.append(c.astype(dtype))
        scales_l.append(sc)
        lat_l.append(None if z is None else z.astype(np.float16))
        # The codec's own frame centres (offset, chunking: docs/labels.md#frame-timing).
        n = c.shape[0]
        times_l.append(codec.frame_times(n) if hasattr(codec, "frame_times") else frame_times(n, codec.frame_rate))
    return EncodedShard(
        ids=[u.id for u, _ in loaded], codes=codes_l, latents=lat_l if cfg.latent else None, times=times_l,
        durations=[len(a) / codec.sample_rate for _, a in loaded], skipped=skipped, n_layers=codec.n_layers,
        sample_rate=int(codec.sample_rate), frame_rate=float(codec.frame_rate),
        scales=[np.asarray(x, np.float32) for x in scales_l] if needs_scales(codec) else None,
        audio=[a for _, a in loaded] if keep_audio else None,
    )


def save_encoded(enc: EncodedShard, path: Path) -> None:
    """Write an encoded shard (without its audio) to ``path`` (.npz), atomically."""
    lens = np.array([len(c) for c in enc.codes], np.int64)
    arrays: dict[str, np.ndarray] = {
        "lengths": lens,
        "codes": np.concatenate(enc.codes) if enc.codes else np.zeros((0, enc.n_layers), np.int16),
        "times": np.concatenate(enc.times) if enc.times else np.zeros(0),
    }
    if enc.latents is not None:
        arrays["latents"] = np.concatenate(enc.latents) if enc.latents else np.zeros((0, 0), np.float16)
    if enc.scales is not None:
        arrays["scale_lengths"] = np.array([len(x) for x in enc.scales], np.int64)
        arrays["scales"] = np.concatenate(enc.scales) if enc.scales else np.zeros(0, np.float32)
    meta = {k: getattr(enc, k) for k in ("ids", "durations", "skipped", "n_layers", "sample_rate", "frame_rate")}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez must not append its own suffix
            np.savez(fh, **arrays)


def load_encoded(path: Path) -> EncodedShard:
    """Read what :func:`save_encoded` wrote."""
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        cut = np.cumsum(z["lengths"])[:-1]
        split = (lambda a: list(np.split(a, cut))) if len(z["lengths"]) else (lambda a: [])
        latents = split(z["latents"]) if "latents" in z.files else None
        scales = None
        if "scales" in z.files:
            scales = list(np.split(z["scales"], np.cumsum(z["scale_lengths"])[:-1])) if len(z["scale_lengths"]) else []
        return EncodedShard(codes=split(z["codes"]), times=split(z["times"]), latents=latents, scales=scales, **meta)


def label_shard(
    utts: list[Utterance], enc: EncodedShard, labellers: list[Labeller], cfg: ExtractConfig, dest: Path, bar=None,
) -> float:
    """Label an encoded shard and commit it to ``dest`` by one rename; returns its seconds of audio.

    Needs no codec: frame times, rates and sizes travel in ``enc``. Without ``enc.audio``
    the audio is re-read from the utterances' files (same reader, same samples)."""
    by_id = {u.id: u for u in utts}
    skipped = list(enc.skipped)
    if bar is not None and skipped:
        bar.update(len(skipped))
    utt_rows, frame_tables, codes_all, lat_all, scale_rows = [], [], [], [], []
    seconds = 0.0
    for j, uid in enumerate(enc.ids):
        u, c, times = by_id[uid], enc.codes[j], enc.times[j]
        n = c.shape[0]
        row = dict(u.meta)
        row["duration"] = enc.durations[j]
        row["n_frames"] = n
        frame_cols: dict[str, Any] = {"utt": np.full(n, j, dtype=np.int64), "frame": np.arange(n), "time": times}
        try:
            audio = enc.audio[j] if enc.audio is not None else (u.load(enc.sample_rate)[0] if labellers else None)
            for lb in labellers:
                frame_cols.update(lb.frame_labels(u, audio, enc.sample_rate, times, enc.frame_rate))
                row.update(lb.utterance_labels(u, audio, enc.sample_rate))
        except (CodeclensError, AudioError) as e:
            # One bad alignment or label must not stop the run: skip and record.
            skipped.append(_skip(u, e, "labels"))
        else:
            utt_rows.append(row)
            frame_tables.append(pd.DataFrame(frame_cols))
            codes_all.append(c)
            if enc.latents is not None:
                lat_all.append(enc.latents[j])
            if enc.scales is not None:
                sc = enc.scales[j]
                scale_rows.append(pd.DataFrame({"utt": len(utt_rows) - 1, "chunk": np.arange(len(sc)), "scale": sc}))
            seconds += row["duration"]
        if bar is not None:
            bar.update(1)

    for k, ft in enumerate(frame_tables):
        ft["utt"] = k
    dtype = codes_all[0].dtype if codes_all else (enc.codes[0].dtype if enc.codes else np.int16)
    with atomic_dir(dest) as tmp:
        np.save(tmp / layout.CODES, np.concatenate(codes_all) if codes_all else np.zeros((0, enc.n_layers), dtype))
        if cfg.latent:
            d = lat_all[0].shape[1] if lat_all else 0
            np.save(tmp / layout.LATENT, np.concatenate(lat_all) if lat_all else np.zeros((0, d), np.float16))
        pd.DataFrame(utt_rows).to_parquet(tmp / layout.UTTERANCES, index=False)
        frames = pd.concat(frame_tables, ignore_index=True) if frame_tables else pd.DataFrame({"utt": [], "frame": [], "time": []})
        frames.to_parquet(tmp / layout.FRAMES, index=False)
        if enc.scales is not None:
            _scales_frame(scale_rows).to_parquet(tmp / layout.SCALES, index=False)
        (tmp / "skipped.json").write_text(json.dumps(skipped))
    return seconds


def write_shard(
    utts: list[Utterance], codec: CodecAdapter, labellers: list[Labeller], cfg: ExtractConfig, dest: Path,
    bar=None,
) -> float:
    """Encode and label one shard of utterances into the shard directory ``dest``
    (see :func:`shard_path`), committed by one rename; returns the seconds of audio it held.

    Any engine (in-process, a Ray worker) may call this; writing the same shard twice
    gives the same directory, so a shard redone after a lost worker is harmless."""
    return label_shard(utts, encode_shard(utts, codec, cfg), labellers, cfg, dest, bar)


def needs_scales(codec: CodecAdapter) -> bool:
    """Whether the codec's decode needs the input's scales (``codec.scales``) to restore its level."""
    return bool(getattr(codec, "needs_scales", False))


def _scales_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame({"utt": np.zeros(0, np.int64), "chunk": np.zeros(0, np.int64), "scale": np.zeros(0, np.float32)})
    out = pd.concat(parts, ignore_index=True)
    return out.astype({"utt": np.int64, "chunk": np.int64, "scale": np.float32})


def _skip(u: Utterance, e: Exception, stage: str) -> dict[str, Any]:
    return dataclasses.asdict(Problem(where=u.path, message=str(e), id=u.id, stage=stage))


def _record(r: dict[str, Any]) -> dict[str, Any]:
    """A shard's skip record in the one shape (shards of older versions said path/error)."""
    if "where" in r:
        return r
    return dataclasses.asdict(Problem(where=r.get("path", ""), message=r.get("error", ""), id=r.get("id"), stage="audio"))


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
    if want_latent:
        codes, n_frames, lat, _ = codec.encode_with_latent(waves, lengths)
        lat = lat.float().cpu().numpy()
    else:
        codes, n_frames = codec.encode(waves, lengths)
    codes = codes.cpu().numpy()
    n_frames = n_frames.cpu().numpy()
    out_codes = [codes[i, :, : n_frames[i]].T.copy() for i in range(len(audios))]
    scales: list[np.ndarray | None] = [None] * len(audios)
    if needs_scales(codec):
        # What decode multiplies back per chunk; the codec's own count of chunks per item.
        s = codec.scales(waves, lengths).float().cpu().numpy()
        count = getattr(codec, "chunks", None)
        scales = [s[i, : len(count(int(n))) if count else s.shape[1]].copy() for i, n in enumerate(lengths.tolist())]
    if not want_latent:
        return out_codes, [None] * len(audios), scales
    return out_codes, [lat[i, : n_frames[i]] for i in range(len(audios))], scales


COPY_BYTES = 16 << 20
"""Bytes of a part copied at a time by :func:`concat_npy`."""


def concat_npy(parts: Sequence[Path], dest: Path) -> tuple[int, np.dtype]:
    """The rows of the ``.npy`` files ``parts``, one after the other, as the ``.npy`` file ``dest``;
    returns (rows, dtype). Each part is read memory-mapped and copied a block at a time, so memory
    is one block, not the store: concatenating the shards in memory held every shard's arrays and
    their concatenation at once (float16 latents of SpeechTokenizer are 2 KB a frame: 0.14 GB,
    held twice, for 22 minutes of audio; 37 GB for 100 hours)."""
    heads = [(shape, dt) for _, dt, shape in map(npy_layout, parts)]
    if not heads:
        raise CodeclensError(f"{dest}: no shard arrays to concatenate")
    tails = {shape[1:] for shape, _ in heads if shape[0]} or {heads[0][0][1:]}
    if len(tails) > 1:
        raise CodeclensError(f"{dest}: shard arrays of different widths {sorted(tails)}")
    dtype = np.result_type(*(dt for _, dt in heads))
    tail = tails.pop()
    rows = sum(shape[0] for shape, _ in heads)
    per_row = max(1, int(np.prod(tail, dtype=np.int64)) * dtype.itemsize)
    step = max(1, COPY_BYTES // per_row)
    with open(dest, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                                 "shape": (rows, *tail)})
        for p, (shape, _) in zip(parts, heads):
            if not shape[0]:
                continue
            part = np.load(p, mmap_mode="r")
            for a in range(0, shape[0], step):
                f.write(np.ascontiguousarray(part[a : a + step], dtype).tobytes())
            del part  # unmap: the copied pages leave this process
    return rows, dtype


def finalize_store(
    out: Path, n_shards: int, manifest: dict[str, Any], cfg: ExtractConfig, problems: list[Problem]
) -> None:
    """Concatenate committed shards ``0..n_shards-1`` of ``out`` into the store's arrays and
    mark its manifest complete. ``problems`` are the corpus's skipped inputs; the shards'
    own skipped utterances are added to them, in one record shape."""
    shard_dir = out / layout.SHARDS
    utts, frames, scales = [], [], []
    skipped = [dataclasses.asdict(p) for p in problems]
    for i in range(n_shards):
        d = shard_path(out, i)
        u = pd.read_parquet(d / layout.UTTERANCES)
        f = pd.read_parquet(d / layout.FRAMES)
        f["utt"] = f["utt"].astype(np.int64) + sum(len(x) for x in utts)
        # Shards of a version that kept no scales (a resumed old build): then none are kept.
        sc = pd.read_parquet(d / layout.SCALES) if (d / layout.SCALES).is_file() else None
        if sc is not None:
            sc["utt"] = sc["utt"].astype(np.int64) + sum(len(x) for x in utts)
        scales.append(sc)
        utts.append(u)
        frames.append(f)
        skipped.extend(_record(r) for r in json.loads((d / "skipped.json").read_text()))
    u = pd.concat(utts, ignore_index=True)
    if len(u) == 0:
        raise CodeclensError(
            f"{out}: no utterance could be read: {why_empty([Problem(**r) for r in skipped])}"
        )
    n = u["n_frames"].to_numpy()
    u["frame_offset"] = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
    u = add_splits(u, cfg.seed)
    shards = [shard_path(out, i) for i in range(n_shards)]
    with atomic_path(out / layout.CODES, ".npy") as tmp:
        n_rows, codes_dtype = concat_npy([d / layout.CODES for d in shards], tmp)
    if cfg.latent:
        with atomic_path(out / layout.LATENT, ".npy") as tmp:
            concat_npy([d / layout.LATENT for d in shards], tmp)
    with atomic_path(out / layout.UTTERANCES, ".parquet") as tmp:
        u.to_parquet(tmp, index=False)
    with atomic_path(out / layout.FRAMES, ".parquet") as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
    if scales and all(sc is not None for sc in scales):
        with atomic_path(out / layout.SCALES, ".parquet") as tmp:
            _scales_frame(scales).to_parquet(tmp, index=False)
    manifest.update(
        complete=True,
        n_utterances=int(len(u)),
        n_frames=n_rows,
        seconds=float(u["duration"].sum()),
        skipped=skipped,
        codes_dtype=str(codes_dtype),
    )
    write_json(out / layout.MANIFEST, manifest)
    shutil.rmtree(shard_dir, ignore_errors=True)
