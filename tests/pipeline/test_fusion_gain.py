"""The fused model beats every single modality on the synthetic corpus's cue structure.

Each modality of a synthetic utterance shows its true label's cue with p = 0.7 / 0.6 / 0.6 and a decoy
otherwise, independently (``m2fdist.synth.cues``), so no modality alone can pass ~70 % and fusing them can.
Here the utterances come from the MELD synthesiser's own plan (labels, dialogs, each modality's cue draw), and
each modality's feature is the cue it shows as a noisy one-hot: what a perfect extractor could report at best.
Feature shards are written in the extract stage's format, and the fusion stage trains on them for real
(``python -m m2fdist train``, the stage's own entry). So the test isolates the claim that belongs to fusion;
the learned extractors' part is what `make demo-pipeline`'s report shows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from launching import concurrently, run

from m2fdist.common.labels import LABELS
from m2fdist.config.schema import ExtractConfig
from m2fdist.format.features import FeatureShardWriter
from m2fdist.inference.extract import write_features_index
from m2fdist.raw.base import make_key
from m2fdist.synth import CueConfig
from m2fdist.synth.meld import plan

pytestmark = pytest.mark.launch

DIMS = {"text": 32, "audio": 16, "visual": 32}
CUE_OF = {"text": "text", "audio": "audio", "visual": "video"}
NOISE = 0.3


@pytest.fixture(scope="module")
def cue_features(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cue_features")
    names = LABELS["meld"]
    rows, _ = plan(dialogs=120, seed=7, bad_files=False, cfg=CueConfig())
    rng = np.random.default_rng(0)
    for split, utts in rows.items():
        dialogs: dict[int, list] = {}
        for u in utts:
            dialogs.setdefault(u.dialog, []).append(u)
        writer = FeatureShardWriter(out / f"{split}-r000of001.tar")
        counts = dict.fromkeys(names, 0)
        for d, us in sorted(dialogs.items()):
            feats = {}
            for modality, dim in DIMS.items():
                x = rng.normal(0, NOISE, size=(len(us), dim)).astype(np.float32)
                for i, u in enumerate(us):
                    x[i, names.index(getattr(u.cues, CUE_OF[modality]))] += 1.0
                feats[modality] = x
            labels = np.array([names.index(u.label) for u in us], dtype=np.int64)
            for u in us:
                counts[u.label] += 1
            meta = {"dataset": "meld", "split": split, "dialog": str(d), "keys": [f"{d}_{u.utt}" for u in us]}
            writer.write(make_key("meld", split, "dialog", str(d)), meta, {**feats, "labels": labels})
        writer.close()
        stats = {"shard": f"{split}-r000of001.tar", "split": split, "count": writer.count, "dialogs": writer.count,
                 "utterances": len(utts), "labels": counts, "dims": DIMS}
        (out / f"{split}-r000of001.stats.json").write_text(json.dumps(stats))
    cfg = ExtractConfig()
    cfg.extract.out, cfg.data.shards = str(out), "synthetic-cue-plan"
    write_features_index(out, cfg, world=1)
    return out


def train(features: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "m2fdist", "train", "--config",
           "configs/tiny/fusion.yaml", f"data.shards={features}", f"output_dir={out}", "wandb.mode=disabled",
           "data.eval_splits=[dev,test]", "train.epochs=10", "data.batch_size=4", "train.lr=3e-3",
           "fusion.dropout=0.3", *extra]
    run(cmd, out.with_suffix(".log"), timeout=300)
    return json.loads((out / "final.json").read_text())["metrics"]["test"]


def test_fused_beats_every_single_modality(cue_features, tmp_path):
    mods = ("T", "A", "V")
    *alone, both = concurrently(
        *(lambda m=m: train(cue_features, tmp_path / m, f"fusion.modalities={m}", "fusion.fusion=concat")
          for m in mods), lambda: train(cue_features, tmp_path / "fused"))
    single = {m: r["accuracy"] for m, r in zip(mods, alone, strict=True)}
    fused = both["accuracy"]
    # each alone is capped near its cue's reliability (0.7 / 0.6 / 0.6 plus the label prior)
    assert max(single.values()) < 0.8, single
    assert fused > max(single.values()) + 0.05, (fused, single)
