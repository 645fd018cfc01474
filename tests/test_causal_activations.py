"""Activation patching inside the decoder, on decoders whose wiring is known: the toy of
``causal_toy_decoder`` (layer 1 -> spectrum path, layer 3 -> pitch path, merged after; layers 2
and 4 ignored) and a real DAC architecture with random weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from codeclens.analyses.causal import activations as A
from codeclens.analyses.causal.decoder import decode
from codeclens.cli import main
from codeclens.store import Store
from codeclens.store.arrays import write_store

TOY = "python:causal_toy_decoder:BlockPitchSpectrumCodec"


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    """5 speakers (4 held out) x 2 sentences of 20 frames; layer-1 and layer-3 codes constant over runs of 5."""
    rng = np.random.default_rng(3)
    rows, codes = [], []
    for s in range(5):
        for sent in range(2):
            c = rng.integers(0, 8, size=(20, 4))
            c[:, 0] = np.repeat(rng.integers(0, 8, size=4), 5)
            c[:, 2] = np.repeat(rng.permutation(8)[:4], 5)
            codes.append(c)
            rows.append({"id": f"s{s}_{sent}", "speaker": f"s{s}", "sentence": sent, "n_frames": 20})
    u = pd.DataFrame(rows)
    u["split_spk"] = np.where(u["speaker"] == "s0", "train", "test")
    u["split_utt"] = "test"
    path = tmp_path_factory.mktemp("toyblocks") / "store"
    tabs = [np.eye(32, dtype=np.float32)[8 * l:8 * (l + 1)] for l in range(4)]
    write_store(path, np.concatenate(codes), tabs, u, codec_spec=TOY, name="toy", sample_rate=16000)
    return Store(path)


def _codec():
    from codeclens.codecs import load_codec

    return load_codec(TOY, "cpu")


def test_blocks_time_axes_and_windows(one_torch_thread):
    codec = _codec()
    blocks = A.decoder_blocks(codec)
    assert [n for n, _ in blocks] == ["spectrum", "pitch", "merge", "upsample", "synth", "out"]
    # the default discovery (no decoder_blocks hook) keeps the blocks with parameters
    assert [n for n, _ in A.default_blocks(codec.decoder)] == ["spectrum", "pitch", "merge", "out"]
    codes = np.random.default_rng(0).integers(0, 8, size=(10, 4))
    axes = A.time_axes(codec, blocks, codes)
    assert axes == {n: 2 for n, _ in blocks}  # [B, C, time]: frames for the first three, samples after
    # frames 4-6 map to samples 1280-1920 of the sample-rate blocks: a window patch of the output
    # block (no memory) replaces exactly those samples; of the upsampled F0 (the synth's phase
    # carries on), it changes nothing before them
    donor = np.random.default_rng(1).integers(0, 8, size=(10, 4))
    clean = decode(codec, codes)
    with A.recording(blocks) as acts:
        don = decode(codec, donor)
    with A.patching(dict(blocks)["out"], acts["out"], (4, 6), axes["out"], 10):
        part = decode(codec, codes)
    inside = np.zeros(len(clean), bool)
    inside[4 * 320:6 * 320] = True
    assert np.array_equal(part[inside], don[inside]) and np.array_equal(part[~inside], clean[~inside])
    with A.patching(dict(blocks)["upsample"], acts["upsample"], (4, 6), axes["upsample"], 10):
        part = decode(codec, codes)
    assert np.flatnonzero(part != clean).min() == 4 * 320
    assert [w[0] for w in A.windows(10, 3)] == ["all", "1/3", "2/3", "3/3"] and A.windows(10, 3)[-1][1:] == (7, 10)
    assert A.layer_sets(4)[-1] == ("1-4", [0, 1, 2, 3])


def test_real_decoder_full_patch_reproduces_donor(one_torch_thread):
    """DAC (random weights): q feeds a sequential stack, so patching the whole output of any
    block from the donor run reproduces the donor's decode exactly; no patch, no change."""
    from codeclens.codecs import load_codec

    codec = load_codec("dac:16khz?size=tiny&random_init=1", "cpu")
    blocks = A.decoder_blocks(codec)
    names = [n for n, _ in blocks]
    assert names[0] == "conv1" and "block.0" in names and names[-1] == "conv2" and "tanh" not in names
    rng = np.random.default_rng(0)
    codes, donor = rng.integers(0, 1024, size=(2, 6, codec.n_layers))
    clean = decode(codec, codes)
    with A.recording(blocks) as acts:
        don = decode(codec, donor)
    with A.recording(blocks) as own:
        decode(codec, codes)
    for name in (names[0], names[len(names) // 2], names[-1]):
        with A.patching(dict(blocks)[name], acts[name]):
            assert np.array_equal(decode(codec, codes), don)
        with A.patching(dict(blocks)[name], own[name]):  # patching in the clean run's own activation
            assert np.array_equal(decode(codec, codes), clean)
    assert np.array_equal(decode(codec, codes), clean)  # hooks are gone


def test_block_layer_map_knows_the_wiring(toy_store, tmp_path, capsys, monkeypatch, one_torch_thread):
    import codeclens.analyses.causal.run as run

    calls = []
    monkeypatch.setattr(run, "mean_codes", lambda *a: calls.append(1) or A_mean(*a))
    out = tmp_path / "causal"
    rc = main(["causal", "--store", str(toy_store.path), "--out", str(out), "--consumers",
               "python:causal_toy:FirstLayerConsumer", "--n-utts", "2", "--measures", "loudness",
               "--absent", "drop", "--interchange-sets", "", "--modes", "drop", "--offsets", "0",
               "--activations", "--activation-windows", "2", "--n-boot", "100", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert len(calls) == 1  # the store's mean codes are computed once, for consumers and decoder alike
    per = pd.read_csv(out / "activation_per_utterance.csv", dtype={"layers": str})
    whole = per[per["window"] == "all"]
    cell = whole.groupby(["block", "layers"])
    # the ignored layers: exactly no effect, in every block and window
    ign = per[per["layers"].isin(["2", "4"])]
    assert len(ign) and (ign[["rms_change", "loudness", "f0_follows_donor", "spectrum_follows_donor"]].fillna(0) == 0).all().all()
    assert not ign["decoded"].any() and per.loc[per["layers"] == "3", "decoded"].sum() > 0
    # pitch (layer 3) passes through the pitch path and every block after the merge, never the spectrum path
    f0 = cell["f0_follows_donor"].mean()
    for b in ("pitch", "merge", "upsample", "synth", "out"):
        assert f0[(b, "3")] > 0.9, b
    assert (whole.loc[(whole["block"] == "spectrum") & (whole["layers"] == "3"), "rms_change"] == 0).all()
    assert (whole.loc[(whole["block"] == "pitch") & (whole["layers"] == "1"), "rms_change"] == 0).all()
    spec = cell["spectrum_follows_donor"].mean()
    assert spec[("spectrum", "1")] == 1.0 and spec[("pitch", "3")] == 0.0
    # the last block's full activation from the all-layers donor run is the donor decode, exactly
    assert (whole.loc[whole["block"] == "out", "rms_to_donor"] == 0).all()
    assert (whole.loc[(whole["block"] == "out") & (whole["layers"] == "3"), "rms_change"] > 0).all()
    # the first half-utterance window of a block on the pitch path or after the merge: the
    # decode is the donor-3 run's in that half (the phase starts at 0 in both), not after it
    half = per[(per["window"] == "1/2") & (per["layers"] == "3") & (per["block"] != "spectrum")]
    assert len(half) == 2 * 5 and (half["rms_to_donor_in_window"] < 1e-6).all() and (half["rms_to_donor"] > 0).all()
    assert (per.loc[(per["window"] == "2/2") & (per["block"] == "out") & (per["layers"] == "3"), "rms_to_donor_in_window"] == 0).all()
    table = pd.read_csv(out / "activation_patching.csv", dtype={"layers": str})
    assert {"ci_low", "ci_high", "p_holm", "n_speakers"} <= set(table.columns)
    t = table[(table["window"] == "all") & (table["measure"] == "f0_follows_donor")].set_index(["block", "layers"])
    assert t.loc[("merge", "3"), "ci_low"] > 0.5 and t.loc[("spectrum", "3"), "value"] == 0
    assert t.loc[("merge", "3"), "n_speakers"] == 2
    assert (out / "activation_patching.png").is_file()
    assert "toy: activation patching" in capsys.readouterr().out
    from codeclens.report.rerender import RENDERERS

    assert "activation_patching.png" in {p.name for p in RENDERERS["causal"](out)}


def test_summary_names_the_first_block_that_carries_a_layer():
    rows = []
    for bi, b in enumerate(["a", "b", "c"]):
        for lay in ("1", "2", "1-2"):
            sig = lay == "1" and bi >= 1
            rows.append({"block_index": bi + 1, "block": b, "layers": lay, "window": "all", "measure": "f0_kept",
                         "value": -0.5 if sig else 0.0, "ci_low": -0.7 if sig else -0.1, "ci_high": -0.3 if sig else 0.1,
                         "p_holm": 0.01 if sig else 1.0})
    lines = A.summarise("x", pd.DataFrame(rows))
    assert lines == ["x: activation patching, f0_kept: layer 1 from block 2 'b' (-0.5 [-0.7, -0.3])."]
    none = pd.DataFrame(rows).assign(p_holm=1.0)
    assert "no decoder block carries" in A.summarise("x", none)[0]


def A_mean(*a):
    from codeclens.analyses.causal.patching import mean_codes

    return mean_codes(*a)


def test_config_checks(toy_store, tmp_path, capsys):
    assert main(["causal", "--store", str(toy_store.path), "--out", str(tmp_path / "x"), "--activations",
                 "--no-decoder", "--consumers", "speaker"]) == 2
    assert "activations needs decoder" in capsys.readouterr().err
    assert main(["causal", "--store", str(toy_store.path), "--out", str(tmp_path / "x"),
                 "--activation-windows", "0"]) == 2
