"""Shards and indexes from elsewhere: every crafted bad case gives a clear error naming the shard, or (in
training, when asked) a recorded skip; never a command run, a silent drop or a deep crash.

Also: shards served over HTTP (a local server this test starts) and through an s3 CLI read the same
samples as the local folder, and evaluation reads each shard once in all.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from m2fdist.config.errors import ConfigError
from m2fdist.config.load import load_config
from m2fdist.data import LoaderConfig, ShardDecodeError, make_loader
from m2fdist.data.stream import read_samples
from m2fdist.format.index import load_index
from m2fdist.format.source import ReadPolicy, ShardError, ShardSource

pytestmark = pytest.mark.unit

EVAL = {"batch_size": 2, "num_workers": 0, "train": False, "members": ("json", "wav")}


def samples_of(shards: Path, split: str = "test") -> tuple[dict, list[dict]]:
    index = json.loads((shards / "index.json").read_text())
    first = index["splits"][split]["shards"][0]
    return index, list(read_samples(ShardSource(shards), [first["url"]]))


def write_tar(path: Path, samples: list[dict], compress: bool = False) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for s in samples:
            for ext, data in s.items():
                if not ext.startswith("__"):
                    info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()) if compress else buf.getvalue())


def crafted(shards: Path, out: Path, samples: list[dict] | None = None, promised: int | None = None,
            name: str = "test-000000.tar", compress: bool = False, **index_changes) -> Path:
    """A one-shard test split at ``out``: ``samples`` (default: the real first test shard's) as shard ``name``,
    the index promising ``promised`` samples (default: as many as written)."""
    index, real = samples_of(shards)
    samples = real if samples is None else samples
    out.mkdir()
    write_tar(out / "test-000000.tar", samples, compress)
    dialogs = len({json.loads(s["json"])["dialog"] for s in samples})
    n = len(samples) if promised is None else promised
    index["splits"] = {"test": {"shards": [{"url": name, "samples": n, "dialogs": dialogs, "bytes": 0}],
                                "samples": n, "dialogs": dialogs}}
    index.update(index_changes)
    (out / "index.json").write_text(json.dumps(index))
    return out


def read_all(shards, split: str = "test", **config) -> list[dict]:
    return list(make_loader(shards, split, LoaderConfig(**{**EVAL, **config}), rank=0, world_size=1))


@pytest.mark.parametrize("name", ["pipe:touch {marker}", "/etc/passwd", "../test-000000.tar", "a/../../x.tar",
                                  "http://127.0.0.1:9/x.tar", "file:///etc/passwd", "-rf.tar", ""])
def test_index_names_are_plain_file_names(meld_shards, tmp_path, name):
    marker = tmp_path / "pwned"
    out = crafted(meld_shards[0], tmp_path / "s", name=name.format(marker=marker))
    with pytest.raises(ShardError, match="not a (plain )?file name"):
        load_index(out)
    with pytest.raises(ShardError, match="not a (plain )?file name"):
        read_all(out)
    with pytest.raises(ConfigError, match="not a (plain )?file name"):
        load_config("configs/tiny/text.yaml", [f"data.shards={out}"])
    assert not marker.exists()


def test_only_allowed_schemes_in_data_shards(meld_shards, tmp_path):
    marker = tmp_path / "pwned"
    for location in (f"pipe:touch {marker}", "ftp://host/shards", "s3:bucket/shards"):
        with pytest.raises(ShardError, match="not allowed|write s3://"):
            ShardSource(location)
        with pytest.raises(ConfigError, match="not allowed|write s3://"):
            load_config("configs/tiny/text.yaml", [f"data.shards={location}"])
    assert not marker.exists()


def test_compressed_tars_are_refused_unless_allowed(meld_shards, tmp_path):
    out = crafted(meld_shards[0], tmp_path / "gz", compress=True)
    with pytest.raises(ShardError, match=r"test-000000\.tar: a gzip-compressed tar"):
        read_all(out)
    allowed = read_all(out, read=ReadPolicy(allow_compressed=True))
    assert sum(int(b["valid"].sum()) for b in allowed) == load_index(out)["splits"]["test"]["samples"]


def test_bounded_member_clip_and_audio(meld_shards, tmp_path):
    shards = meld_shards[0]
    _, real = samples_of(shards)
    big = [dict(real[0], wav=real[0]["wav"] + bytes(3 * 2**20))] + real[1:]
    out = crafted(shards, tmp_path / "big", big)
    with pytest.raises(ShardError, match=rf"test-000000\.tar: member {real[0]['__key__']}\.wav is 3\.\d MB, past "
                                         r"data\.max_member_mb=2"):
        read_all(out, read=ReadPolicy(max_member_mb=2))
    key = real[0]["__key__"]
    with pytest.raises(ShardDecodeError, match=rf"{key}: clip is \d+ frames of \d+x\d+ .* past data.max_clip_mpixels"):
        read_all(shards, members=("json", "mp4"), read=ReadPolicy(max_clip_mpixels=0.01))
    with pytest.raises(ShardDecodeError, match=rf"{key}: \.wav is [\d.]+ s long, past data.max_audio_seconds=0.1"):
        read_all(shards, read=ReadPolicy(max_audio_seconds=0.1))


def test_truncated_short_and_overfull_shards_fail_evaluation(meld_shards, tmp_path):
    shards = meld_shards[0]
    _, real = samples_of(shards)
    cut = crafted(shards, tmp_path / "cut")
    tar = cut / "test-000000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(ShardError, match=r"test-000000\.tar: (not a readable tar|truncated inside|holds)"):
        read_all(cut)
    short = crafted(shards, tmp_path / "short", real[:-1], promised=len(real))
    with pytest.raises(ShardError, match=rf"test-000000\.tar: holds {len(real) - 1} samples, index.json promises "
                                         rf"{len(real)}"):
        read_all(short)
    extra = crafted(shards, tmp_path / "extra", real, promised=len(real) - 1)
    with pytest.raises(ShardError, match=rf"test-000000\.tar: holds more than the {len(real) - 1} samples"):
        read_all(extra)
    index = json.loads((extra / "index.json").read_text())
    entry = index["splits"]["test"]
    entry["samples"] = entry["shards"][0]["samples"] = len(real)
    entry["dialogs"] = entry["shards"][0]["dialogs"] = entry["dialogs"] - 1
    (extra / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match=rf"holds more than the {entry['dialogs']} dialogs"):
        read_all(extra, level="dialog", batch_size=1)  # the dialog count is checked the same way


def test_training_can_record_a_bad_shard_and_go_on(meld_shards, tmp_path):
    """Train split: the real shards plus one truncated shard; with train_bad_shards=skip every batch still
    comes, the bad shard is in the skip log, and by default training stops with the shard named."""
    shards = meld_shards[0]
    out = tmp_path / "train"
    out.mkdir()
    index = json.loads((shards / "index.json").read_text())
    for s in index["splits"]["train"]["shards"]:
        (out / s["url"]).write_bytes((shards / s["url"]).read_bytes())
    bad = dict(index["splits"]["train"]["shards"][0], url="bad-000000.tar")
    data = (shards / index["splits"]["train"]["shards"][0]["url"]).read_bytes()
    (out / bad["url"]).write_bytes(data[: len(data) // 3])
    index["splits"]["train"]["shards"].append(bad)
    index["splits"]["train"]["samples"] += bad["samples"]
    (out / "index.json").write_text(json.dumps(index))
    train = {"batch_size": 2, "num_workers": 0, "train": True, "members": ("json",), "shuffle_buffer": 1}
    with pytest.raises(ShardError, match=r"bad-000000\.tar"):
        read_all(out, "train", **train)
    log = tmp_path / "skipped.jsonl"
    with pytest.warns(UserWarning, match=r"skipping shard .*bad-000000\.tar"):
        batches = read_all(out, "train", **train, read=ReadPolicy(train_bad_shards="skip", skip_log=str(log)))
    assert len(batches) == index["splits"]["train"]["samples"] // 2
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows and all(r["shard"].endswith("bad-000000.tar") for r in rows)


@pytest.mark.parametrize("label", [99, -1, "3", True, 2.0, None])
def test_label_id_must_be_a_label_of_the_dataset(meld_shards, tmp_path, label):
    shards = meld_shards[0]
    _, real = samples_of(shards)
    meta = json.loads(real[1]["json"])
    meta["label_id"] = label
    out = crafted(shards, tmp_path / "label", [real[0], dict(real[1], json=json.dumps(meta).encode())] + real[2:])
    with pytest.raises(ShardDecodeError, match=rf"{real[1]['__key__']}: label_id .* is not a label of this dataset"):
        read_all(out, members=("json",))


def test_config_dataset_must_match_the_shards(meld_shards, tmp_path):
    shards = meld_shards[0]
    with pytest.raises(ConfigError, match="dataset=iemocap .* is for 'meld'"):
        load_config("configs/tiny/text.yaml", [f"data.shards={shards}", "dataset=iemocap"])
    index = json.loads((shards / "index.json").read_text())
    renamed = crafted(shards, tmp_path / "renamed", label_names=list(reversed(index["label_names"])))
    with pytest.raises(ConfigError, match="dataset=meld .* with labels"):
        load_config("configs/tiny/text.yaml", [f"data.shards={renamed}"])
    load_config("configs/tiny/text.yaml", [f"data.shards={shards}"])  # the matching corpus passes


def keys_read(shards, split: str = "test", world: int = 1, workers: int = 0) -> Counter:
    seen: Counter = Counter()
    for rank in range(world):
        for b in make_loader(shards, split, LoaderConfig(**{**EVAL, "num_workers": workers}), rank, world):
            seen.update(k for k, v in zip(b["keys"], b["valid"].tolist(), strict=True) if v)
    return seen


def test_shards_over_http_and_an_s3_cli_read_the_same_samples(meld_shards, http_shards, tmp_path):
    shards, index = meld_shards
    local = keys_read(shards, workers=2)
    assert keys_read(http_shards, workers=2) == local and sum(local.values()) == index["splits"]["test"]["samples"]
    with pytest.raises(ShardError, match="cannot fetch"):
        load_index(http_shards + "/nowhere")
    # s3:// through the CLI the user names: a stand-in for `aws s3 cp URL -` that serves s3://bucket/ from disk
    cli = tmp_path / "fake_s3.py"
    cli.write_text("import shutil, sys\nbucket = sys.argv[1]\nurl = sys.argv[2]\n"
                   "with open(bucket + '/' + url.removeprefix('s3://bucket/'), 'rb') as f:\n"
                   "    shutil.copyfileobj(f, sys.stdout.buffer)\n")
    source = ShardSource("s3://bucket", ReadPolicy(s3_command=f"{sys.executable} {cli} {shards} {{url}}"))
    assert keys_read(source, workers=2) == local
    with pytest.raises(ShardError, match=r"s3://bucket/nosuch/index.json: .* exited with 1"):
        load_index(ShardSource("s3://bucket/nosuch", source.policy))


def test_face_pass_reads_shards_over_http(meld_shards, http_shards, tmp_path, capsys):
    """`m2fdist faces URL --out DIR` stores the boxes a pass over the local folder stores; the stages use
    them when visual.faces names DIR, and auto (no local folder to find at a URL) says MTCNN runs."""
    from m2fdist.cli import main as cli
    from m2fdist.faces.facepass import find_faces
    from m2fdist.faces.faceset import FaceSet, FaceSettings, open_faces

    settings, dev = FaceSettings(num_frames=2), meld_shards[1]["splits"]["dev"]
    with pytest.raises(ValueError, match="give --out"):
        find_faces(http_shards, settings=settings, splits=["dev"], workers=0, progress=False)
    remote, local = tmp_path / "remote", tmp_path / "local"
    assert cli(["faces", http_shards, "--out", str(remote), "--num-frames", "2", "--splits", "dev", "--workers", "1",
                       "--no-progress"]) == 0  # a forkserver worker reads through the pickled source
    find_faces(meld_shards[0], local, settings, splits=["dev"], workers=0, progress=False)
    a, b = FaceSet(remote, settings), FaceSet(local, settings)
    assert len(a) == dev["samples"] and a.entries.keys() == b.entries.keys()
    assert all((a.entries[k][0] == b.entries[k][0]).all() and (a.entries[k][1] == b.entries[k][1]).all()
               for k in a.entries)
    capsys.readouterr()
    assert open_faces("auto", http_shards, settings) is None
    assert "MTCNN runs on every batch" in capsys.readouterr().err
    with pytest.raises(ValueError, match="train shard .*no finished face pass"):  # checked against the URL's index
        open_faces(str(remote), http_shards, settings, verbose=False)
    assert cli(["faces", "http://127.0.0.1:1/none", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "cannot fetch" in capsys.readouterr().err

class CountingSource(ShardSource):
    """Counts how often each shard is opened (in-process loaders: num_workers=0)."""

    opened: Counter = Counter()

    def open(self, name: str):
        CountingSource.opened[name] += 1
        return super().open(name)


@pytest.mark.parametrize(("world", "split"), [(2, "train"), (3, "train"), (4, "test")])
def test_evaluation_reads_each_shard_once_in_all(meld_shards, world, split):
    """Every rank the same number of batches, every unit once, and each shard opened once (when there are
    at least as many shards as slots; else a slot with no shard reads only the first unit, as padding)."""
    shards, index = meld_shards
    entry = index["splits"][split]
    CountingSource.opened = Counter()
    seen: Counter = Counter()
    lengths = set()
    for rank in range(world):
        batches = list(make_loader(CountingSource(shards), split, LoaderConfig(**EVAL), rank, world))
        lengths.add(len(batches))
        seen.update(k for b in batches for k, v in zip(b["keys"], b["valid"].tolist(), strict=True) if v)
    assert len(lengths) == 1 and set(seen.values()) == {1} and sum(seen.values()) == entry["samples"]
    opened = {k: v for k, v in CountingSource.opened.items() if k != "index.json"}
    first = entry["shards"][0]["url"]
    if len(entry["shards"]) >= world:
        assert opened == {s["url"]: 1 for s in entry["shards"]}
    else:
        assert opened == {s["url"]: 1 + (s["url"] == first) * (world - len(entry["shards"])) for s in entry["shards"]}


def test_extraction_chunks_read_shards_like_the_loader(meld_shards, http_shards, tmp_path):
    """Extraction's chunk loader reads through the same source: a URL gives the local folder's chunks, a
    short shard is an error naming it, and the transform (the tokeniser) runs on each chunk."""
    from m2fdist.data.chunks import chunk_loader

    shards = meld_shards[0]

    def chunks(location, **kw) -> list[dict]:
        return list(chunk_loader(location, "test", 3, 0, 1, 0, 2, None, ("json",), **kw))

    local, served = chunks(shards), chunks(http_shards)
    assert [b["keys"] for b in served] == [b["keys"] for b in local] and local
    _, real = samples_of(shards)
    short = crafted(shards, tmp_path / "short", real[:-1], promised=len(real))
    with pytest.raises(ShardError, match=rf"test-000000\.tar: holds {len(real) - 1} samples, index.json promises"):
        chunks(short)
    marked = chunks(shards, transform=lambda b: {**b, "tokens": [len(m["text"]) for m in b["meta"]]})
    assert [b["tokens"] for b in marked] == [[len(m["text"]) for m in b["meta"]] for b in local]
    with pytest.raises(ShardError, match="scheme"):
        chunks("pipe:cat " + str(shards))
