"""The steps of a study run and what each one does.

A step has an id (``extract:synth/encodec``), the JSON-able configuration that
determines its output, the ids of the steps whose outputs it reads, and an
output directory. The runner (:mod:`codeclens.study.runner`) decides whether to
run it; the functions here only do the work.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from ..config import to_dict
from ..errors import CodeclensError
from ..spec import Spec, parse_spec
from ..util.atomic import atomic_dir, write_json
from ..util.provenance import config_hash
from .config import AnalysisEntry, CodecEntry, CorpusEntry, Study


@dataclasses.dataclass
class Step:
    id: str
    """Unique id, ``kind:what`` (``corpus:synth``, ``extract:synth/dac``, ``probes:synth``)."""
    kind: str
    """corpus | fit | random | extract | analysis"""
    config: dict[str, Any]
    """What determines the output (hashed with the inputs' outputs into the step key)."""
    deps: tuple[str, ...]
    """Ids of the steps whose outputs this one reads."""
    out: Path
    """Output directory."""
    work: Callable[["Step", "Context"], dict[str, Any]] = dataclasses.field(repr=False, default=None)
    """Does the work; returns facts recorded with the step (JSON-able)."""
    resumable: bool = False
    """True when the work itself resumes from a partial output (extraction shards, an analysis'
    own cache): the runner keeps the output of an unfinished run with the same key."""
    group: str = ""
    """The study entry it comes from (analysis name, codec name...), for --force."""


@dataclasses.dataclass
class Context:
    """What steps need from the run: the study, the run directory, resolved specs."""

    study: Study
    root: Path
    progress: bool = True
    log: Callable[[str], None] = print
    corpus_specs: dict[str, str] = dataclasses.field(default_factory=dict)
    codec_specs: dict[str, str] = dataclasses.field(default_factory=dict)
    inputs: dict[str, str | None] = dataclasses.field(default_factory=dict)
    """Tokens of the steps the running step depends on (set by the runner before each step)."""

    @property
    def device(self) -> str:
        return self.study.meta.device


def corpus_dir(root: Path, name: str) -> Path:
    return root / "corpora" / name


def corpus_summary(root: Path, name: str) -> Path:
    """Utterance, speaker and accent counts of a corpus (beside, not inside, its folder)."""
    return root / "corpora" / f"{name}.summary.json"


def codec_dir(root: Path, name: str) -> Path:
    return root / "codecs" / name


def store_dir(root: Path, corpus: str, codec: str) -> Path:
    return root / "stores" / corpus / codec


def resolved_corpus_spec(entry: CorpusEntry, root: Path) -> str:
    """The spec the run uses: a synthetic corpus without a target is written inside the run."""
    spec = parse_spec(entry.spec)
    if spec.kind == "synthetic" and not spec.target:
        return str(Spec(spec.kind, str(corpus_dir(root, entry.name).resolve()), spec.options))
    return entry.spec


def resolved_codec_spec(entry: CodecEntry, root: Path) -> str:
    """Fitted melrvq and saved random weights load from the run's codecs/ folder."""
    spec = parse_spec(entry.spec)
    ckpt = str(codec_dir(root, entry.name).resolve())
    if entry.fit is not None:
        opts = tuple((k, v) for k, v in spec.options if k not in ("random_init",)) + (("checkpoint", ckpt),)
        return str(Spec(spec.kind, spec.target, opts))
    if entry.save_random:
        from ..codecs.testing import reload_spec

        return reload_spec(spec, ckpt)
    return entry.spec


# -- work ---------------------------------------------------------------------


def run_corpus(step: Step, ctx: Context) -> dict[str, Any]:
    """Materialise the corpus (a synthetic one is written to disk) and summarise it."""
    from collections import Counter

    from ..corpora import load_corpus

    name = step.config["name"]
    spec = ctx.corpus_specs[name]
    corpus = load_corpus(spec)
    utts = list(corpus)
    limit = step.config.get("limit")
    if limit:
        utts = utts[:limit]
    if not utts:
        raise CodeclensError(f"corpus '{name}' ({spec}) has no utterances")
    speakers = Counter(u.speaker for u in utts)
    accents = Counter(u.accent for u in utts if u.accent is not None)
    info = {
        "spec": spec,
        "utterances": len(utts),
        "speakers": len(speakers),
        "accents": dict(sorted(accents.items())),
        "with_phones": sum(1 for u in utts if u.phones),
        "problems": [dataclasses.asdict(p) for p in corpus.problems][:200],
        "n_problems": len(corpus.problems),
    }
    write_json(corpus_summary(ctx.root, name), {**info, "speaker_counts": dict(sorted(speakers.items()))})
    return info


def run_fit(step: Step, ctx: Context) -> dict[str, Any]:
    """Fit melrvq codebooks on a study corpus into the codec's folder."""
    from ..codecs.melrvq import MelRVQConfig, fit_melrvq
    from ..corpora import load_corpus
    from ..util.device import resolve_device

    fit = step.config["fit"]
    corpus_name = fit["corpus"]
    utts = list(load_corpus(ctx.corpus_specs[corpus_name]))
    limit = ctx.study.corpus(corpus_name).limit
    if limit:
        utts = utts[:limit]
    cfg = MelRVQConfig(n_layers=fit["layers"], codebook_size=fit["codebook_size"])
    dev = resolve_device(ctx.device)
    with atomic_dir(step.out) as tmp:
        model = fit_melrvq(
            utts, tmp, cfg, max_frames=fit["max_frames"], iters=fit["iters"], seed=fit["seed"],
            device=dev, progress=ctx.progress,
        )
    return {"layers": model.n_layers, "codebook_size": model.codebook_sizes[0]}


def run_random(step: Step, ctx: Context) -> dict[str, Any]:
    """Save a random-weight codec once, so every later step loads the very same weights."""
    from ..codecs.testing import save_random_checkpoint
    from ..util.device import resolve_device

    with atomic_dir(step.out) as tmp:
        save_random_checkpoint(step.config["spec"], tmp, device=resolve_device(ctx.device))
    return {"reload": ctx.codec_specs[step.group]}


def run_extract(step: Step, ctx: Context) -> dict[str, Any]:
    from ..config import build
    from ..store.reader import Store
    from ..store.writer import ExtractConfig, extract

    c = step.config
    cfg = build(
        ExtractConfig,
        {**c["options"], "corpus": c["corpus_spec"], "codec": c["codec_spec"], "out": str(step.out),
         "device": ctx.device, "overwrite": True, "name": c["label"],
         # A refit codec or re-synthesized corpus keeps its path: its token makes the store differ.
         "inputs": config_hash(ctx.inputs) if any(ctx.inputs.values()) else None},
        where=f"extract {step.id}",
    )
    extract(cfg, progress=ctx.progress, log=lambda m: None)
    s = Store(step.out).summary()
    return {k: s[k] for k in ("utterances", "frames", "speakers", "hours", "layers", "frame_rate", "labels", "skipped", "disk_mb") if k in s}


def run_analysis(step: Step, ctx: Context, entry: AnalysisEntry) -> dict[str, Any]:
    from ..analyses import ANALYSES
    from ..store.reader import Store

    cls = ANALYSES.get(entry.kind)
    stores = [Store(p) for p in step.config["stores"]]
    # The runner has already emptied step.out unless the analysis resumes an interrupted run of this key.
    res = cls()(stores, entry.config, step.out, progress=ctx.progress)
    return {"artifacts": len(res.artifacts), "published": len(res.published), "analysis_seconds": res.seconds}


# -- planning -----------------------------------------------------------------


def plan(study: Study, root: Path) -> tuple[list[Step], Context]:
    """Every step of the study in dependency order."""
    ctx = Context(study, root)
    steps: list[Step] = []
    for c in study.corpora:
        ctx.corpus_specs[c.name] = resolved_corpus_spec(c, root)
        steps.append(Step(
            f"corpus:{c.name}", "corpus", {"name": c.name, "spec": ctx.corpus_specs[c.name], "limit": c.limit},
            # resumable: a synthetic corpus written into the run keeps its finished utterances
            (), corpus_dir(root, c.name), run_corpus, resumable=True, group=c.name,
        ))
    for k in study.codecs:
        ctx.codec_specs[k.name] = resolved_codec_spec(k, root)
        if k.fit is not None:
            steps.append(Step(
                f"fit:{k.name}", "fit", {"spec": k.spec, "fit": dataclasses.asdict(k.fit)},
                (f"corpus:{k.fit.corpus}",), codec_dir(root, k.name), run_fit, group=k.name,
            ))
        elif k.save_random:
            steps.append(Step(
                f"random:{k.name}", "random", {"spec": k.spec}, (), codec_dir(root, k.name), run_random, group=k.name,
            ))
    codec_step = {s.group: s.id for s in steps if s.kind in ("fit", "random")}
    for c in study.corpora:
        for k in study.codecs:
            opts = study.extract_options(c.name, k.name)
            if c.limit is not None:
                opts["limit"] = c.limit
            deps = (f"corpus:{c.name}",) + ((codec_step[k.name],) if k.name in codec_step else ())
            steps.append(Step(
                f"extract:{c.name}/{k.name}", "extract",
                {"corpus_spec": ctx.corpus_specs[c.name], "codec_spec": ctx.codec_specs[k.name], "options": opts,
                 "label": k.display},
                deps, store_dir(root, c.name, k.name), run_extract, resumable=True, group=f"{c.name}/{k.name}",
            ))
    from ..analyses import ANALYSES

    for a in study.analyses:
        resumable = bool(getattr(ANALYSES.get(a.kind), "resumable", False))
        for c in a.corpora:
            units = [(f"{c}", list(a.codecs))] if a.per == "corpus" else [(f"{c}/{k}", [k]) for k in a.codecs]
            for where, codecs in units:
                stores = [str(store_dir(root, c, k)) for k in codecs]
                steps.append(Step(
                    f"{a.name}:{where}", "analysis",
                    {"analysis": a.kind, "config": to_dict(a.config), "stores": stores},
                    tuple(f"extract:{c}/{k}" for k in codecs), root / "analyses" / a.name / where,
                    (lambda s, x, a=a: run_analysis(s, x, a)), resumable=resumable, group=a.name,
                ))
    return steps, ctx


def json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
