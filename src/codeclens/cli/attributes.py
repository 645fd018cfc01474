"""``codeclens attributes train | analyse | resynthesise | convert``: the AnCoGen-Codec attribute model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import add_dataclass_args, from_args


@dataclasses.dataclass(frozen=True)
class UseConfig:
    """Options of the commands that use a trained model."""

    device: str = "auto"
    """Torch device (auto = CUDA when present)."""
    split: str = "auto"
    """Train/test split column (as in training): split_spk, split_utt or auto."""
    max_utts: int = 0
    """Test utterances analysed (0 = all)."""
    n_utts: int = 4
    """Test utterances resynthesised."""
    examples: int = 1
    """Utterances whose audio is saved."""
    max_seconds: float = 3.0
    """Seconds of each utterance resynthesised or converted."""
    seed: int = 0
    """Seed for choosing conversion targets."""

    def __post_init__(self):
        if self.max_utts < 0 or self.n_utts < 1 or self.examples < 0 or self.max_seconds <= 0:
            raise ValueError("need max_utts >= 0, n_utts >= 1, examples >= 0, max_seconds > 0")
        if self.split not in ("auto", "split_spk", "split_utt"):
            raise ValueError("split must be auto, split_spk or split_utt")


def add_parser(sub) -> None:
    from ..analyses.attributes.config import AttributesConfig

    p = sub.add_parser("attributes", help="AnCoGen-Codec attribute model: attributes from tokens, tokens from attributes",
                       description="A masked transformer between a codec's tokens and content, pitch, loudness and "
                                   "speaker-identity tokens (Sadok et al. 2025). Example: codeclens attributes train "
                                   "--store runs/store --out runs/attr; codeclens attributes analyse --store runs/store "
                                   "--checkpoint runs/attr --out runs/attr/analyse")
    s = p.add_subparsers(dest="attributes_cmd", metavar="ACTION", required=True)
    t = s.add_parser("train", help="train (or resume) the model on a store; the checkpoint goes to OUT/checkpoint")
    t.add_argument("--store", required=True, help="feature store directory")
    t.add_argument("--out", required=True, help="run directory (re-running resumes from OUT/checkpoint)")
    add_dataclass_args(t, AttributesConfig, skip={"n_utts", "examples", "max_seconds", "max_utts"})
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)
    for name, helptext, fn in (
        ("analyse", "attributes predicted from tokens, beside majority / mean baselines", run_analyse),
        ("resynthesise", "tokens regenerated from attributes, decoded, against the codec's own decode", run_resynthesise),
        ("convert", "voice conversion: one utterance's attributes with another speaker's identity", run_convert),
    ):
        q = s.add_parser(name, help=helptext)
        q.add_argument("--store", required=True, help="feature store directory")
        q.add_argument("--checkpoint", required=True, help="run directory of 'attributes train' (or its checkpoint/)")
        q.add_argument("--out", required=True, help="output directory")
        add_dataclass_args(q, UseConfig)
        if name == "convert":
            q.add_argument("--source", required=True, help="utterance id of the source (content, pitch, loudness)")
            q.add_argument("--target", required=True, help="utterance id of the target speaker, or a wav file")
        q.set_defaults(func=fn)


def _ckpt_dir(path: str) -> Path:
    p = Path(path)
    return p / "checkpoint" if (p / "checkpoint" / "checkpoint.json").is_file() else p


def _write_meta(out: Path, command: str, cfg, extra: dict) -> None:
    from ..util.atomic import write_json
    from ..util.provenance import provenance

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"command": f"attributes {command}", **dataclasses.asdict(cfg), **extra})
    write_json(out / "provenance.json", provenance())


def run_train(args) -> int:
    from ..analyses.attributes.config import AttributesConfig
    from ..analyses.attributes.fit import fit
    from ..store import Store
    from ..util.device import resolve_device

    cfg = from_args(AttributesConfig, args)
    store, out = Store(args.store), Path(args.out)
    _write_meta(out, "train", cfg, {"store": str(store.path)})
    ck, prep = fit(store, cfg, out / "checkpoint", resolve_device(cfg.device), not args.quiet, print)
    last = ck.history[-1]["loss"] if ck.history else float("nan")
    print(f"{out / 'checkpoint'}: {ck.step} steps, {len(prep.train_rows)} training utterances, last loss {last:.3f}")
    return 0


def _load(args):
    from ..analyses.attributes.fit import prepare
    from ..analyses.attributes.training import Checkpoint
    from ..store import Store
    from ..util.device import resolve_device

    cfg = from_args(UseConfig, args)
    store = Store(args.store)
    device = resolve_device(cfg.device)
    ck = Checkpoint.load(_ckpt_dir(args.checkpoint), device)
    ck.check_store(store)
    if args.attributes_cmd == "convert" and ck.identity is None:
        from ..errors import CodeclensError

        raise CodeclensError(f"{args.checkpoint}: the model has no identity stream, so it cannot convert voices "
                             "(train with identity in --attributes)")
    prep = prepare(store, ck.streams, cfg.split, device, _ckpt_dir(args.checkpoint).parent / "cache", ck)
    out = Path(args.out)
    _write_meta(out, args.attributes_cmd, cfg, {"store": str(store.path), "checkpoint": str(_ckpt_dir(args.checkpoint))})
    return cfg, store, device, ck, prep, out


def _csv(df, path: Path) -> None:
    from ..analyses.attributes.run import write_csv

    write_csv(df, path)


def run_analyse(args) -> int:
    from ..analyses.attributes.analyse import attribute_scores, codec_token_accuracy

    cfg, store, device, ck, prep, out = _load(args)
    rows = prep.test_rows[: cfg.max_utts] if cfg.max_utts else prep.test_rows
    utts = prep.utts(store, ck.streams, rows)
    scores = attribute_scores(ck, store, prep.train_rows, utts, device)
    _csv(scores, out / "analysis.csv")
    _csv(codec_token_accuracy(ck, utts, device), out / "token_accuracy.csv")
    print(scores[["attribute", "metric", "unit", "model", "baseline", "baseline_kind"]].to_string(index=False))
    return 0


def _resynth(args, src_rows, tgt_rows):
    from ..analyses.attributes.resynth import content_probe, load_store_codec, resynthesise_and_convert, summarise

    cfg, store, device, ck, prep, out = _load(args)
    codec = load_store_codec(store, device)
    sources = src_rows(prep, cfg)
    probe, said = content_probe(store, sources, cfg.seed, device)
    print(f"content retention: {said}" if probe is not None else f"no content retention: {said}")
    per = resynthesise_and_convert(ck, store, codec, prep.utts(store, ck.streams, sources),
                                   prep.utts(store, ck.streams, tgt_rows(store, prep, cfg)), prep.embeddings, device,
                                   cfg.max_seconds, cfg.examples, out / "audio", probe)
    _csv(per, out / "per_utterance.csv")
    summ = summarise(per)
    _csv(summ, out / "summary.csv")
    print(summ.to_string(index=False))
    return 0


def run_resynthesise(args) -> int:
    from ..analyses.attributes.resynth import choose_targets

    return _resynth(args, lambda prep, cfg: prep.test_rows[: cfg.n_utts],
                    lambda store, prep, cfg: choose_targets(store, prep.test_rows[: cfg.n_utts], prep.test_rows, cfg.seed))


def run_convert(args) -> int:
    from ..errors import CodeclensError

    def row_of(store, uid: str) -> int:
        ids = store.utterances["id"].astype(str).tolist()
        if uid not in ids:
            raise CodeclensError(f"{store.path}: no utterance '{uid}'")
        return ids.index(uid)

    if Path(args.target).suffix.lower() in (".wav", ".flac", ".ogg"):
        return _convert_to_file(args, row_of)
    args.examples = getattr(args, "examples", 1) or 1
    return _resynth(args, lambda prep, cfg: [row_of(_store(args), args.source)],
                    lambda store, prep, cfg: [row_of(store, args.target)])


def _store(args):
    from ..store import Store

    return Store(args.store)


def _convert_to_file(args, row_of) -> int:
    """Convert to the voice of an audio file (an unseen speaker: the identity stream is open-set)."""

    from ..analyses.ablate import measures as ms
    from ..analyses.ablate.run import decode_codes, original_audio
    from ..analyses.attributes.resynth import _write_wav, crop, generate, load_store_codec, speaker_reference
    from ..audio import load_audio

    cfg, store, device, ck, prep, out = _load(args)
    codec = load_store_codec(store, device)
    sr = int(codec.sample_rate)
    target, _ = load_audio(args.target, 16000)
    enc = ms.speaker_encoder(str(device))
    t_emb = enc.embed(target, 16000)
    (u,) = prep.utts(store, ck.streams, [row_of(store, args.source)])
    u = crop(u, max(1, int(round(cfg.max_seconds * store.frame_rate))))
    conv = decode_codes(codec, generate(ck, u, device, ck.identity(t_emb)).T)
    src = original_audio(store, u.row, sr, len(conv))
    src = src if src is not None else decode_codes(codec, u.codes.T)
    c_emb, s_emb = enc.embed(conv, sr), enc.embed(src, sr)
    # The source voice: its speaker's other utterances (the source utterance shares the words).
    s_ref, n_s = speaker_reference(store, prep.embeddings, str(store.utterances["speaker"].iloc[u.row]), [u.row])
    res = {"source": args.source, "target": args.target, "cos_target": ms.cosine(c_emb, t_emb),
           "cos_source": ms.cosine(c_emb, s_ref if s_ref is not None else s_emb),
           "cos_source_to_target": ms.cosine(s_emb, t_emb), "cos_source_utterance": ms.cosine(c_emb, s_emb),
           "source_ref_utts": max(n_s, 1)}
    _write_wav(out / "conversion.wav", conv, sr)
    (out / "conversion.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))
    return 0
