"""Attribute model (AnCoGen-Codec): streams, masking, model, checkpoints — known answers."""

import numpy as np
import pytest
import torch

from codeclens.analyses.attributes import streams as S
from codeclens.analyses.attributes.config import AttributesConfig, ModelConfig, StreamConfig, TrainConfig
from codeclens.analyses.attributes.model import CODEC, IDENTITY, AttributeModel, masked_loss
from codeclens.analyses.attributes.training import Checkpoint, make_batch, predict, sample_mask, train


# Small models on a shared 2-core machine run far faster without intra-op threads.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


SC = StreamConfig()


def test_pitch_classes_one_per_hz_with_unvoiced_bin():
    f0 = np.array([100.0, 100.4, 100.6, np.nan, 220.0, 500.0, 0.2])
    voiced = np.array([True, True, True, False, False, True, True])
    c = S.pitch_classes(f0, voiced, SC)
    assert c.tolist() == [101, 101, 102, 0, 0, 351, 1]  # unvoiced -> 0 even with an F0; clipped at 350 Hz
    assert S.n_pitch_classes(SC) == 352
    hz = S.pitch_hz(c, SC)
    assert np.isnan(hz[3]) and hz[0] == 100.0 and hz[5] == 350.0
    coarse = StreamConfig(pitch_step_hz=5.0)
    assert S.pitch_classes(np.array([102.4, 103.0]), np.array([True, True]), coarse).tolist() == [21, 22]


def test_loudness_classes_clip_and_missing():
    c = S.loudness_classes(np.array([-80.0, -79.6, -20.2, 5.0, -200.0, np.nan]), SC)
    assert c.tolist() == [0, 0, 60, 80, 0, S.MISSING]
    assert S.n_loudness_classes(SC) == 81
    assert S.loudness_db(np.array([60]), SC)[0] == -20.0


def test_identity_quantizer_is_open_set_and_round_trips(rng):
    # Two voices: embeddings scattered around two directions; an unseen third voice gets tokens too.
    a, b = rng.normal(size=256), rng.normal(size=256)
    emb = np.vstack([a + 0.05 * rng.normal(size=(20, 256)), b + 0.05 * rng.normal(size=(20, 256))])
    q = S.IdentityQuantizer.fit(emb, dims=4, bins=4)
    tok = q(emb)
    assert tok.shape == (40, 4) and tok.min() >= 0 and tok.max() <= 3
    # The first component separates the voices: its token differs between them, not within.
    assert set(tok[:20, 0]) & set(tok[20:, 0]) == set()
    new = q(rng.normal(size=256))
    assert new.shape == (4,)
    q2 = S.IdentityQuantizer.from_arrays(q.arrays())
    assert np.array_equal(q2(emb), tok)


def test_identity_axes_follow_speakers_not_what_is_said(rng):
    # Three voices along one axis, and a larger within-speaker (content) spread along another: the
    # utterances' top principal axis is the content one, the speaker means' the voice one.
    voice, content = np.eye(256)[0], np.eye(256)[1]
    spk = np.repeat([0, 1, 2], 30)
    said = np.tile(np.linspace(-3.0, 3.0, 30), 3)  # every voice says the same spread of things
    emb = np.array([-1.0, 0.0, 1.0])[spk, None] * voice + said[:, None] * content + 0.02 * rng.normal(size=(90, 256))
    by_utt = S.IdentityQuantizer.fit(emb, dims=2, bins=3)
    by_spk = S.IdentityQuantizer.fit(emb, dims=2, bins=3, speakers=[f"s{k}" for k in spk])
    assert abs(by_utt.components[0] @ content) > 0.9
    assert abs(by_spk.components[0] @ voice) > 0.9
    tok = by_spk(emb)[:, 0]
    assert all(len(set(tok[spk == k])) == 1 for k in range(3)) and len(set(tok)) == 3  # one bin per voice
    # Two speakers give one axis; the unused one is padded (a constant token).
    two = S.IdentityQuantizer.fit(emb[:60], dims=2, bins=3, speakers=spk[:60])
    assert len(set(two(emb[:60])[:, 1])) == 1


