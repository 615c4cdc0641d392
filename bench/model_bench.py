"""Model benchmark: parameters, forward FLOPs and latency of each M2FNet module at the paper's sizes.

roberta-large's configuration with random weights (nothing is downloaded), 300-d extractors, 15 frames
at the packed MELD size (320x180, with the astronaut's face so MTCNN has a face to crop), dialogs of 10
utterances. FLOPs are counted by ``torch.utils.flop_counter`` (matmuls and convolutions; MTCNN's own
non-maximum suppression and resizing are not counted). Runs on CUDA too when one is available.

    .venv/bin/python bench/model_bench.py [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from m2fdist.models import AudioExtractor, DialogConfig, M2FNetDialog, TextModel, VisualExtractor
from m2fdist.models.text_config import TextConfig

# roberta-large's shapes (the paper's text model); the GPU check overrides them for its --tiny run
ROBERTA_LARGE = {"vocab_size": 50265, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                 "intermediate_size": 4096, "max_position_embeddings": 514, "pad_token_id": 1, "type_vocab_size": 1}


def roberta_large(device: str, **sizes: int) -> TextModel:
    """roberta-large + the text stage's head with random weights (``sizes`` override its shapes), on ``device``."""
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(**{**ROBERTA_LARGE, **sizes})
    with torch.device(device):  # initialised where it runs: no 355 M-parameter copy from the CPU
        encoder = RobertaModel(config, add_pooling_layer=False)
        return TextModel(encoder, tokenizer=None, config=TextConfig(num_classes=7))


def face_frames(b: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    from skimage.data import astronaut

    face = torch.from_numpy(astronaut()[27:207, 149:299].copy())  # 180 x 150, the face fills most of it
    frames = torch.full((b, 15, 180, 320, 3), 90, dtype=torch.uint8)
    frames[:, :, :, 85:235] = face
    return frames.to(device), torch.tensor([[180, 320]] * b, device=device)


def measure(fn, repeats: int) -> tuple[float, float]:
    with torch.no_grad():
        fn()  # warm-up (MTCNN and cuDNN set themselves up on the first call)
        # The fused Transformer fast path is one opaque kernel to the counter: count the unfused ops.
        torch.backends.mha.set_fastpath_enabled(False)
        with FlopCounterMode(display=False) as counter:
            fn()
        torch.backends.mha.set_fastpath_enabled(True)
        times = []
        for _ in range(repeats):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return counter.get_total_flops() / 1e9, statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    dev = args.device
    torch.manual_seed(0)
    rows = []

    text = roberta_large(dev).eval()
    ids = torch.randint(3, 50265, (8, 128), device=dev)
    mask = torch.ones_like(ids)
    rows.append(("text: roberta-large + head", text, "8 utterances × 128 tokens", lambda: text(ids, mask)))

    audio = AudioExtractor().to(dev).eval()
    wave = torch.randn(8, 8 * 16000, device=dev) * 0.1
    rows.append(("audio: log-mel + ResNet18 → 300", audio, "8 clips × 8 s", lambda: audio(wave)))

    visual = VisualExtractor().to(dev).eval()
    frames, hw = face_frames(8, dev)
    rows.append(("visual: MTCNN + face/scene ResNet18 → 600", visual, "8 utterances × 15 frames 320x180",
                 lambda: visual(frames, hw)))
    boxes = visual.detect(frames, hw)
    rows.append(("  of which face + scene extractors", visual, "same, boxes given",
                 lambda: visual(frames, hw, boxes=boxes)))

    for name, n in (("MELD", 1), ("IEMOCAP", 5)):
        model = M2FNetDialog(DialogConfig(num_layers=n, num_fusion_layers=5)).to(dev).eval()
        m = torch.ones(4, 10, dtype=torch.bool, device=dev)
        feats = {"text": torch.randn(4, 10, 1024, device=dev), "audio": torch.randn(4, 10, 300, device=dev),
                 "visual": torch.randn(4, 10, 600, device=dev)}
        rows.append((f"dialog fusion, {name} (N={n}, m=5)", model, "4 dialogs × 10 utterances",
                     lambda model=model, m=m, feats=feats: model(m, **feats)))

    device_name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}, torch {torch.__version__}, float32, median of {args.repeats}\n")
    print("| module | parameters | batch | forward GFLOPs | latency ms |")
    print("|---|---|---|---|---|")
    for name, module, batch, fn in rows:
        params = sum(p.numel() for p in module.parameters()) / 1e6
        gflops, ms = measure(fn, args.repeats)
        print(f"| {name} | {params:.1f} M | {batch} | {gflops:.1f} | {ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
