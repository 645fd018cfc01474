"""``codeclens label``: add label columns to an existing feature store.

The store's corpus is read again (from the spec recorded in its manifest), each
utterance's audio is loaded at the codec's sample rate, and the labellers run on
the store's own frame times, so the new columns line up with the stored codes
exactly as if they had been extracted together. Columns of the same name are
replaced. ``frames.parquet`` and ``utterances.parquet`` are each replaced
atomically and the manifest records the added labellers under ``added_labels``
(the extraction's own configuration is left alone, so re-running ``extract``
still finds the store up to date). A re-run simply recomputes the columns.

An utterance that can no longer be read, or whose labelling fails, gets missing
values (NaN / None / False / -1) and is listed in the manifest's ``label_problems``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import CodeclensError


def add_parser(sub) -> None:
    p = sub.add_parser("label", help="add label columns (f0, loudness, units...) to an existing store")
    p.add_argument("--store", required=True, help="feature store directory")
    p.add_argument("--labels", required=True,
                   help="labellers, comma-separated specs, e.g. f0,loudness or 'units?checkpoint=DIR&layer=6'")
    p.add_argument("--corpus", default=None, help="corpus spec to read audio from (default: the store's own)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_label)


def _missing_like(values: list[Any], n: int):
    """A column of n missing values, typed like the column's other values."""
    sample = next((v for v in values if v is not None), None)
    if sample is None:
        return np.full(n, None, dtype=object)
    kind = np.asarray(sample).dtype.kind
    if kind == "b":
        return np.zeros(n, dtype=bool)
    if kind in "iu":
        return np.full(n, -1, dtype=np.int64)
    if kind == "f":
        return np.full(n, np.nan)
    return np.full(n, None, dtype=object)


def label_store(store_dir: str, labels: str, corpus_spec: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Add the labellers' columns to the store; returns {'columns': [...], 'problems': [...]}."""
    from ..corpora import load_corpus
    from ..labels import load_labeller, parse_label_list
    from ..store import Store
    from ..store import layout
    from ..util.atomic import atomic_path, write_json

    st = Store(store_dir)
    specs = parse_label_list(labels)
    if not specs:
        raise CodeclensError("label: no labellers given")
    labellers = [load_labeller(s) for s in specs]
    corpus_spec = corpus_spec or (st.manifest.get("config") or {}).get("corpus")
    if not corpus_spec:
        # e.g. a store written from arrays: nothing says where its audio is
        raise CodeclensError(f"{store_dir}: the store does not record its corpus; give --corpus SPEC")
    corpus = load_corpus(corpus_spec)
    by_id = {u.id: u for u in corpus}
    utts_df = st.utterances
    frames = st.frames.copy()
    sr = int(st.codec["sample_rate"])
    fr = float(st.frame_rate)
    wanted = [by_id[i] for i in utts_df["id"].astype(str) if i in by_id]
    for lb in labellers:
        lb.fit(wanted)

    utt_of_frame = frames["utt"].to_numpy()
    order = np.argsort(utt_of_frame, kind="stable")
    bounds = np.searchsorted(utt_of_frame[order], np.arange(len(utts_df) + 1))
    frame_cols: dict[str, list[Any]] = {}
    utt_cols: dict[str, list[Any]] = {}
    problems: list[dict[str, str]] = []
    per_utt_frames: list[dict[str, Any] | None] = []
    per_utt_row: list[dict[str, Any] | None] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(utts_df), unit="utt", desc="label", dynamic_ncols=True)
    for j, uid in enumerate(utts_df["id"].astype(str)):
        rows = order[bounds[j]:bounds[j + 1]]
        times = frames["time"].to_numpy()[rows]
        fcols: dict[str, Any] = {}
        ucols: dict[str, Any] = {}
        try:
            if uid not in by_id:
                raise CodeclensError(f"utterance {uid} is no longer in corpus '{corpus.spec}'")
            u = by_id[uid]
            audio, _ = u.load(sr)
            for lb in labellers:
                fcols.update(lb.frame_labels(u, audio, sr, times, fr))
                ucols.update(lb.utterance_labels(u, audio, sr))
            per_utt_frames.append(fcols)
            per_utt_row.append(ucols)
        except CodeclensError as e:
            problems.append({"id": uid, "error": str(e)})
            per_utt_frames.append(None)
            per_utt_row.append(None)
        for k in fcols:
            frame_cols.setdefault(k, [])
        for k in ucols:
            utt_cols.setdefault(k, [])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if all(f is None for f in per_utt_frames):
        raise CodeclensError(f"{store_dir}: no utterance could be labelled ({problems[0]['error'] if problems else ''})")

    for name in frame_cols:
        samples = [f[name][0] for f in per_utt_frames if f is not None and name in f and len(f[name])]
        parts = []
        for j, f in enumerate(per_utt_frames):
            n = int(bounds[j + 1] - bounds[j])
            parts.append(np.asarray(f[name]) if f is not None and name in f else _missing_like(samples, n))
        if any(p.dtype == object for p in parts):
            parts = [p.astype(object) for p in parts]
        col = np.concatenate(parts) if parts else np.zeros(0)
        out = np.empty(len(frames), dtype=col.dtype)
        out[order[: len(col)]] = col
        frames[name] = out
    utts_new = utts_df.copy()
    for name in utt_cols:
        vals = [r.get(name) if r is not None else None for r in per_utt_row]
        utts_new[name] = pd.Series(vals, index=utts_new.index)
        if all(isinstance(v, (float, int)) or v is None for v in vals):
            utts_new[name] = pd.to_numeric(utts_new[name], errors="coerce")

    with atomic_path(st.path / layout.FRAMES, ".parquet") as tmp:
        frames.to_parquet(tmp, index=False)
    with atomic_path(st.path / layout.UTTERANCES, ".parquet") as tmp:
        utts_new.to_parquet(tmp, index=False)
    mf = dict(st.manifest)
    mf["added_labels"] = list(mf.get("added_labels", [])) + [lb.describe() for lb in labellers]
    mf["label_problems"] = list(mf.get("label_problems", [])) + problems
    write_json(st.path / layout.MANIFEST, mf)
    return {"columns": list(frame_cols) + list(utt_cols), "problems": problems}


def run_label(args) -> int:
    res = label_store(args.store, args.labels, args.corpus, progress=not args.quiet)
    print(f"{args.store}: added {', '.join(res['columns']) or '(no columns)'}"
          + (f"; {len(res['problems'])} utterance(s) could not be labelled" if res["problems"] else ""))
    return 0
