"""The built-in BigCodec adapter: contract, reference cross-check, release layout, errors.

Known answers: the adapter invariants (which hold by construction, so a failure is a
bug); the ``bigcodec`` PyPI package's own modules (a copy of the authors' release code)
given the same weights, which must produce identical codes and decodes; the released
architecture's published parameter count (159M, Xin et al. 2024) and the release's
``inference.py`` code path (``CodecEncoder().load_state_dict(ckpt["CodecEnc"])``) applied
to our saved checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from codeclens.cli import main
from codeclens.codecs import load_codec
from codeclens.codecs.calibration import calibration_audio
from codeclens.codecs.check import batch_of, run_checks
from codeclens.codecs.testing import reload_spec
from codeclens.errors import CodeclensError

TINY = "bigcodec?size=tiny"
RELEASE = Path(__file__).parent / "release_configs" / "bigcodec.json"
ALL_CHECKS = ["frame rate", "frame count", "lookup = quantized", "decode = model decode", "dropped layers",
              "batch independence"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(random tiny codec as built, spec that reloads it from its saved checkpoint)."""
    built = load_codec(f"{TINY}&random_init=1&calibration=4", "cpu")
    out = tmp_path_factory.mktemp("bigcodec-tiny")
    built.save(out)
    return built, reload_spec(TINY, out)


@pytest.fixture(scope="module")
def codec(saved):
    return load_codec(saved[1], "cpu")


