"""Extraction on Ray: utterance shards as a Ray Data dataset through two actor pools.

Codec actors each load the codec once (on a GPU when ``num_gpus`` > 0) and
encode shards to codes; CPU labelling actors each fit the labellers once, label
those shards (re-reading their audio rather than shipping it through the object
store) and commit them. Both rebuild the corpus' utterance list (corpus order is
deterministic) and use the local engine's own shard functions (``encode_shard``,
``label_shard``), so both engines write byte-identical shards. Ray gives no
exactly-once execution (a retried or speculative task may run twice), so the
store never depends on it:

- a shard's name is a function of its content (its position in the fixed
  utterance order under the manifest's config hash), never of the task;
- a shard is written to a temporary directory and committed by one rename, so a
  killed task leaves no partial shard and a duplicate attempt commits the same
  bytes;
- the driver builds the manifest and the final arrays from committed shards
  only, after checking that every expected shard is there; a re-run after a
  crash (of a task, an actor or the driver) encodes only the missing shards;
- the hand-over between the pools is a file per shard (``shards/.encoded/``),
  also written atomically under a deterministic name, so a crash between
  encoding and labelling costs no re-encode.

Failed tasks are retried by Ray (actor restarts and task retries); an
utterance that cannot be read or labelled is skipped and recorded exactly as
the local engine does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ...errors import CodeclensError

FAULT_ENV = "CODECLENS_RAY_FAULT"
"""Fault injection for tests: a file path; the first shard task that finds it missing creates it and
kills its worker process (as a crash would), once per path."""
FAULT_STAGE_ENV = "CODECLENS_RAY_FAULT_STAGE"
"""Which step the injected fault kills: ``encode`` (a codec actor, the default) or ``label``."""
RETRIES = 3


def _require_ray():
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise CodeclensError("the ray engine needs Ray: pip install 'codeclens[ray]'") from None
    import ray

    return ray


def _maybe_crash(stage: str) -> None:
    fault = os.environ.get(FAULT_ENV)
    if fault and os.environ.get(FAULT_STAGE_ENV, "encode") == stage and not os.path.exists(fault):
        Path(fault).touch()
        os._exit(1)  # a crash mid-task: Ray must restart the actor and retry the shard


def _config(cfg_dict: dict[str, Any]):
    from ..writer import ExtractConfig

    return ExtractConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_dict.items()})


class ShardEncoder:
    """The codec step (map_batches class): one codec per actor, on a GPU when asked; a batch is a
    few shard indices. Writes each shard's codes (no labels) for the labelling step."""

    def __init__(self, cfg_dict: dict[str, Any], device: str, store_dir: str):
        from ...codecs import load_codec
        from ...util.heap import mmap_large_buffers
        from ..sink import sink_for

        mmap_large_buffers()  # as the local engine: activations must not fragment the actor's heap
        self.cfg = _config(cfg_dict)
        self.sink = sink_for(self.cfg, store_dir)
        self.shards = _shards(self.cfg)
        self.codec = load_codec(self.cfg.codec, device, extraction_only=True)  # encodes only: no decoder

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from ..writer import encode_shard

        for i in np.asarray(batch["shard"]).tolist():
            # Committed, or encoded by an earlier attempt or run: nothing to do.
            if not self.sink.committed(int(i)) and not self.sink.has_encoded(int(i)):
                _maybe_crash("encode")
                self.sink.put_encoded(int(i), encode_shard(self.shards[int(i)], self.codec, self.cfg, keep_audio=False))
        return {"shard": np.asarray(batch["shard"], np.int64)}


class ShardLabeller:
    """The labelling step (CPU map_batches class): fitted labellers per actor; labels an encoded
    shard (re-reading its audio) and commits it (by rename; by a marker on a staging URL)."""

    def __init__(self, cfg_dict: dict[str, Any], store_dir: str):
        from ...labels import load_labeller, parse_label_list
        from ..sink import sink_for
        from ..writer import resolve_labels

        self.cfg = _config(cfg_dict)
        self.sink = sink_for(self.cfg, store_dir)
        self.shards = _shards(self.cfg)
        self.labellers = [load_labeller(s) for s in parse_label_list(resolve_labels(self.cfg.labels))]
        utts = [u for sh in self.shards for u in sh]
        for lb in self.labellers:
            lb.fit(utts)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from ..writer import label_shard

        secs = []
        for i in np.asarray(batch["shard"]).tolist():
            s = 0.0
            if not self.sink.committed(int(i)):
                _maybe_crash("label")
                enc = self.sink.get_encoded(int(i))
                s = self.sink.commit(int(i), lambda dest: label_shard(self.shards[int(i)], enc, self.labellers,
                                                                      self.cfg, dest))
                self.sink.drop_encoded(int(i))  # after the commit: a crash in between only leaves a spare file
            secs.append(float(s))
        return {"shard": np.asarray(batch["shard"], np.int64), "seconds": np.array(secs)}