def test_speaker_reference_leaves_out_the_utterance(tmp_path):
    import pandas as pd

    from codeclens.analyses.attributes.resynth import speaker_reference
    from codeclens.store import Store
    from codeclens.store.arrays import write_store

    u = pd.DataFrame({"id": ["a0", "a1", "a2", "b0"], "speaker": ["a", "a", "a", "b"], "n_frames": [2, 2, 2, 2]})
    st = Store(write_store(tmp_path / "s", np.zeros((8, 1), np.int64), [np.eye(2, 2, dtype=np.float32)], u))
    emb = np.eye(4, 256, dtype=np.float32)
    ref, n = speaker_reference(st, emb, "a", [0])
    assert n == 2 and np.allclose(ref[:3], [0, 2 ** -0.5, 2 ** -0.5])  # rows 1 and 2, not row 0
    assert speaker_reference(st, emb, "b", [3]) == (None, 0)  # nobody else: the caller falls back


def _model(attrs=("content", "pitch", "identity"), patch=1, seed=0):
    torch.manual_seed(seed)
    vocab = S.Vocab((8, 8, 8), "phone", tuple("abcde"), 12, 0, 3, 4)
    return AttributeModel(ModelConfig(d_model=16, n_heads=2, enc_layers=1, dec_layers=1, patch=patch, window=8), vocab, attrs)


def _utts(rng, n=6, T=8, L=3):
    return [S.Utt(i, rng.integers(0, 8, size=(T + i, L)),
                  {"content": rng.integers(-1, 5, size=T + i), "pitch": rng.integers(0, 12, size=T + i)},
                  rng.integers(0, 4, size=3)) for i in range(n)]


@pytest.mark.parametrize("patch", [1, 2])
def test_encoder_never_sees_a_masked_token(rng, patch):
    model = _model(patch=patch).eval()
    utts = _utts(rng)
    b = make_batch(utts, [0] * len(utts), 8, model.frame_attrs, 3)
    mask = sample_mask(model, b, np.random.default_rng(1), TrainConfig(p_inference=0.0))
    assert mask.any() and (~mask).any()
    seen = []
    h = model.encoder.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0].shape), with_kwargs=True)
    with torch.no_grad():
        out1 = model(b, mask)
        # Change every masked token's value (codes, attributes, identity): nothing may change.
        b2 = make_batch(utts, [0] * len(utts), 8, model.frame_attrs, 3)
        T = b2.codes.shape[1]
        mc = model.frame_mask(mask, CODEC, T)
        b2.codes[mc] = (b2.codes[mc] + 3) % 8
        for a in model.frame_attrs:
            m = model.frame_mask(mask, a, T)
            b2.attrs[a][m] = (b2.attrs[a][m] + 2) % 5
        idm = mask[:, -3:]
        b2.identity[idm] = (b2.identity[idm] + 1) % 4
        assert not torch.equal(b.codes, b2.codes)
        out2 = model(b2, mask)
        tokens, pad = model.embed(b)
        enc1 = model.encode(tokens, ~mask & ~pad, model.token_times(T, "cpu"))[0]
        tokens2, _ = model.embed(b2)
        enc2 = model.encode(tokens2, ~mask & ~pad, model.token_times(T, "cpu"))[0]
    h.remove()
    assert torch.equal(enc1, enc2)
    for k in out1:
        for x, y in zip(out1[k] if k == CODEC else [out1[k]], out2[k] if k == CODEC else [out2[k]]):
            assert torch.equal(x, y), k
    # The encoder's input is the register token plus the visible tokens, no more.
    n_vis = int((~mask & ~pad).sum(1).max())
    assert seen[0][1] == 1 + n_vis < tokens.shape[1]
    # A visible token's value does change the encoding (the test above can fail).
    b3 = make_batch(utts, [0] * len(utts), 8, model.frame_attrs, 3)
    vis = ~model.frame_mask(mask, CODEC, T) & b3.valid
    b3.codes[vis] = (b3.codes[vis] + 1) % 8
    with torch.no_grad():
        enc3 = model.encode(model.embed(b3)[0], ~mask & ~pad, model.token_times(T, "cpu"))[0]
    assert not torch.equal(enc1, enc3)


