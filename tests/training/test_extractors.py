"""The extractors' data path: faces found once (m2fdist faces), dialogs extracted in bounded chunks,
backbones started from local pretrained weights without unpickling anything."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from m2fdist.cli import main as cli
from m2fdist.config.errors import ConfigError
from m2fdist.config.load import load_config
from m2fdist.data import LoaderConfig, make_loader
from m2fdist.data.chunks import chunk_loader
from m2fdist.faces.facepass import find_faces
from m2fdist.faces.faceset import FaceSet, FaceSettings, open_faces
from m2fdist.inference.extract import extract_dialogs
from m2fdist.models import AudioConfig, AudioExtractor, VisualConfig, VisualExtractor
from m2fdist.models.visual import load_init
from m2fdist.training.stages import VisualStage

pytestmark = pytest.mark.unit


def _shards_copy(shards: Path, dest: Path) -> Path:
    """The session's shards under a new folder (links), so a face set beside them stays this test's own."""
    dest.mkdir()
    for f in shards.iterdir():
        if f.suffix == ".tar":
            os.symlink(f, dest / f.name)
    shutil.copy(shards / "index.json", dest / "index.json")
    return dest


def test_face_pass_stores_what_mtcnn_finds_and_resumes(meld_shards, tmp_path, capsys):
    shards = _shards_copy(meld_shards[0], tmp_path / "shards")
    index = json.loads((shards / "index.json").read_text())
    dev = index["splits"]["dev"]
    settings = FaceSettings(num_frames=2)
    assert cli(["faces", str(shards), "--num-frames", "2", "--splits", "dev", "--workers", "1", "--no-progress"]) == 0
    folder = shards / "faces"
    stats = sorted(folder.glob("*.stats.json"))
    assert len(stats) == len(dev["shards"])
    faces = FaceSet(folder, settings)
    assert len(faces) == dev["samples"]
    # the stored boxes are MTCNN's on the very frames the stages decode
    model = VisualExtractor(VisualConfig(embed_dim=8, face_size=32, scene_size=32)).eval()
    loader = make_loader(shards, "dev", LoaderConfig(batch_size=4, num_workers=0, train=False, num_frames=2,
                                                     members=("json", "mp4")), 0, 1)
    found = 0
    for batch in loader:
        stored = faces.boxes(batch["keys"], batch["frame_hw"], model.config.min_face_prob)
        live = model.detect(batch["frames"], batch["frame_hw"])
        for s_clip, l_clip in zip(stored, live, strict=True):
            for s, v in zip(s_clip, l_clip, strict=True):
                torch.testing.assert_close(s, v, atol=1e-3, rtol=0)
                found += len(s)
    assert found >= dev["samples"]  # the synthetic face is in every frame
    # resumable: a shard killed mid-write (no stats file, a torn json) is redone, finished ones are not
    before = {p.name: p.stat().st_mtime_ns for p in stats}
    victim = stats[0]
    victim.unlink()
    victim.with_name(victim.name.replace(".stats.json", ".faces.json")).write_text('{"torn')
    torn = FaceSet(folder, settings)
    assert 0 < len(torn) < len(faces)  # the torn shard's utterances are left to MTCNN
    capsys.readouterr()
    totals = find_faces(shards, settings=settings, splits=["dev"], workers=0, progress=True)
    assert totals["shards"] == 1 and totals["utterances"] == json.loads(victim.read_text())["utterances"]
    n = totals["utterances"]  # progress in a log (not a terminal): whole lines, the last one at 100%
    assert f"[progress] faces: 100% {n}/{n} [" in capsys.readouterr().err.splitlines()[-1]
    assert {p.name: p.stat().st_mtime_ns for p in stats if p != victim} == {k: v for k, v in before.items()
                                                                          if k != victim.name}
    again = FaceSet(folder, settings)
    assert all(np.array_equal(again.entries[k][1], faces.entries[k][1]) for k in faces.entries)
    # other settings: refused by the pass, ignored by auto, an error for a named face set
    with pytest.raises(ValueError, match="--overwrite"):
        find_faces(shards, settings=FaceSettings(num_frames=3), splits=["dev"], workers=0, progress=False)
    assert open_faces("auto", shards, FaceSettings(num_frames=3), verbose=False) is None
    with pytest.raises(ValueError, match="made with"):
        FaceSet(folder, FaceSettings(num_frames=3), strict=True)
    with pytest.raises(ValueError, match="train shard .*no finished face pass"):  # dev only: not the whole set
        open_faces(str(folder), shards, settings, verbose=False)
    with pytest.raises(FileNotFoundError):
        open_faces(str(tmp_path / "nowhere"), shards, settings, verbose=False)

    # the visual stage takes the stored boxes (auto finds SHARDS/faces) and embeds exactly as with MTCNN
    overrides = [f"data.shards={shards}", "data.num_frames=2", "data.num_workers=0", "data.batch_size=4"]
    stage = VisualStage(load_config("configs/tiny/visual.yaml", overrides))
    torch.manual_seed(0)
    net = stage.build_model().eval()
    stage.prepare(net)
    assert stage.face_set() is not None
    batch = next(iter(stage.loader("dev", False, 0, 1)))
    assert stage.face_set().boxes(batch["keys"], batch["frame_hw"], 0.9) is not None
    live_stage = VisualStage(load_config("configs/tiny/visual.yaml", [*overrides, "visual.faces=mtcnn"]))
    assert live_stage.face_set() is None
    with torch.no_grad():
        for a, b in zip(stage.embeddings(net, batch), live_stage.embeddings(net, batch), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    train_keys = next(iter(stage.loader("train", False, 0, 1)))["keys"]
    assert stage.face_set().boxes(train_keys, torch.tensor([[76, 128]] * len(train_keys)), 0.9) is None  # → MTCNN


def test_long_dialogs_are_extracted_in_bounded_chunks(meld_shards):
    shards, index = meld_shards
    torch.manual_seed(0)
    models = {"audio": AudioExtractor(AudioConfig(embed_dim=8, seconds=0.5)).eval(),
              "visual": VisualExtractor(VisualConfig(embed_dim=8, branches="scene", scene_size=32)).eval()}

    def run(chunk: int, rank: int = 0, world: int = 1) -> tuple[dict, int]:
        loader = chunk_loader(shards, "dev", chunk, rank, world, 0, 2, None, ("json", "wav", "mp4"))
        out, largest = {}, 0
        for dialog, keys, labels, feats, seen in extract_dialogs(models, loader):
            assert dialog not in out  # every dialog once
            out[dialog] = (keys, labels, feats)
            largest = seen
        return out, largest

    whole, whole_largest = run(256)
    chunked, largest = run(2)
    assert largest == 2 and whole_largest > 2  # memory held 2 utterances at most, however long the dialog
    assert max(len(v[0]) for v in chunked.values()) > 2  # a dialog longer than a chunk: put together again
    assert sum(len(v[0]) for v in chunked.values()) == index["splits"]["dev"]["samples"]
    assert chunked.keys() == whole.keys()
    for dialog, (keys, labels, feats) in chunked.items():
        assert keys == whole[dialog][0] and np.array_equal(labels, whole[dialog][1])
        for name in ("audio", "visual"):
            np.testing.assert_allclose(feats[name], whole[dialog][2][name], atol=1e-5, rtol=1e-4)
    # two ranks share the dialogs without overlap
    r0, _ = run(2, 0, 2)
    r1, _ = run(2, 1, 2)
    assert r0.keys().isdisjoint(r1.keys()) and r0.keys() | r1.keys() == whole.keys()


def test_backbones_start_from_local_weight_files(meld_shards, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    scene_ref = torchvision.models.resnet18(weights=None).state_dict()  # torchvision's format, fc included
    face_ref = torchvision.models.resnet18(weights=None).state_dict()
    save_file(scene_ref, tmp_path / "scene.safetensors")
    torch.save(face_ref, tmp_path / "face.pt")
    stage = VisualStage(load_config("configs/tiny/visual.yaml", [
        f"data.shards={meld_shards[0]}", "visual.faces=mtcnn",
        f"visual.scene_init={tmp_path / 'scene.safetensors'}", f"visual.face_init={tmp_path / 'face.pt'}"]))
    model = stage.build_model()
    stage.prepare(model)
    for branch, ref in ((model.scene, scene_ref), (model.face, face_ref)):
        got = branch.backbone.state_dict()
        assert all(torch.equal(got[k], v) for k, v in ref.items() if not k.startswith("fc."))
    # a .pt that would run code when unpickled is refused, and the code never runs
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    torch.save({"conv1.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused to unpickle"):
        load_init(model.scene.backbone, str(tmp_path / "evil.pt"))
    assert not (tmp_path / "ran").exists()
    # facenet's InceptionResnetV1 from its own state dict format; a ResNet file does not fit it
    from facenet_pytorch import InceptionResnetV1

    save_file(InceptionResnetV1(classify=False).state_dict(), tmp_path / "facenet.safetensors")
    face = VisualExtractor(VisualConfig(embed_dim=8, branches="face", face_backbone="inception_resnet_v1",
                                        face_init=str(tmp_path / "facenet.safetensors")))
    face.load_pretrained()
    with pytest.raises(ValueError, match="do not fit"):
        load_init(face.face.backbone, str(tmp_path / "scene.safetensors"))
    with pytest.raises(FileNotFoundError):
        load_init(face.face.backbone, str(tmp_path / "missing.pt"))
    # names are checked against the backbone before anything is built or fetched
    for bad in ("visual.face_init=casia-webface", "visual.scene_init=vggface2", "visual.scene_init=imagenet1k"):
        with pytest.raises(ConfigError, match="init"):
            load_config("configs/tiny/visual.yaml", [f"data.shards={meld_shards[0]}", bad])
    named = ["visual.scene_init=imagenet", "visual.face_backbone=inception_resnet_v1", "visual.face_init=casia-webface"]
    load_config("configs/tiny/visual.yaml", [f"data.shards={meld_shards[0]}", *named])


def test_loss_recipe_is_one_switch(meld_shards, iemocap_shards):
    shards = f"data.shards={meld_shards[0]}"
    by_dataset = {"meld": shards, "iemocap": f"data.shards={iemocap_shards[0]}"}  # a config must match its shards
    for stage in ("audio", "visual"):
        for dataset in ("meld", "iemocap"):
            t = load_config(f"configs/{dataset}/{stage}.yaml", [by_dataset[dataset]]).triplet
            assert (t.recipe, t.weights, t.ce_weight) == ("vicreg_ce", [0.0, 5.0, 1.0], 1.0)
    t = load_config("configs/meld/audio.yaml", [shards, "triplet.recipe=paper"]).triplet
    assert (t.weights, t.ce_weight) == ([20.0, 5.0, 1.0], 0.0)
    with pytest.raises(ConfigError, match="recipe=custom"):
        load_config("configs/meld/audio.yaml", [shards, "triplet.weights=[10,5,1]"])
    t = load_config("configs/meld/audio.yaml", [shards, "triplet.recipe=custom", "triplet.weights=[10,5,1]"]).triplet
    assert (t.weights, t.ce_weight) == ([10.0, 5.0, 1.0], 0.0)  # custom: the weights given, CE as given (0)