def _shards(cfg):
    """The extraction's shards, rebuilt in a worker exactly as the driver cut them (corpus order is fixed)."""
    from ...corpora import load_corpus

    utts = list(load_corpus(cfg.corpus))
    if cfg.limit is not None:
        utts = utts[: cfg.limit]
    return [utts[i : i + cfg.shard_size] for i in range(0, len(utts), cfg.shard_size)]


def ray_engine(cfg):
    """The extraction engine interface of :func:`codeclens.store.writer.extract`:
    ``engine(jobs, codec, labellers, cfg, store_dir, bar)`` with jobs ``(shard index, utterances)``;
    the workers rebuild the shards themselves from the corpus (its order is deterministic)."""
    def engine(jobs, codec, labellers, cfg_, store_dir, bar=None) -> None:
        todo = [int(i) for i, _ in jobs]
        run_shards(cfg_, todo, cfg_.address, cfg_.num_gpus, cfg_.workers, store_dir=store_dir,
                   label_workers=cfg_.label_workers)
        if bar is not None:
            bar.update(sum(len(u) for _, u in jobs))

    return engine


def run_shards(cfg, todo: Sequence[int], address: str | None, num_gpus: float, workers: int | None,
               log=print, store_dir: str | Path | None = None, label_workers: int | None = None) -> float:
    """Encode shards ``todo`` of the extraction ``cfg`` on Ray into ``store_dir`` (default: the
    store itself); returns the audio seconds encoded.

    ``address``: a running cluster (``ray://host:10001`` or ``auto``); None starts a local
    instance. ``num_gpus``: GPUs per codec actor (0: CPU actors). ``workers``: codec actors
    (default: the cluster's GPUs / num_gpus, or its CPUs / 2). ``label_workers``: CPU labelling
    actors (default: as many as codec actors).
    """
    ray = _require_ray()
    from ...config import to_dict

    if not todo:
        return 0.0
    store_dir = Path(cfg.out if store_dir is None else store_dir)
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        # Workers must import the same codeclens as the driver (a source tree, not an install).
        src = str(Path(__file__).resolve().parents[3])
        env = {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
        for k in (FAULT_ENV, FAULT_STAGE_ENV):
            if k in os.environ:
                env[k] = os.environ[k]
        kw["runtime_env"] = {"env_vars": env}
        if address:
            kw["address"] = address
        else:
            # Codec and labelling actors take one logical CPU each and run side by side.
            kw["num_cpus"] = max(2, (workers or 1) + (label_workers or workers or 1))
        ray.init(**kw)
        started = True
    try:
        res = ray.cluster_resources()
        if workers is None:
            workers = int(res.get("GPU", 0) // num_gpus) if num_gpus > 0 else max(1, int(res.get("CPU", 2) // 2))
        workers = max(1, min(workers, len(todo)))
        label_workers = max(1, min(label_workers or workers, len(todo)))
        device = "cuda" if num_gpus > 0 else "cpu"
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"shard": int(i)} for i in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            ShardEncoder, fn_constructor_kwargs={"cfg_dict": to_dict(cfg), "device": device,
                                                 "store_dir": str(store_dir)},
            batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=num_gpus or None, num_cpus=1,
            max_restarts=RETRIES, max_task_retries=RETRIES,
        )
        ds = ds.map_batches(
            ShardLabeller, fn_constructor_kwargs={"cfg_dict": to_dict(cfg), "store_dir": str(store_dir)},
            batch_size=1, compute=ray.data.ActorPoolStrategy(size=label_workers), num_cpus=1,
            max_restarts=RETRIES, max_task_retries=RETRIES,
        )
        seconds = 0.0
        for row in ds.iter_rows():
            seconds += float(row["seconds"])
    finally:
        if started:
            ray.shutdown()
    # The store is built from committed shards only: every expected one must be there.
    from ..sink import fetch_all, sink_for
    from ..writer import committed_shard, shard_path

    fetch_all(sink_for(cfg, store_dir), store_dir, todo)
    missing = [i for i in todo if not committed_shard(store_dir, i)]
    if missing:
        raise CodeclensError(f"{cfg.out}: {len(missing)} shard(s) not committed by the Ray run "
                             f"(first: {shard_path(store_dir, missing[0]).name}); re-run extract to finish them")
    return seconds