def _speech(seconds: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(calibration_audio(16000, seconds, seed))


def _reference_modules():
    """The ``bigcodec`` package's ``modules`` (it imports torchaudio, unused by the model)."""
    pytest.importorskip("einops")
    from test_codec_reference import _torchaudio_stub

    try:
        with _torchaudio_stub():
            import bigcodec.modules as modules
    except ImportError:
        pytest.skip("the bigcodec package is not installed")
    return modules


def _reference_pair(modules, ckpt: Path, cfg=None):
    """The release's inference.py: build CodecEncoder / CodecDecoder, load ckpt's nested dicts."""
    kw_enc, kw_dec = {}, {}
    if cfg is not None:
        kw_enc = dict(ngf=cfg.ngf, rnn_num_layers=cfg.rnn_num_layers, up_ratios=cfg.up_ratios, dilations=cfg.dilations,
                      out_channels=cfg.latent_dim)
        kw_dec = dict(in_channels=cfg.latent_dim, upsample_initial_channel=cfg.decoder_channels, ngf=cfg.ngf,
                      rnn_num_layers=cfg.rnn_num_layers, up_ratios=tuple(reversed(cfg.up_ratios)), dilations=cfg.dilations,
                      vq_dim=cfg.latent_dim, codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    enc, dec = modules.CodecEncoder(**kw_enc), modules.CodecDecoder(**kw_dec)
    enc.load_state_dict(state["CodecEnc"])  # strict, as inference.py
    dec.load_state_dict(state["generator"])
    return enc.eval(), dec.eval()


def test_rates_layers_and_the_saved_release_layout(saved, codec):
    built, spec = saved
    assert "checkpoint=" in spec and "random_init" not in spec
    assert (codec.sample_rate, codec.frame_rate, codec.n_layers, codec.codebook_sizes) == (16000, 80.0, 1, [8192])
    assert codec.hop == 200 and codec.dim == 32
    ckpt = Path(spec.split("checkpoint=")[1])
    state = torch.load(ckpt / "bigcodec.pt", weights_only=True)
    assert set(state) == {"CodecEnc", "generator"}
    # The release's weight-norm keys (old torch.nn.utils.weight_norm), not parametrizations.
    assert "block.0.weight_g" in state["CodecEnc"] and "quantizer.layers.0._codebook.weight" in state["generator"]
    assert not any("parametrizations" in k for part in state.values() for k in part)
    assert torch.equal(built.tables()[0], codec.tables()[0])
    x = _speech(0.5, 3)
    assert torch.equal(built.encode(*batch_of([x]))[0], codec.encode(*batch_of([x]))[0])
    # The weights file itself loads too (config.json beside it).
    again = load_codec(f"bigcodec?checkpoint={ckpt}/bigcodec.pt", "cpu")
    assert torch.equal(again.tables()[0], codec.tables()[0])


def test_every_check_passes(codec):
    results = run_checks(codec, seconds=0.6, seed=2)
    assert [r for r in results if r.passed is False] == []
    assert set(ALL_CHECKS) <= {r.name for r in results if r.passed}


def test_table_is_the_codebook_through_out_proj(codec):
    vq = codec.model.decoder.quantizer.layers[0]
    with torch.no_grad():
        want = vq.out_proj(vq.codebook.weight)  # bias included
    assert codec.tables()[0].shape == (8192, 32)
    assert torch.allclose(codec.tables()[0], want, atol=1e-6)
    assert float(vq.out_proj.bias.detach().abs().max()) == 0  # random control: zero bias ...
    # ... so plant one: the table and the quantized output must both carry it.
    with torch.no_grad():
        vq.out_proj.bias.fill_(0.25)
    codec._table_cache = None
    try:
        codes = torch.randint(0, 8192, (2, 1, 9))
        assert torch.allclose(codec.lookup(codes), codec.quantized(codes), atol=1e-6)
        assert torch.allclose(codec.quantized(codes) - 0.25, vq.out_proj(vq.codebook(codes[:, 0])) - 0.25, atol=1e-6)
        assert torch.equal(codec.quantized(codes, layers=[]), torch.zeros(2, 9, 32))  # dropped: not even the bias
    finally:
        with torch.no_grad():
            vq.out_proj.bias.zero_()
        codec._table_cache = None


def test_codes_and_decode_equal_the_reference_package(codec, saved):
    modules = _reference_modules()
    ckpt = Path(saved[1].split("checkpoint=")[1]) / "bigcodec.pt"
    enc, dec = _reference_pair(modules, ckpt, codec.model.config)
    for n in (15900, 12345, 801):  # not multiples of 200: inference.py pads the same 200 - N % 200
        x = _speech(1.0, 5 + n % 7)[:n]
        wav = torch.nn.functional.pad(x[None], (0, 200 - n % 200))
        with torch.no_grad():
            q, ref_codes, _ = dec(enc(wav[:, None]), vq=True)  # codes [n_q, B, T]
            ref_recon = dec(q, vq=False)[:, 0]
            ref_decode = dec(dec.vq2emb(ref_codes.permute(1, 2, 0)).transpose(1, 2), vq=False)[:, 0]
        codes, nf = codec.encode(*batch_of([x]))
        assert int(nf[0]) == math.ceil(n / 200) == ref_codes.shape[-1]
        assert torch.equal(codes[0], ref_codes[:, 0])
        mine = codec.decode(codes)
        assert mine.shape == ref_decode.shape == (1, math.ceil(n / 200) * 200)
        assert float((mine - ref_decode).abs().max()) <= 1e-6 * float(ref_decode.abs().max())
        assert float((mine - ref_recon).abs().max()) <= 1e-4 * float(ref_recon.abs().max())
        with torch.no_grad():
            z = enc(wav[:, None])[0].T
        assert torch.allclose(codec.latent(*batch_of([x]))[0][0], z, rtol=1e-5, atol=1e-6)


def test_a_whole_number_of_hops_gets_no_extra_frame(codec):
    """inference.py pads a full extra hop when N % 200 == 0 (one more, silent frame); the
    adapter gives exactly N / 200 frames (documented in docs/codecs.md)."""
    x = _speech(0.5, 8)[:8000]
    codes, nf = codec.encode(*batch_of([x]))
    assert int(nf[0]) == codes.shape[-1] == 40


def test_random_control_exercises_encoder_codebook_and_decoder(codec):
    x = _speech(4.0, 123)  # held out: the codebook came from seed 0's calibration signal
    codes, nf = codec.encode(*batch_of([x]))
    used = len(torch.unique(codes[0, 0]))
    assert used >= 0.3 * int(nf[0]), used
    z, _ = codec.latent(*batch_of([x]))
    assert 0.1 < float(z.pow(2).mean().sqrt()) < 10  # the encoder neither vanishes nor explodes
    y = codec.decode(codes)
    rms = float(y.pow(2).mean().sqrt())
    assert 0.03 < rms < 0.8  # not silent, not a saturated tanh
    other = codec.decode(torch.roll(codes, 7, dims=-1))
    assert float((other - y).pow(2).mean().sqrt()) > 0.1 * rms  # the decode depends on the codes
    # The quantized vector tracks the latent (tied projections), not an unrelated direction.
    q = codec.quantized(codes)[0]
    cos = torch.nn.functional.cosine_similarity(q, z[0], dim=-1)
    assert float(cos.mean()) > 0.2


def test_random_init_is_deterministic_for_a_seed(saved):
    built, _ = saved
    again = load_codec(f"{TINY}&random_init=1&calibration=4", "cpu")
    other = load_codec(f"{TINY}&random_init=1&calibration=4&seed=1", "cpu")
    assert torch.equal(built.tables()[0], again.tables()[0])
    assert not torch.equal(built.tables()[0], other.tables()[0])


def test_codec_check_cli_passes(saved, capsys):
    assert main(["codec", "check", saved[1], "--seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "decode = model decode" in out and "FAIL" not in out


def _error(spec: str, capsys) -> str:
    assert main(["codec", "info", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codeclens: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_checkpoints_are_one_line_errors(saved, tmp_path, capsys):
    ckpt = Path(saved[1].split("checkpoint=")[1])
    assert "not found" in _error(f"bigcodec?checkpoint={tmp_path}/nope.pt", capsys)
    flat = tmp_path / "flat"
    flat.mkdir()
    torch.save({"block.0.bias": torch.zeros(3)}, flat / "model.pt")
    assert "CodecEnc" in _error(f"bigcodec?checkpoint={flat}", capsys)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert "junk.pt" in _error(f"bigcodec?checkpoint={junk}", capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "weights files" in _error(f"bigcodec?checkpoint={empty}", capsys)
    # Tiny weights read as the release architecture (no config.json beside them).
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "bigcodec.pt").write_bytes((ckpt / "bigcodec.pt").read_bytes())
    assert "does not match the architecture" in _error(f"bigcodec?checkpoint={lone}/bigcodec.pt", capsys)
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(json.dumps({"codec_encoder": {"rnn_bidirectional": True}}))
    assert "rnn_bidirectional" in _error(f"bigcodec?checkpoint={lone}/bigcodec.pt&config={bad_cfg}", capsys)
    assert "no target" in _error("bigcodec:16khz?random_init=1&size=tiny", capsys)


def test_release_configuration_full_size(tmp_path):
    """The published architecture at full size with random weights: 159M parameters (the
    paper's count), 80 Hz, saved in the release layout and loaded back both by the adapter
    and by the reference package exactly as inference.py loads bigcodec.pt (strict)."""
    cfg = json.loads(RELEASE.read_text())
    cfg.pop("_source")
    arch = tmp_path / "release"
    arch.mkdir()
    (arch / "config.json").write_text(json.dumps(cfg))
    built = load_codec(f"bigcodec?random_init=1&calibration=0.5&checkpoint={arch}", "cpu")
    n_params = sum(p.numel() for p in built.model.parameters())
    assert 159.0e6 < n_params < 160.0e6, n_params
    assert (built.sample_rate, built.frame_rate, built.n_layers, built.codebook_sizes, built.dim) == (16000, 80.0, 1, [8192], 1024)
    out = tmp_path / "saved"
    built.save(out)
    del built
    codec = load_codec(f"bigcodec?checkpoint={out}/bigcodec.pt", "cpu")
    results = run_checks(codec, seconds=0.3, seed=1, only=["frame rate", "frame count", "lookup = quantized"])
    assert all(r.passed for r in results), results
    modules = _reference_modules()
    enc, dec = _reference_pair(modules, out / "bigcodec.pt")  # the package's defaults = the release
    x = _speech(0.3, 4)[:4321]
    with torch.no_grad():
        _, ref_codes, _ = dec(enc(torch.nn.functional.pad(x[None], (0, 200 - 4321 % 200))[:, None]), vq=True)
    assert torch.equal(codec.encode(*batch_of([x]))[0][0], ref_codes[:, 0])


def test_extract_and_ablate_through_the_cli(saved, codec, audio_folder, tmp_path):
    import numpy as np
    import pandas as pd

    from codeclens.audio import load_audio
    from codeclens.store import Store

    store = tmp_path / "store"
    assert main(["extract", "--corpus", str(audio_folder), "--codec", saved[1], "--out", str(store), "--labels", "none",
                 "--limit", "2", "--quiet", "--device", "cpu"]) == 0
    s = Store(store)
    assert (s.n_layers, s.frame_rate) == (1, 80.0)
    for _, u in s.utterances.iterrows():
        audio, _ = load_audio(u["path"], 16000)
        assert u["n_frames"] == math.ceil(len(audio) / 200)
        want, _ = codec.encode(*batch_of([torch.from_numpy(audio)]))
        np.testing.assert_array_equal(s.codes[u["frame_offset"]: u["frame_offset"] + u["n_frames"]], want[0].T.numpy())
    out = tmp_path / "ablate"
    assert main(["ablate", "--store", str(store), "--out", str(out), "--interventions", "drop:1,noise:1",
                 "--measures", "loudness", "--n-utts", "1", "--examples", "0", "--max-seconds", "1.0",
                 "--n-boot", "20", "--quiet"]) == 0
    eff = pd.read_csv(out / "store" / "effects.csv")
    assert {"none", "drop 1", "noise 1"} <= set(eff["intervention"])


def test_frame_offset_of_the_convolutions_is_near_zero(codec):
    """The encoder's convolutions are centred: their support is two-sided and its midpoint lies
    within 2 ms of the nominal frame centre (the LSTM after them makes the full latent's
    support the whole past, which codec check reports as a weight-dependent centroid)."""
    from codeclens.codecs._hf import pad_to_hop
    from codeclens.codecs.check import measure_frame_offset

    convs = codec.model.encoder.block[:-3]  # up to the LSTM
    m = measure_frame_offset(codec, 2.0, 0, latent=lambda x: convs(pad_to_hop(x, 200)[:, None])[0].T)
    assert m.rule == "support" and m.support[0] < 0 < 200 < m.support[1]
    assert abs(m.offset_s) < 0.002 and codec.frame_offset == 0.0


def test_a_half_precision_checkpoint_loads_as_float32(saved, codec, tmp_path):
    ckpt = Path(saved[1].split("checkpoint=")[1])
    state = torch.load(ckpt / "bigcodec.pt", weights_only=True)
    half = {part: {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
            for part, sd in state.items()}
    d = tmp_path / "bf16"
    d.mkdir()
    torch.save(half, d / "bigcodec.pt")
    (d / "config.json").write_text((ckpt / "config.json").read_text())
    low = load_codec(f"bigcodec?checkpoint={d}", "cpu")
    assert all(p.dtype == torch.float32 for p in low.model.parameters())
    assert torch.allclose(low.tables()[0], codec.tables()[0], rtol=2e-2, atol=1e-2)
    x = _speech(0.3, 9)
    assert low.decode(low.encode(*batch_of([x]))[0]).dtype == torch.float32
