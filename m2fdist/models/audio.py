"""Audio feature extractor: waveform → (training only) time warp and white noise → log-mel
"image" (window 400, hop 160, 128 mels at 16 kHz) → 3 channels → ResNet18 + linear → 300-d, L2-normalised.

Each waveform is cropped or zero-padded to ``seconds`` on its own before anything else, so a clip's
embedding never depends on how long the other clips in its batch were.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m2fdist.common.media import SAMPLE_RATE


@dataclass
class AudioConfig:
    embed_dim: int = 300  # D_A: the embedding the extractor outputs (paper: 300)
    n_fft: int = 400  # STFT window in samples at 16 kHz (paper: 400)
    hop_length: int = 160  # STFT hop in samples (paper: 160)
    n_mels: int = 128  # mel bands (paper: 128)
    seconds: float = 8.0  # clips cropped or padded to this length
    warp: float = 0.2  # time warp: the spectrogram is stretched by a factor in [1 - warp, 1 + warp]
    snr_db: tuple[float, float] = (15.0, 40.0)  # additive white Gaussian noise, drawn per clip
    augment: bool = True  # only ever applied in training mode


def fit_length(audio: Tensor, lengths: Tensor | None, samples: int) -> Tensor:
    """[B, L] padded waveforms → [B, samples]: each real signal cropped or zero-padded on its own."""
    out = audio.new_zeros((audio.shape[0], samples))
    for i in range(audio.shape[0]):
        n = int(lengths[i]) if lengths is not None else audio.shape[1]
        n = min(n, samples)
        out[i, :n] = audio[i, :n]
    return out


def add_white_noise(audio: Tensor, snr_db: tuple[float, float], generator: torch.Generator | None = None) -> Tensor:
    power = audio.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-10)
    snr = torch.empty(audio.shape[0], 1, device=audio.device).uniform_(*snr_db, generator=generator)
    noise_power = power / (10 ** (snr / 10))
    return audio + torch.randn(audio.shape, generator=generator, device=audio.device) * noise_power.sqrt()


def time_warp(spec: Tensor, amount: float, generator: torch.Generator | None = None) -> Tensor:
    """Stretch each [mels, T] spectrogram in time by a random factor, then crop/pad back to T."""
    out = torch.empty_like(spec)
    t = spec.shape[-1]
    factors = torch.empty(spec.shape[0]).uniform_(1 - amount, 1 + amount, generator=generator)
    for i, f in enumerate(factors.tolist()):
        stretched = F.interpolate(spec[i : i + 1], size=max(1, round(t * f)), mode="linear", align_corners=False)
        n = min(t, stretched.shape[-1])
        out[i] = 0
        out[i, :, :n] = stretched[0, :, :n]
    return out


class AudioExtractor(nn.Module):
    def __init__(self, config: AudioConfig | None = None):
        super().__init__()
        self.config = c = config or AudioConfig()
        # here, not at the top: torchvision's import is ~3 s of CPU (2 cores), and every rank imports this module
        # (config.schema holds AudioConfig) though only the audio stage and extraction build the extractor
        import torchaudio
        import torchvision

        # on the CPU even inside a meta-device build (an export is checked against its weights that way first):
        # torchaudio computes the mel filters as it builds them, and looks at their values
        with warnings.catch_warnings(), torch.device("cpu"):
            # 128 mels over a 400-point FFT leave the lowest filters empty; the paper's settings, kept.
            warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=SAMPLE_RATE, n_fft=c.n_fft, win_length=c.n_fft, hop_length=c.hop_length,
                n_mels=c.n_mels,
            )
        backbone = torchvision.models.resnet18(weights=None)
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.proj = nn.Linear(512, c.embed_dim)

    def spectrogram(self, audio: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Log-mel "image" [B, 3, n_mels, T], with augmentation in training mode."""
        c = self.config
        wave = fit_length(audio, lengths, int(c.seconds * SAMPLE_RATE))
        if self.training and c.augment:
            wave = add_white_noise(wave, c.snr_db)
        # The STFT runs in float32 whatever the model's precision (bf16 engines cast buffers too).
        spec = torch.log(self.mel.float()(wave.float()) + 1e-6)  # [B, mels, T]
        if self.training and c.augment and c.warp > 0:
            spec = time_warp(spec, c.warp)
        spec = (spec - spec.mean(dim=(1, 2), keepdim=True)) / (spec.std(dim=(1, 2), keepdim=True) + 1e-5)
        return spec.unsqueeze(1).expand(-1, 3, -1, -1).to(self.proj.weight.dtype)

    def forward(self, audio: Tensor, lengths: Tensor | None = None) -> Tensor:
        """[B, L] waveforms at 16 kHz → [B, embed_dim] unit vectors."""
        return F.normalize(self.proj(self.backbone(self.spectrogram(audio, lengths))), dim=-1)
