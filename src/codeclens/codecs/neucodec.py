"""``neucodec``: NeuCodec via transformers (16 kHz in, 24 kHz decoder, 50 Hz, one FSQ codebook of 65,536 codes).

NeuCodec is X-codec2's architecture (Wav2Vec2-BERT semantic half + convolutional acoustic
half, FSQ with 4^8 codes, Vocos decoder) with a decoder whose ISTFT head synthesises
24 kHz audio (hop 480 there, for 320 input samples per frame). Tables, ``fsq_split``,
``random_init`` and loading are X-codec2's (:class:`~.xcodec2.XCodec2`); the differences:

- feature framing: the log-mel filterbank reads the hop-padded waveform with no extra
  padding, so the semantic half has one frame fewer than the acoustic half and the model
  keeps the common frames: N samples give exactly ``ceil((N + 1) / 320) - 1`` frames
  (``floor(N / 320)``; the audio past the last whole hop is not coded, by the model's own
  rule). Utterances under 320 samples are an error;
- ``decode`` returns audio at the codec's ``sample_rate`` (16 kHz, the rate every analysis
  compares with the input): the 24 kHz decoder output resampled by 2/3 with a fixed
  polyphase filter (:func:`resample_poly`, identical to ``scipy.signal.resample_poly``).
  :meth:`NeuCodec.decode_native` gives the decoder's own 24 kHz output;
  ``output_sample_rate`` records it.

Default checkpoint: ``neuphonic/neucodec`` (transformers format).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import CODECS
from .xcodec2 import XCodec2


@CODECS.register("neucodec")
class NeuCodec(XCodec2):
    kind = "neucodec"
    config_class, model_class = "NeuCodecConfig", "NeuCodecModel"
    hub = "neuphonic/neucodec"
    #: Semantic frame k stacks log-mel frames 2k, 2k+1 of the unpadded input: samples
    #: [320k, 320k + 560), centred 120 samples (7.5 ms) after the nominal centre 320k + 160.
    half_offsets = {"acoustic": -0.0025, "semantic": 0.0075}
    mel_pad_hops = 0.0

    def __init__(self, model, device: torch.device, split: bool = False):
        super().__init__(model, device, split)
        self.output_sample_rate = int(model.config.output_sampling_rate)

    @staticmethod
    def _input_rate(cfg) -> int:
        return cfg.input_sampling_rate

    def frames_for(self, n_samples: int) -> int:
        return math.ceil((n_samples + 1) / self.hop) - 1

    def halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As X-codec2's, both cut to the shorter (the semantic half), as ``NeuCodecModel.encode`` does."""
        ac, sem = super().halves(x)
        t = min(ac.shape[-1], sem.shape[-1])
        return ac[..., :t], sem[..., :t]

    def decode_native(self, codes: torch.Tensor, layers=None) -> torch.Tensor:
        """The decoder's own output ``[B, N]`` at ``output_sample_rate`` (24 kHz)."""
        with torch.no_grad():
            return self.model.acoustic_decoder(self.quantized(codes.to(self.device), layers)).squeeze(1)

    def _decode_quantized(self, q):
        return self.to_input_rate(self.model.acoustic_decoder(q).squeeze(1))

    def reference_decode(self, codes: torch.Tensor) -> torch.Tensor:
        """transformers' own ``decode(audio_codes=...)``, resampled to ``sample_rate`` as ``decode`` is."""
        return self.to_input_rate(super().reference_decode(codes))

    def to_input_rate(self, y: torch.Tensor) -> torch.Tensor:
        g = math.gcd(self.sample_rate, self.output_sample_rate)
        return resample_poly(y, self.sample_rate // g, self.output_sample_rate // g)

    def describe(self):
        return {**super().describe(), "output_sample_rate": self.output_sample_rate,
                "decode_resampled_to_s": self.sample_rate}


def resample_poly(x: torch.Tensor, up: int, down: int) -> torch.Tensor:
    """``x [B, N]`` resampled by ``up / down`` with ``scipy.signal.resample_poly``'s default filter
    (Kaiser-windowed sinc, beta 5, 10 zero crossings per side of the slower rate, zero padding
    at the edges): output sample k is ``(h * u)[k * down + half]``, ``u`` being ``x`` with
    ``up - 1`` zeros after each sample. ``ceil(N * up / down)`` samples out."""
    if up == down:
        return x
    from scipy.signal import firwin

    rate = max(up, down)
    half = 10 * rate
    h = torch.as_tensor(firwin(2 * half + 1, 1.0 / rate, window=("kaiser", 5.0)) * up, dtype=x.dtype, device=x.device)
    b, n = x.shape
    u = x.new_zeros(b, n * up)
    u[:, ::up] = x
    y = F.conv1d(F.pad(u, (half, half))[:, None], h.flip(0)[None, None], stride=down)[:, 0]
    return y[:, : -(-n * up // down)]
