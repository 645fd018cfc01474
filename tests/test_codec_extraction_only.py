"""Extraction-only codec loads (``load_codec(spec, extraction_only=True)``): no decoder in
memory, the very codes of the full load, and a one-line refusal to decode.

Each covered codec is built small with random weights, saved, and reloaded through the
ordinary loader both ways, as a real checkpoint would be.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from codeclens.codecs import load_codec
from codeclens.codecs._extraction import DroppedModule
from codeclens.codecs.calibration import calibration_audio
from codeclens.codecs.testing import random_spec, reload_spec
from codeclens.errors import CodeclensError

COVERED = {
    "speechtokenizer": "speechtokenizer?size=tiny",
    "encodec24": "encodec:24khz@6kbps?size=tiny",
    "encodec48": "encodec:48khz@3kbps?size=tiny",
    "dac16": "dac:16khz?size=tiny",
    "mimi": "mimi?size=tiny&layers=6",
}
#: Keys of a full model's state that an extraction-only load folds away: weight norm's
#: magnitude (its direction ``v`` becomes the plain weight, of the same size).
WEIGHT_NORM_G = ("weight_g", "parametrizations.weight.original0")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> spec reloading a saved random checkpoint; built lazily, once."""
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            built = load_codec(random_spec(COVERED[name], seed=0), "cpu")
            out = tmp_path_factory.mktemp(f"ckpt-{name}")
            built.save(out)
            cache[name] = reload_spec(COVERED[name], out)
        return cache[name]

    return get