def test_dirichlet_masks_identity_whole_and_keep_a_stream_visible(rng):
    model = _model()
    utts = _utts(rng, n=6)
    b = make_batch(utts * 20, [0] * 120, 8, model.frame_attrs, 3)
    mask = sample_mask(model, b, np.random.default_rng(0), TrainConfig(p_inference=0.3)).numpy()
    P = 8
    ident = mask[:, -3:]
    assert ((ident.all(1)) | (~ident.any(1))).all()  # all or nothing
    per_stream = mask[:, : 3 * P].reshape(-1, 3, P)
    valid = b.valid.numpy()
    hidden = [per_stream[:, s][valid] for s in range(3)]
    # Some stream of every sample is fully visible (the largest Dirichlet share, or an inference masking).
    full_vis = np.stack([~(per_stream[:, s] & valid).any(1) for s in range(3)] + [~ident.any(1)], 1)
    assert full_vis.any(1).all()
    # Both inference maskings occur: all attributes hidden (analysis) and all codec hidden (generation).
    analysis = (~per_stream[:, 0].any(1)) & per_stream[:, 1].all(1) & per_stream[:, 2].all(1) & ident.all(1)
    generation = per_stream[:, 0].all(1) & ~per_stream[:, 1].any(1) & ~per_stream[:, 2].any(1) & ~ident.any(1)
    assert analysis.any() and generation.any()
    # And partial masks too (ratios strictly between 0 and 1).
    frac = np.array([h.mean() for h in hidden])
    assert ((frac > 0.05) & (frac < 0.95)).all()


def test_loss_counts_masked_positions_only(rng):
    model = _model()
    utts = _utts(rng)
    b = make_batch(utts, [0] * len(utts), 8, model.frame_attrs, 3)
    mask = model.stream_mask(len(utts), 8, ["pitch"], "cpu")
    lg = model(b, mask)
    loss, parts = masked_loss(model, lg, b, mask)
    assert set(parts) == {"pitch"}
    # Changing a visible stream's targets in the loss (not the input) leaves the loss alone.
    lg2 = {k: v for k, v in lg.items()}
    b.codes.zero_()
    loss2, _ = masked_loss(model, lg2, b, mask)
    assert torch.equal(loss, loss2)


def _train_setup(rng, steps):
    model = _model(seed=3)
    sc = StreamConfig(attributes=("content", "pitch", "identity"))
    ck = Checkpoint(model, sc, model.vocab, {"spec": "toy", "n_layers": 3, "codebook_sizes": [8, 8, 8], "frame_rate": 50.0},
                    None, 0, "fp")
    cfg = TrainConfig(steps=steps, batch_size=4, checkpoint_every=3, device="cpu")
    return ck, cfg


def test_resume_is_exact_and_save_load_predicts_identically(tmp_path):
    utts = _utts(np.random.default_rng(5))
    ck, cfg = _train_setup(None, 6)
    full = train(ck, utts, cfg, tmp_path / "a", torch.device("cpu"), progress=False)
    ck2, _ = _train_setup(None, 6)
    half = train(ck2, utts, cfg, tmp_path / "b", torch.device("cpu"), progress=False, until=3)
    assert half.step == 3
    resumed = Checkpoint.load(tmp_path / "b")
    assert resumed.step == 3
    resumed = train(resumed, utts, cfg, tmp_path / "b", torch.device("cpu"), progress=False)
    sd1, sd2 = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    loaded = Checkpoint.load(tmp_path / "a")
    assert loaded.step == 6 and loaded.vocab == full.vocab
    for masked in ([CODEC], ["content", "pitch", IDENTITY]):
        p1, p2 = predict(full, utts, masked, torch.device("cpu")), predict(loaded, utts, masked, torch.device("cpu"))
        assert all(np.array_equal(a[k], b[k]) for a, b in zip(p1, p2) for k in a)
    assert (tmp_path / "a" / "model.safetensors").is_file() and (tmp_path / "a" / "checkpoint.json").is_file()


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="attributes"):
        StreamConfig(attributes=("colour",))
    with pytest.raises(ValueError, match="multiple of patch"):
        ModelConfig(window=10, patch=4)
    base = AttributesConfig(size="base")
    assert base.d_model == 512 and base.steps == 200_000
    assert AttributesConfig(size="base", d_model=128).d_model == 128  # explicit values win
    assert AttributesConfig().part(ModelConfig) == ModelConfig()