def _batch(sr: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two speech-like utterances of different lengths (2.3 s and 1.1 s, not whole frames)."""
    a = calibration_audio(sr, 2.3, 3)
    b = calibration_audio(sr, 1.1, 4)
    x = np.zeros((2, len(a)), np.float32)
    x[0], x[1, : len(b)] = a, b
    return torch.from_numpy(x), torch.tensor([len(a), len(b)])


@pytest.mark.parametrize("name", list(COVERED))
def test_extraction_only_load_gives_the_full_loads_codes_latent_and_tables(name, saved):
    spec = saved(name)
    full, ex = load_codec(spec, "cpu"), load_codec(spec, "cpu", extraction_only=True)
    assert ex.extraction_only and not full.extraction_only
    x, n = _batch(full.sample_rate)
    codes_f, nf_f = full.encode(x, n)
    codes_e, nf_e = ex.encode(x, n)
    assert torch.equal(nf_e, nf_f)
    assert torch.equal(codes_e, codes_f)  # bit-identical, not close
    assert len(torch.unique(codes_f[0, 0, : nf_f[0]])) > 10  # real codes, not one repeated row
    lat_f, lat_e = full.latent(x, n)[0], ex.latent(x, n)[0]
    assert torch.equal(lat_e, lat_f)
    assert all(torch.equal(a, b) for a, b in zip(ex.tables(), full.tables()))
    assert torch.equal(ex.quantized(codes_e), full.quantized(codes_f))
    assert ex.describe() == full.describe()  # the store's record of the codec does not change


@pytest.mark.parametrize("name", list(COVERED))
def test_extraction_only_load_holds_no_decoder_and_no_weight_norm_copies(name, saved):
    spec = saved(name)
    full, ex = load_codec(spec, "cpu"), load_codec(spec, "cpu", extraction_only=True)
    assert isinstance(ex.model.decoder, DroppedModule)
    state_f, state_e = full.model.state_dict(), ex.model.state_dict()
    assert not [k for k in state_e if k.startswith("decoder.")]
    assert not [k for k in state_e if k.endswith(WEIGHT_NORM_G) or "parametrizations" in k or k.endswith("weight_v")]
    # What is left is exactly the full model outside its decoder, each weight-normed conv as one plain weight.
    # (A SpeechTokenizer checkpoint load also leaves out its codebooks' training-only EMA sums.)
    training_only = ("._codebook.embed_avg",) if name == "speechtokenizer" else ("no such key",)
    kept = sum(v.numel() for k, v in state_f.items() if not k.startswith("decoder.") and not k.endswith(WEIGHT_NORM_G)
               and not k.endswith(training_only))
    assert sum(v.numel() for v in state_e.values()) == kept
    decoder = sum(p.numel() for p in full.model.decoder.parameters())
    assert decoder > 0.1 * sum(p.numel() for p in full.model.parameters())  # the saving is real, not a rounding
    # Weights stay parameters (not buffers) and none is left on the meta device.
    kept_params = sum(p.numel() for k, p in full.model.named_parameters()
                      if not k.startswith("decoder.") and not k.endswith(WEIGHT_NORM_G))
    assert sum(p.numel() for p in ex.model.parameters()) == kept_params
    assert not any(t.is_meta for t in list(ex.model.parameters()) + list(ex.model.buffers()))


@pytest.mark.parametrize("name", list(COVERED))
def test_decoding_an_extraction_only_load_is_a_one_line_error(name, saved):
    spec = saved(name)
    ex = load_codec(spec, "cpu", extraction_only=True)
    x, n = _batch(ex.sample_rate)
    codes, _ = ex.encode(x, n)
    calls = [lambda: ex.decode(codes), lambda: ex.decode(codes, layers=[0]),
             lambda: ex.decode_quantized(ex.quantized(codes)), lambda: ex.reference_decode(codes),
             lambda: ex.save("/nonexistent/never-written")]
    for call in calls:
        with pytest.raises(CodeclensError, match="extraction only") as e:
            call()
        assert "\n" not in str(e.value)
    with pytest.raises(CodeclensError, match="not loaded") as e:  # even past the adapter, straight into the model
        ex.model.decoder(torch.zeros(1, ex.dim, 4))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["speechtokenizer", "encodec24", "dac16", "mimi"])
def test_random_init_for_extraction_is_the_same_model_without_its_decoder(name):
    spec = str(random_spec(COVERED[name], seed=3))
    full, ex = load_codec(spec, "cpu"), load_codec(spec, "cpu", extraction_only=True)
    assert ex.extraction_only and isinstance(ex.model.decoder, DroppedModule)
    x, n = _batch(full.sample_rate)
    assert torch.equal(ex.encode(x, n)[0], full.encode(x, n)[0])
    assert all(torch.equal(a, b) for a, b in zip(ex.tables(), full.tables()))


def test_speechtokenizer_torch_pickle_loads_for_extraction_reading_only_kept_keys(saved, tmp_path):
    from safetensors.torch import load_file

    src = saved("speechtokenizer").split("checkpoint=")[1]
    state = load_file(f"{src}/speechtokenizer.safetensors")
    cfg = (tmp_path / "config.json")
    cfg.write_text(open(f"{src}/config.json").read())
    torch.save(state, tmp_path / "SpeechTokenizer.pt")
    spec = f"speechtokenizer?checkpoint={tmp_path}/SpeechTokenizer.pt"
    full, ex = load_codec(spec, "cpu"), load_codec(spec, "cpu", extraction_only=True)
    x, n = _batch(16000)
    assert torch.equal(ex.encode(x, n)[0], full.encode(x, n)[0])
    # An encoder-only export (no decoder keys at all) is enough for extraction...
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "config.json").write_text(cfg.read_text())
    torch.save({k: v for k, v in state.items() if not k.startswith("decoder.")}, enc / "enc.pt")
    ex2 = load_codec(f"speechtokenizer?checkpoint={enc}", "cpu", extraction_only=True)
    assert torch.equal(ex2.encode(x, n)[0], full.encode(x, n)[0])
    # ...but a key the encoder needs, or one the model does not have, is refused as in a full load.
    for bad, edit in (("missing", lambda s: s.pop("encoder.model.0.conv.conv.weight_v")),
                      ("unexpected", lambda s: s.__setitem__("encoder.bogus", torch.zeros(2)))):
        s = dict(state)
        edit(s)
        d = tmp_path / bad
        d.mkdir()
        (d / "config.json").write_text(cfg.read_text())
        torch.save(s, d / "w.pt")
        with pytest.raises(CodeclensError, match=bad) as e:
            load_codec(f"speechtokenizer?checkpoint={d}", "cpu", extraction_only=True)
        assert "\n" not in str(e.value)


def test_a_checkpoint_of_another_size_is_refused_for_extraction(saved, tmp_path):
    src = saved("speechtokenizer").split("checkpoint=")[1]
    d = tmp_path / "wider"
    d.mkdir()
    cfg = json.loads(open(f"{src}/config.json").read())
    cfg["n_filters"] = 8
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "speechtokenizer.safetensors").symlink_to(f"{src}/speechtokenizer.safetensors")
    with pytest.raises(CodeclensError, match="does not match the architecture") as e:
        load_codec(f"speechtokenizer?checkpoint={d}", "cpu", extraction_only=True)
    assert "\n" not in str(e.value)


def test_other_codecs_fall_back_to_the_full_load(melrvq_dir):
    codec = load_codec(f"melrvq?checkpoint={melrvq_dir}", "cpu", extraction_only=True)
    assert not codec.extraction_only
    x, n = _batch(codec.sample_rate)
    codes, _ = codec.encode(x, n)
    assert codec.decode(codes).shape[0] == 2  # a full load decodes


def _same_store(a, b) -> None:
    import pandas as pd

    from codeclens.store import Store

    sa, sb = Store(a), Store(b)
    np.testing.assert_array_equal(sa.codes, sb.codes)
    pd.testing.assert_frame_equal(sa.utterances, sb.utterances)
    pd.testing.assert_frame_equal(sa.frames, sb.frames)
    for ta, tb in zip(sa.tables, sb.tables, strict=True):
        np.testing.assert_array_equal(ta, tb)
    run_only = {"started", "finished", "seconds_elapsed", "config", "versions", "host", "timestamp", "git", "command",
                "python", "cpu", "elapsed", "name"}
    assert {k: v for k, v in sa.manifest.items() if k not in run_only} == \
        {k: v for k, v in sb.manifest.items() if k not in run_only}


def _extract(corpus, spec, out, engine=None):
    from codeclens.store.writer import ExtractConfig, extract

    cfg = ExtractConfig(corpus=str(corpus), codec=spec, out=str(out), labels=("loudness",), shard_size=2,
                        batch_seconds=3.0, device="cpu")
    return extract(cfg, progress=False, log=lambda m: None, engine=engine)


@pytest.mark.parametrize("name", ["speechtokenizer", "encodec24"])
def test_local_engine_store_from_the_extraction_only_load_equals_the_full_loads(name, saved, audio_folder, tmp_path):
    """The local engine encodes with the codec the writer loaded (extraction-only); the same
    engine, handed a full load instead, must write the same store."""
    from codeclens.store.writer import run_shards_in_process

    spec = saved(name)
    seen = []

    def as_loaded(jobs, codec, *rest):
        seen.append(codec.extraction_only)
        run_shards_in_process(jobs, codec, *rest)

    def with_full_load(jobs, codec, *rest):
        run_shards_in_process(jobs, load_codec(spec, "cpu"), *rest)

    _extract(audio_folder, spec, tmp_path / "lean", engine=as_loaded)
    _extract(audio_folder, spec, tmp_path / "full", engine=with_full_load)
    assert seen == [True]  # extraction did use the extraction-only load
    _same_store(tmp_path / "lean", tmp_path / "full")


def test_ray_engine_store_from_extraction_only_actors_equals_the_full_loads(saved, audio_folder, tmp_path):
    """The Ray engine's codec actors load for extraction; their store is the one a full load writes."""
    pytest.importorskip("ray.data")
    from codeclens.store.writer import ExtractConfig, extract, run_shards_in_process

    spec = saved("speechtokenizer")

    def with_full_load(jobs, codec, *rest):
        run_shards_in_process(jobs, load_codec(spec, "cpu"), *rest)

    _extract(audio_folder, spec, tmp_path / "full", engine=with_full_load)
    cfg = ExtractConfig(corpus=str(audio_folder), codec=spec, out=str(tmp_path / "ray"), labels=("loudness",),
                        shard_size=2, batch_seconds=3.0, device="cpu", engine="ray", workers=1)
    extract(cfg, progress=False, log=lambda m: None)
    _same_store(tmp_path / "ray", tmp_path / "full")


def test_speechtokenizer_full_load_is_the_saved_model_built_on_meta(saved):
    """The full load builds on the meta device too (so a built model's random weights and the
    file's are never both in memory), folds the package's weight norm and drops the codebooks' EMA
    sums: every tensor is the saved one or, for a weight-normed convolution, the product its hook
    computes; nothing is left on meta or hooked; it encodes and decodes bit for bit as the model that
    was saved; and it holds less (the hooks kept each computed weight beside its two factors)."""
    from torch.nn.utils.weight_norm import WeightNorm

    built = load_codec(random_spec(COVERED["speechtokenizer"], seed=0), "cpu")
    full = load_codec(saved("speechtokenizer"), "cpu")
    assert full.folded and not built.folded
    want, got = built.model.state_dict(), full.model.state_dict()
    normed = {k[: -len("_v")] for k in want if k.endswith(".weight_v")}
    assert normed, "the package's convolutions are weight-normed"
    assert set(got) == {k for k in want if not k.endswith(("_g", "_v", "embed_avg"))} | normed
    for k in got:
        assert not got[k].is_meta, k
        ref = torch._weight_norm(want[k + "_v"], want[k + "_g"], 0) if k in normed else want[k]
        assert torch.equal(got[k], ref), k
    assert not any(isinstance(h, WeightNorm) for m in full.model.modules() for h in m._forward_pre_hooks.values())
    x, lengths = _batch(full.sample_rate)
    codes = built.encode(x, lengths)
    assert torch.equal(full.encode(x, lengths)[0], codes[0])
    assert torch.equal(full.decode(codes[0][:1]), built.decode(codes[0][:1]))
    held = lambda c: sum(t.numel() for m in c.model.modules() for t in [*m._parameters.values(), *m._buffers.values(),
                                                                       *(v for v in vars(m).values() if isinstance(v, torch.Tensor))]
                         if t is not None)
    assert held(full) < held(built)
    with pytest.raises(CodeclensError, match="folded"):
        full.save(Path(saved("speechtokenizer").split("checkpoint=")[1]).parent / "again")


# -- memory of the extraction-only load and of extraction (docs/benchmarks.md, third round) --

def test_safetensors_reader_gives_the_files_tensors_in_memory_of_their_own(tmp_path):
    """Every dtype and shape as ``safe_open`` reads it, none of it a view of the file's mapping
    (a mapping kept alive by one tensor keeps every page read from it resident)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from codeclens.codecs._extraction import read_safetensors, read_safetensors_header

    g = torch.Generator().manual_seed(0)
    planted = {
        "f32": torch.randn(3, 5, generator=g), "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 2, generator=g).bfloat16(), "f64": torch.randn(4, generator=g).double(),
        "i64": torch.arange(6).reshape(2, 3), "i16": torch.tensor([-3, 7], dtype=torch.int16),
        "u8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "w.safetensors"
    save_file(planted, str(path), metadata={"format": "pt"})
    header, start = read_safetensors_header(path, "test")
    got = read_safetensors(path, header, start)
    with safe_open(str(path), framework="pt") as f:
        assert set(got) == set(f.keys()) == set(planted)
        for k in planted:
            ref = f.get_tensor(k)
            assert got[k].dtype == ref.dtype and got[k].shape == ref.shape, k
            assert torch.equal(got[k], ref), k
    assert not _mapped_from(path, got.values())


def _mapped_from(path, tensors) -> list[int]:
    """Data pointers of ``tensors`` that lie in a mapping of the file ``path`` (Linux)."""
    import os

    spans = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 5 and os.path.realpath(parts[5]) == os.path.realpath(path):
                a, b = (int(x, 16) for x in parts[0].split("-"))
                spans.append((a, b))
    ptrs = [t.data_ptr() for t in tensors if t.numel()]
    return [p for p in ptrs if any(a <= p < b for a, b in spans)]


def test_speechtokenizer_extraction_load_holds_no_view_of_the_checkpoint_file(saved):
    from pathlib import Path

    from codeclens.spec import parse_spec

    spec = saved("speechtokenizer")
    lean = load_codec(spec, "cpu", extraction_only=True)
    path = next(Path(parse_spec(spec).get("checkpoint")).glob("*.safetensors"))
    tensors = list(lean.model.parameters()) + list(lean.model.buffers())
    assert tensors and not _mapped_from(path, tensors)


@pytest.mark.parametrize("name", ["speechtokenizer", "encodec24"])
def test_encode_with_latent_is_encode_and_latent_bit_for_bit(name, saved):
    """SpeechTokenizer quantizes the latent of its one encoder pass; EnCodec takes the two
    passes. Either way the very codes and latent of separate ``encode`` and ``latent`` calls."""
    codec = load_codec(saved(name), "cpu", extraction_only=True)
    x, lengths = _batch(codec.sample_rate)
    codes, n, lat, n_lat = codec.encode_with_latent(x, lengths)
    want_codes, want_n = codec.encode(x, lengths)
    want_lat, want_n_lat = codec.latent(x, lengths)
    assert torch.equal(codes, want_codes) and torch.equal(n, want_n)
    assert torch.equal(lat, want_lat) and torch.equal(n_lat, want_n_lat)


def test_speechtokenizer_store_codes_and_latent_are_the_separate_passes(saved, audio_folder, tmp_path):
    """The store written from one encoder pass holds what ``encode`` and ``latent`` give each
    utterance alone (the computation extraction made before: two passes)."""
    from codeclens.corpora import load_corpus
    from codeclens.store.writer import ExtractConfig, extract

    spec = saved("speechtokenizer")
    cfg = ExtractConfig(corpus=str(audio_folder), codec=spec, out=str(tmp_path / "s"), labels=("loudness",),
                        shard_size=2, batch_seconds=3.0, device="cpu", latent=True)
    out = extract(cfg, progress=False, log=lambda m: None)
    codec = load_codec(spec, "cpu", extraction_only=True)
    codes, lats = [], []
    for u in load_corpus(str(audio_folder)):
        try:
            a, _ = u.load(codec.sample_rate)
        except Exception:  # noqa: BLE001 - the corrupt file, skipped by extraction too
            continue
        x, n = torch.from_numpy(a)[None], torch.tensor([len(a)])
        with torch.inference_mode():
            c, k = codec.encode(x, n)
            z, _ = codec.latent(x, n)
        codes.append(c[0, :, : int(k[0])].T.numpy().astype(np.int16))
        lats.append(z[0, : int(k[0])].float().numpy().astype(np.float16))
    np.testing.assert_array_equal(np.load(out / "codes.npy"), np.concatenate(codes))
    np.testing.assert_array_equal(np.load(out / "latent.npy"), np.concatenate(lats))
