"""The pipeline's skip logic, the report and prediction, on the runs tests/training/test_train.py trained."""

from __future__ import annotations

import csv
import io
import json
import resource
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from launching import concurrently, deepspeed, fusion_args
from PIL import Image

from m2fdist.cli import main as cli
from m2fdist.common.media import encode_utterance
from m2fdist.config.errors import ConfigError
from m2fdist.inference.export import export
from m2fdist.pipeline import Pipeline, PipelineConfig, seed_plan
from m2fdist.pipeline import load as load_pipeline
from m2fdist.raw.base import make_key
from m2fdist.results.report import aggregate, seeds_markdown, write_report


@pytest.fixture(scope="session")
def pipeline_runs(work, text_run, audio_run, visual_run, features, tmp_path_factory) -> Path:
    """A pipeline runs folder assembled from the trained stages: fused model and the T ablation."""
    runs = tmp_path_factory.mktemp("pipeline") / "runs"
    runs.mkdir()
    for stage, src in (("text", text_run), ("audio", audio_run), ("visual", visual_run)):
        shutil.copytree(src, runs / stage, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    # the fused model and the T ablation are independent: two launches side by side
    concurrently(*(lambda name=name, extra=extra: deepspeed(
        "launch/train.py", "configs/tiny/fusion.yaml",
        fusion_args(work, features, runs / name, "train.max_steps=4", "data.eval_splits=[dev,test]", "precision=fp32",
                    *extra), runs / f"{name}.log")
        for name, extra in (("fusion", []), ("fusion_T", ["fusion.modalities=T", "fusion.fusion=concat"]))))
    export(runs / "fusion")  # the best checkpoint on dev, as the pipeline ships it
    Pipeline(PipelineConfig(runs=str(runs))).bundle()  # RUNS/model, what predict loads
    return runs


@pytest.mark.launch
def test_pipeline_skips_finished_stages(pipeline_runs, work, features, capsys):
    cfg = PipelineConfig(shards=str(work["shards"]), features=str(features), runs=str(pipeline_runs), num_gpus=2,
                         ablations=False)
    before = {p: p.stat().st_mtime_ns for p in pipeline_runs.glob("*/final.json")}
    report = Pipeline(cfg).run()
    said = capsys.readouterr().err
    for stage in ("text", "audio", "visual", "fusion"):
        assert f"{stage}: finished earlier, skipped" in said
    assert "(packed)" in said and "(extracted)" in said
    assert {p: p.stat().st_mtime_ns for p in pipeline_runs.glob("*/final.json")} == before
    assert report.is_file() and (pipeline_runs / "model" / "fusion" / "model.safetensors").is_file()


@pytest.mark.launch
def test_pipeline_resumes_an_interrupted_stage(pipeline_runs, work, features, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(pipeline_runs, runs)
    for gone in ("fusion/final.json", "fusion/export", "model"):  # as if the fusion launch had been killed
        shutil.rmtree(runs / gone) if (runs / gone).is_dir() else (runs / gone).unlink()
    cfg = PipelineConfig(shards=str(work["shards"]), features=str(features), runs=str(runs), num_gpus=2,
                         ablations=False, overrides={"fusion": ["train.max_steps=6", "wandb.mode=disabled",
                                                                "data.eval_splits=[dev,test]", "precision=fp32"]})
    cfg.fusion = "configs/tiny/fusion.yaml"
    Pipeline(cfg).run()
    said = capsys.readouterr().err
    assert "fusion: training (resuming)" in said and "text: finished earlier, skipped" in said
    # the stage's progress and evaluation lines reached the console as it ran, and its whole output the log
    log = (runs / "fusion.log").read_text()
    streamed = [ln for ln in said.splitlines() if ln.startswith("[fusion] ")]
    assert any(ln.startswith("[fusion] [progress] fusion: 100%") and "6/6" in ln and "loss" in ln for ln in streamed)
    assert "[fusion] [eval] fusion step 6/6 dev: accuracy" in said and "[fusion] [eval] fusion step 6/6 test" in said
    assert [ln.removeprefix("[fusion] ") for ln in streamed] == [ln for ln in log.splitlines()
                                                                  if ln.startswith(("[progress] ", "[eval] "))]
    assert "\r" not in log and "deepspeed" in log.lower()  # plain lines; the launcher's own output only in the log
    assert json.loads((runs / "fusion" / "final.json").read_text())["step"] == 6
    steps = [json.loads(line)["step"] for line in (runs / "fusion" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("kind") == "train"]
    assert steps == sorted(steps) and steps.count(1) == 1 and steps[-1] == 6  # continued from step 4, not restarted
    assert (runs / "model" / "fusion" / "model.safetensors").is_file()


@pytest.mark.launch
def test_fusion_dims_come_from_the_features(features):
    from m2fdist.config.errors import ConfigError
    from m2fdist.config.load import load_config

    cfg = load_config("configs/meld/fusion.yaml", [f"data.shards={features}"])  # sets no dims: from index.json
    assert (cfg.fusion.dim_text, cfg.fusion.dim_audio, cfg.fusion.dim_visual) == (32, 16, 32)
    with pytest.raises(ConfigError, match="fusion.dim_text=1024, but the text features in .* are 32-d"):
        load_config("configs/meld/fusion.yaml", [f"data.shards={features}", "fusion.dim_text=1024"])


@pytest.mark.launch
def test_report_scores_the_shipped_model(pipeline_runs, features, tmp_path):
    path = write_report(pipeline_runs)
    report = json.loads(path.read_text())
    final = json.loads((pipeline_runs / "fusion" / "final.json").read_text())
    shipped = json.loads((pipeline_runs / "model" / "fusion" / "config.json").read_text())["tag"]
    assert report["checkpoint"]["tag"] == shipped == final["best_tag"]
    assert report["checkpoint"]["last_step"] == final["step"] == 4
    # `m2fdist eval` of the exported bundle on the test split gives exactly the report's numbers
    scores = tmp_path / "eval.json"
    for split in ("dev", "test"):
        assert cli(["eval", "--model", str(pipeline_runs / "model"), "--shards", str(features), "--split", split,
                    "--out", str(scores)]) == 0
        evaluated = json.loads(scores.read_text())["metrics"]
        m = report["splits"][split]
        assert (m["accuracy"], m["weighted_f1"]) == (evaluated["accuracy"], evaluated["weighted_f1"])
        # ... which are the best checkpoint's, as the training run scored it (fp32 here, so to the last bit)
        assert m["weighted_f1"] == pytest.approx(final["metrics"][split]["weighted_f1"], abs=1e-9)
        assert set(m["per_class_f1"]) == {"neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"}
        with Image.open(m["confusion_png"]) as img:
            assert img.size[0] > 600  # counts beside the row-normalised matrix
        # the right panel's data: each true label's row as fractions of its count
        for counts, norm in zip(m["confusion_matrix"], m["confusion_normalized"], strict=True):
            assert sum(norm) == pytest.approx(1.0 if sum(counts) else 0.0)
            assert norm == pytest.approx([c / sum(counts) for c in counts] if sum(counts) else [0.0] * len(counts))
        assert sum(map(sum, m["confusion_matrix"])) == m["count"]
    rows = {r["modalities"]: r for r in report["ablation"]}
    assert set(rows) == {"T", "T+A+V fused"}  # the ablations this run trained
    assert rows["T+A+V fused"]["paper_weighted_f1"] == 66.71
    t_final = json.loads((pipeline_runs / "fusion_T" / "final.json").read_text())
    assert rows["T"]["weighted_f1"] == t_final["metrics"]["test"]["weighted_f1"]
    assert rows["T"]["per_class_f1"] == t_final["metrics"]["test"]["per_class_f1"]
    md = (pipeline_runs / "report.md").read_text()
    assert "| T+A+V fused |" in md and f"checkpoint {shipped}" in md and "last step" in md
    # the figures: real PNGs beside report.md, linked from it
    assert report["figures"] == {"training_curves": "training_curves.png", "per_class_f1": "per_class_f1.png"}
    for name in ("training_curves.png", "per_class_f1.png", "confusion_dev.png", "confusion_test.png"):
        png = pipeline_runs / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
        assert f"]({name})" in md
        with Image.open(png) as img:
            img.load()
            assert len(img.convert("L").getcolors(256)) > 20, f"{name} is nearly blank"
    with Image.open(pipeline_runs / "training_curves.png") as img:
        assert img.size[1] > img.size[0] // 2  # one row per stage: text, audio, visual, fusion (+ fusion_T)


@pytest.mark.launch
def test_fusion_model_standardizes_with_the_train_split(pipeline_runs, features):
    from m2fdist.inference.load import load_exported

    _, model = load_exported(pipeline_runs / "fusion" / "export")
    arrays: dict[str, list[np.ndarray]] = {}
    for shard in sorted(features.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                name = member.name.rsplit(".", 2)[-2]
                if member.name.endswith(".npy") and name != "labels":
                    arrays.setdefault(name, []).append(np.load(io.BytesIO(tar.extractfile(member).read())))
    for m, name in (("T", "text"), ("A", "audio"), ("V", "visual")):
        x = np.concatenate(arrays[name]).astype(np.float64)
        assert len(x) > 20 and not np.allclose(x.mean(0), 0)
        np.testing.assert_allclose(model.standardize[m].mean.numpy(), x.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(model.standardize[m].std.numpy(), x.std(0), rtol=1e-4, atol=1e-6)


@pytest.mark.launch
def test_predict(pipeline_runs, meld_raw, tmp_path, capsys):
    root, manifest = meld_raw
    assert cli(["predict", "--model", str(pipeline_runs / "model"), "--root", str(root)]) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)
    done = [r for r in rows if r["emotion"] is not None]
    assert done and all(abs(sum(r["probs"].values()) - 1) < 1e-4 for r in done)
    assert all(r["emotion"] == max(r["probs"], key=r["probs"].get) for r in done)
    # the planted corrupt clip gets a row that says why, and the reader's skips are reported
    corrupt = [r for r in rows if r["emotion"] is None]
    assert [r["skipped"] for r in corrupt] == ["moov atom not found"]
    # audio is read up to the audio model's 2 s, as in training; the minutes-long planted clip says so
    long = [r for r in rows if (r["dialog"], r["utt"]) == ("220", "0")]
    assert long and "audio: used the first 2 s of" in long[0]["note"]
    assert "clip missing" in out.err
    csv_path = tmp_path / "pred.csv"
    assert cli(["predict", "--model", str(pipeline_runs / "model"), "--root", str(root), "--format", "csv",
                         "--out", str(csv_path)]) == 0
    table = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(table) == len(rows) and table[0]["emotion"] in table[0]
    # a tree without the Emotion column (what users predict on) works too
    bare = tmp_path / "bare"
    shutil.copytree(root / "output_repeated_splits_test", bare / "output_repeated_splits_test")
    lines = (root / "test_sent_emo.csv").read_bytes().decode("cp1252").splitlines()
    header = lines[0].split(",")
    keep = [i for i, h in enumerate(header) if h != "Emotion"]
    rows_csv = list(csv.reader(lines))
    with (bare / "test_sent_emo.csv").open("w", newline="", encoding="cp1252") as f:
        csv.writer(f).writerows([[r[i] for i in keep] for r in rows_csv])
    # a clip whose header probes fine but whose media does not decode: a recorded skip, the dialog still predicted
    victim = sorted((bare / "output_repeated_splits_test").glob("dia*_utt1.mp4"))[0]
    data = victim.read_bytes()  # faststart: the header (moov) first; keep it and the media box's header only
    victim.write_bytes(data[: data.index(b"mdat") + 4])
    assert cli(["predict", "--model", str(pipeline_runs / "model"), "--root", str(bare)]) == 0
    rows = json.loads(capsys.readouterr().out)
    dialog = victim.name.split("_")[0][3:]
    broken = [r for r in rows if r["dialog"] == dialog and r["utt"] == "1"]
    assert len(broken) == 1 and broken[0]["emotion"] is None and broken[0]["skipped"]
    assert [r for r in rows if r["dialog"] == dialog and r["emotion"] is not None]


@pytest.mark.launch
def test_predict_on_the_raw_tree_gives_the_reports_predictions(pipeline_runs, features, meld_raw, tmp_path, capsys):
    """One preprocessing path: predict prepares each raw clip as packing did (the bundle carries the packing
    options), so over the raw tree of a packed corpus it predicts what `m2fdist eval` and the report scored."""
    root, _ = meld_raw
    model = str(pipeline_runs / "model")
    scores = tmp_path / "eval.json"
    assert cli(["eval", "--model", model, "--shards", str(features), "--split", "test", "--out", str(scores)]) == 0
    capsys.readouterr()
    scored = {r["key"]: r for r in json.loads(scores.read_text())["predictions"]}
    assert json.loads((pipeline_runs / "model" / "visual" / "config.json").read_text())["packing"]["max_side"] > 0
    assert cli(["predict", "--model", model, "--root", str(root), "--no-progress"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["split"] == "test" and r["emotion"]]
    by_dialog: dict[str, list[dict]] = {}
    for r in rows:
        r["key"] = make_key("meld", "test", f"d{int(r['dialog']):04d}", f"u{int(r['utt']):02d}")
        by_dialog.setdefault(r["dialog"], []).append(r)
    # dialogs whose every utterance was packed and predicted (a clip packing skipped changes its dialog's context)
    whole = [d for d in by_dialog.values() if {r["key"] for r in d} == {k for k in scored if k.rsplit("_", 1)[0]
                                                                       == d[0]["key"].rsplit("_", 1)[0]}]
    compared = [r for d in whole for r in d]
    assert len(compared) >= 10
    labels = json.loads((pipeline_runs / "model" / "config.json").read_text())["labels"]
    for r in compared:
        assert r["emotion"] == labels[scored[r["key"]]["pred"]], r["key"]
        np.testing.assert_allclose([r["probs"][n] for n in labels], scored[r["key"]]["probs"], atol=2e-4)


@pytest.mark.launch
def test_a_huge_clip_costs_what_a_packed_one_costs(pipeline_runs, meld_raw, tmp_path, capsys):
    """A 0.3 s clip of 4096 x 4096 (what a review fed predict at 8192: 6.5 GB in MTCNN, then an allocator
    traceback and no rows at all): prepared as packing prepares clips, its frames reach the models at the
    packed size, and it is predicted beside an ordinary one."""
    root, _ = meld_raw
    huge = tmp_path / "huge.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=4096x4096:rate=10", "-f", "lavfi", "-i", "sine=frequency=440",
            "-t", "0.3", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(huge))
    clip = sorted((root / "output_repeated_splits_test").glob("dia*_utt0.mp4"))[0]
    (tmp_path / "m.csv").write_text(f"dialog,utt,speaker,text,video\nd,0,A,look at this,{huge}\n"
                                    f"d,1,B,oh my,{clip}\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert cli(["predict", "--model", str(pipeline_runs / "model"), "--manifest", str(tmp_path / "m.csv"),
                "--no-progress"]) == 0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    rows = json.loads(capsys.readouterr().out)
    assert [r["emotion"] is not None for r in rows] == [True, True], rows
    assert grown_mb < 400, grown_mb  # 15 frames of 4096 x 4096 alone are 755 MB


@pytest.mark.launch
def test_text_only_report(text_run, tmp_path):
    """A text-only run (m2fdist pipeline with modalities: text) is reported from its text stage and says so."""
    runs = tmp_path / "runs"
    shutil.copytree(text_run, runs / "text", ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    report = json.loads(write_report(runs).read_text())
    final = json.loads((runs / "text" / "final.json").read_text())
    assert report["modalities"].startswith("text only")
    assert set(report["splits"]) == set(final["metrics"]) == {"dev", "test"}
    assert [(r["modalities"], r["run"], r["paper_weighted_f1"]) for r in report["ablation"]] == [("T", "text", 66.23)]
    assert "Modalities: text only" in (runs / "report.md").read_text()
    with pytest.raises(ConfigError, match="modalities must be one of"):
        Pipeline(PipelineConfig(runs=str(runs), modalities="audio"))


@pytest.mark.unit
def test_seed_plan():
    cfg = load_pipeline(Path("configs/tiny/pipeline.yaml"), ["seeds=[0,2]", "runs=r", "features=f"])
    assert cfg.seeds == [0, 2]
    plan = seed_plan(cfg)
    assert [(s, c.runs, c.features, c.seeds) for s, c in plan] == [(0, "r/seed0", "f/seed0", []),
                                                                   (2, "r/seed2", "f/seed2", [])]
    _, two = plan[1]
    assert two.overrides["text"] == [*cfg.overrides["text"], "train.seed=2"]  # the seed wins over the YAML's
    assert all(two.overrides[s][-1] == "train.seed=2" for s in ("text", "audio", "visual", "fusion"))
    assert two.overrides.get("extract") == cfg.overrides.get("extract") and two.shards == cfg.shards  # packed once
    assert "train.seed=0" not in " ".join(cfg.overrides["text"])  # the parent config is untouched
    assert seed_plan(PipelineConfig()) == []  # default: one run directly in RUNS, as before
    with pytest.raises(ConfigError, match="repeat"):
        Pipeline(PipelineConfig(seeds=[1, 1]))


def _report(accs: dict[str, float], f1s: dict[str, float]) -> dict:
    return {"dataset": "meld", "modalities": "text, audio, visual (attention fusion)",
            "ablation": [{"modalities": k, "split": "test", "accuracy": a, "weighted_f1": f1s[k],
                          "paper_accuracy": 67.85 if k == "T+A+V fused" else None,
                          "paper_weighted_f1": 66.71 if k == "T+A+V fused" else None} for k, a in accs.items()]}


@pytest.mark.unit
def test_seed_aggregation_is_mean_and_sample_std():
    reports = {0: _report({"T": 0.5, "A": 0.3, "T+A+V fused": 0.6}, {"T": 0.4, "A": 0.2, "T+A+V fused": 0.65}),
               1: _report({"T": 0.6, "A": 0.4, "T+A+V fused": 0.6}, {"T": 0.5, "A": 0.3, "T+A+V fused": 0.65}),
               2: _report({"T": 0.7, "T+A+V fused": 0.9}, {"T": 0.6, "T+A+V fused": 0.65})}  # its A run is missing
    agg = aggregate(reports)
    rows = {r["modalities"]: r for r in agg["ablation"]}
    assert agg["seeds"] == [0, 1, 2] and list(rows) == ["T", "A", "T+A+V fused"]
    assert rows["T"]["accuracy"]["values"] == [0.5, 0.6, 0.7] and rows["T"]["seeds"] == [0, 1, 2]
    assert rows["T"]["accuracy"]["mean"] == pytest.approx(0.6, abs=1e-12)
    assert rows["T"]["accuracy"]["std"] == pytest.approx(0.1, abs=1e-12)  # sample std: sqrt(0.02 / 2)
    assert rows["T+A+V fused"]["accuracy"]["mean"] == pytest.approx(0.7, abs=1e-12)
    assert rows["T+A+V fused"]["accuracy"]["std"] == pytest.approx(0.03 ** 0.5, abs=1e-12)  # sqrt(0.06 / 2)
    assert rows["T+A+V fused"]["weighted_f1"] == {"mean": pytest.approx(0.65), "std": 0.0, "values": [0.65] * 3}
    assert rows["A"]["seeds"] == [0, 1] and rows["A"]["accuracy"]["mean"] == pytest.approx(0.35, abs=1e-12)
    assert rows["A"]["accuracy"]["std"] == pytest.approx(0.005 ** 0.5, abs=1e-12)  # sqrt((0.05² + 0.05²) / 1)
    assert rows["T+A+V fused"]["paper_weighted_f1"] == 66.71
    md = seeds_markdown(agg)
    assert "| T | test | 60.00 ± 10.00 | 50.00 ± 10.00 | 0: 50.00, 1: 60.00, 2: 70.00 |" in md
    assert "| A | test | 35.00 ± 7.07 |" in md and "[seed2](seed2/report.md)" in md
    with pytest.raises(ValueError, match="no per-seed reports"):
        aggregate({})


@pytest.mark.launch
def test_pipeline_over_seeds(pipeline_runs, work, features, tmp_path, capsys):
    """seeds=[0,1] over finished per-seed folders: nothing is trained again, each seed is reported and the rows
    are averaged (seed 1's T row is made to differ, so its mean and std are known)."""
    runs, feats = tmp_path / "runs", tmp_path / "features"
    for seed in (0, 1):
        shutil.copytree(pipeline_runs, runs / f"seed{seed}", ignore=shutil.ignore_patterns("report*", "*.png"))
        feats.mkdir(exist_ok=True)
        (feats / f"seed{seed}").symlink_to(features)
    final_t = runs / "seed1" / "fusion_T" / "final.json"
    final = json.loads(final_t.read_text())
    a0 = final["metrics"]["test"]["accuracy"]
    final["metrics"]["test"]["accuracy"] = a0 + 0.1
    final_t.write_text(json.dumps(final))
    cfg = PipelineConfig(shards=str(work["shards"]), features=str(feats), runs=str(runs), num_gpus=2,
                         ablations=False, seeds=[0, 1])
    assert Pipeline(cfg).run() == runs / "report.json"
    said = capsys.readouterr().err
    assert said.count("fusion: finished earlier, skipped") == 2 and "seed 1: runs in" in said
    report = json.loads((runs / "report.json").read_text())
    rows = {r["modalities"]: r for r in report["ablation"]}
    assert rows["T"]["accuracy"]["values"] == pytest.approx([a0, a0 + 0.1], abs=1e-12)
    assert rows["T"]["accuracy"]["mean"] == pytest.approx(a0 + 0.05, abs=1e-12)
    assert rows["T"]["accuracy"]["std"] == pytest.approx(0.1 / 2 ** 0.5, abs=1e-12)
    fused = rows["T+A+V fused"]["weighted_f1"]
    assert fused["std"] == 0.0 and fused["values"][0] == json.loads(
        (runs / "seed0" / "report.json").read_text())["splits"]["test"]["weighted_f1"]
    for seed in (0, 1):
        assert (runs / f"seed{seed}" / "report.md").is_file() and (runs / f"seed{seed}" / "per_class_f1.png").is_file()
    assert "over 2 seeds (0, 1)" in (runs / "report.md").read_text()
    # `m2fdist report RUNS` recognises the layout and writes the same numbers
    (runs / "report.json").unlink()
    assert cli(["report", str(runs)]) == 0
    assert json.loads((runs / "report.json").read_text())["ablation"] == report["ablation"]


# -- prediction on any dialogs, the Python API, sharing --------------------------------------------------------


def _ffmpeg(*args: str) -> None:
    from m2fdist.common.media import ffmpeg_exe, run_ffmpeg

    assert run_ffmpeg([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]).returncode == 0


def _manifest_layout(pipeline_runs, meld_raw, tmp_path, capsys) -> tuple[dict, str, list[dict]]:
    """MELD-layout predictions, and one fully predicted test dialog re-laid out unlike MELD: nested folders, an
    mp4 by absolute path, and a silent video + wav pair (the wav cut from the clip as packing would decode it)."""
    root, _ = meld_raw
    assert cli(["predict", "--model", str(pipeline_runs / "model"), "--root", str(root), "--no-progress"]) == 0
    meld_rows = json.loads(capsys.readouterr().out)
    by_dialog: dict[str, list] = {}
    for r in meld_rows:
        if r["split"] == "test":
            by_dialog.setdefault(r["dialog"], []).append(r)
    dialog = max((d for d, rs in by_dialog.items() if all(r["emotion"] for r in rs)),
                 key=lambda d: len(by_dialog[d]))
    rows = by_dialog[dialog]
    assert len(rows) >= 2
    media = tmp_path / "media"
    out = []
    for i, r in enumerate(rows):
        clip = root / "output_repeated_splits_test" / f"dia{r['dialog']}_utt{r['utt']}.mp4"
        row = {"dialog": f"talk {dialog}", "utt": int(r["utt"]), "speaker": r["speaker"], "text": r["text"]}
        if i == 1:  # video without sound + the sound as a wav, in separate folders
            (media / "silent").mkdir(parents=True, exist_ok=True)
            (media / "sound" / "x").mkdir(parents=True, exist_ok=True)
            _ffmpeg("-i", str(clip), "-an", "-c:v", "copy", str(media / "silent" / f"{i}.mp4"))
            # the sound as packing decodes a clip's own track (in the one ffmpeg pass that re-encodes the clip)
            encode_utterance(clip, tmp_path / "packed.mp4", media / "sound" / "x" / f"{i}.wav", max_side=128,
                             max_seconds=20)
            row.update(video=f"../media/silent/{i}.mp4", audio=f"../media/sound/x/{i}.wav")
        else:
            target = media / "deep" / f"n{i}" / "clip.mp4"
            target.parent.mkdir(parents=True)
            shutil.copy(clip, target)
            row["video"] = str(target) if i == 0 else f"../media/deep/n{i}/clip.mp4"  # absolute, then relative
        out.append(row)
    want = {(f"talk {dialog}", str(int(r["utt"]))): r["probs"] for r in rows}
    return want, dialog, out


@pytest.mark.launch
def test_predict_on_manifests_in_any_layout(pipeline_runs, meld_raw, tmp_path, capsys):
    want, dialog, utts = _manifest_layout(pipeline_runs, meld_raw, tmp_path, capsys)
    folder = tmp_path / "lists"
    folder.mkdir()
    bad = [{"dialog": "other", "utt": 0, "speaker": "A", "text": "where is it", "video": "../media/gone.mp4"},
           {"dialog": "other", "utt": 1, "speaker": "A", "text": ""}]
    shuffled = [utts[-1], *bad, *utts[:-1]]  # rows of a dialog need not be adjacent nor in order
    with (folder / "m.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["dialog", "utt", "speaker", "text", "video", "audio"])
        writer.writeheader()
        writer.writerows(shuffled)
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shuffled))
    outputs = []
    for name in ("m.csv", "m.jsonl"):
        assert cli(["predict", "--model", str(pipeline_runs / "model"), "--manifest", str(folder / name)]) == 0
        said = capsys.readouterr()
        assert "predict: 100%" in said.err  # the progress bar
        rows = json.loads(said.out)
        got = {(r["dialog"], r["utt"]): r for r in rows}
        # the same utterances give the same probabilities as in MELD's layout: ordering, context, wav + video
        assert {k for k, r in got.items() if r["emotion"]} == set(want)
        for key, probs in want.items():
            assert got[key]["probs"] == pytest.approx(probs, abs=2e-6)
            assert got[key]["emotion"] == max(probs, key=probs.get)
        skips = sorted(r["skipped"] for r in rows if r["emotion"] is None)
        line = 3 if name.endswith(".csv") else 2  # the CSV's header is line 1
        assert skips == [f"{name}:{line}: video file missing: {tmp_path / 'media' / 'gone.mp4'}",
                         f"{name}:{line + 1}: no text"]
        outputs.append(rows)
    # the same rows either way (a skip names its own file and line)
    assert [{k: v for k, v in r.items() if k != "skipped"} for r in outputs[0]] == [
        {k: v for k, v in r.items() if k != "skipped"} for r in outputs[1]]
    # CSV output of a manifest (no split), on an explicit device, in batches of one
    assert cli(["predict", "--model", str(pipeline_runs / "model"), "--manifest", str(folder / "m.csv"), "--format",
                         "csv", "--out", str(tmp_path / "p.csv"), "--device", "cpu", "--batch-size", "1",
                         "--no-progress"]) == 0
    table = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert {(r["dialog"], r["utt"]): float(r["neutral"]) for r in table if r["emotion"]} == pytest.approx(
        {k: p["neutral"] for k, p in want.items()}, abs=2e-6)
    # errors are one line, not a traceback
    assert cli(["predict", "--model", str(tmp_path / "nowhere"), "--manifest", str(folder / "m.csv")]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    (folder / "h.csv").write_text("dialog,text\nx,hi\n")
    assert cli(["predict", "--model", str(pipeline_runs / "model"), "--manifest", str(folder / "h.csv")]) == 2
    assert "missing columns ['utt']" in capsys.readouterr().err


@pytest.mark.launch
def test_python_api_round_trip_and_model_card(pipeline_runs, meld_raw, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    from m2fdist import M2FNet
    from m2fdist.results.bundle import write_bundle

    write_report(pipeline_runs)
    bundle = write_bundle(pipeline_runs, tmp_path / "bundle")  # as the pipeline does after its report
    want, dialog, utts = _manifest_layout(pipeline_runs, meld_raw, tmp_path, capsys)
    (tmp_path / "lists").mkdir()
    model = M2FNet.from_pretrained(bundle)
    assert model.labels == ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
    model.save_pretrained(tmp_path / "shared")
    files = {p.relative_to(tmp_path / "shared").as_posix() for p in (tmp_path / "shared").rglob("*") if p.is_file()}
    assert {"README.md", "config.json", "fusion/model.safetensors", "text/text_encoder/config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".py"))]
    for part in ("text", "audio", "visual", "fusion"):  # the weights themselves round-trip
        a, b = load_file(str(bundle / part / "model.safetensors")), load_file(str(tmp_path / "shared" / part /
                                                                                   "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = M2FNet.from_pretrained(tmp_path / "shared", device="cpu")
    # plain Python dialogs, paths relative to the working folder: the same answers as the CLI's
    monkeypatch.chdir(tmp_path / "lists")  # the manifest's folder: its relative paths hold from here
    dialogs = [[{k: v for k, v in u.items() if k not in ("dialog", "utt")} for u in utts],
               [{"speaker": "A", "text": "hello", "video": "nothing.mp4"}]]
    out = again.predict(dialogs)
    assert [len(d) for d in out] == [len(utts), 1]
    for u, r in zip(utts, out[0], strict=True):
        assert r["probs"] == pytest.approx(want[(u["dialog"], str(u["utt"]))], abs=2e-6)
    assert out[1][0] == {"emotion": None, "probs": None,
                         "skipped": f"video file missing: {tmp_path / 'lists' / 'nothing.mp4'}"}
    # the model card: front matter, data, config, the report's scores and per-class F1, use and limits
    report = json.loads((pipeline_runs / "report.json").read_text())
    card = (tmp_path / "shared" / "README.md").read_text()
    assert card == (bundle / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: m2fdist\n") and "datasets:\n- meld\n" in card
    assert "MELD's own train / dev / test splits" in card and "| fusion | " in card and "modalities TAV" in card
    test = report["splits"]["test"]
    assert f"| test | {100 * test['accuracy']:.2f} | {100 * test['weighted_f1']:.2f} |" in card
    for label in model.labels:
        f1 = [report["splits"][s]["per_class_f1"].get(label) for s in report["splits"]]
        row = f"| {label} | " + " | ".join("—" if x is None else f"{100 * x:.2f}" for x in f1) + " |"
        assert row in card
    assert "| T+A+V fused |" in card and "## Intended use and limits" in card
    from huggingface_hub import ModelCard

    assert ModelCard(card).data.library_name == "m2fdist"  # the Hub reads the front matter


@pytest.mark.launch
def test_text_only_bundle_predicts_without_media(text_run, meld_raw, tmp_path, capsys):
    """A text-only pipeline's bundle is its text model: dialogs need no media, and it answers as the engine did."""
    from m2fdist import M2FNet
    from m2fdist.raw import read_meld
    from m2fdist.results.bundle import write_bundle

    runs = tmp_path / "runs"
    shutil.copytree(text_run, runs / "text", ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    write_report(runs)
    bundle = write_bundle(runs)
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "config.json", "text"]
    assert "It reads each utterance's text with its neighbours' text." in (bundle / "README.md").read_text()
    model = M2FNet.from_pretrained(bundle)
    assert model.needs == "" and list(model.exports) == ["text"]
    live = {r["key"]: r["probs"] for r in map(json.loads, (text_run / "predictions" / "dev.jsonl").read_text()
                                               .splitlines())}
    dialogs = read_meld(meld_raw[0], splits=("dev",)).splits["dev"]
    out = model.predict([[{"speaker": u.speaker, "text": u.text} for u in d] for d in dialogs])
    compared = 0
    for d, rows in zip(dialogs, out, strict=True):
        for u, r in zip(d, rows, strict=True):
            if u.key in live:  # packed and scored by the engine at the exported checkpoint
                assert [r["probs"][n] for n in model.labels] == pytest.approx(live[u.key], abs=2e-6)
                compared += 1
    assert compared == len(live) > 0  # every utterance the engine scored
    # the same through the command, from a manifest with no media columns
    with (tmp_path / "m.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dialog", "utt", "speaker", "text"])
        writer.writerows([[u.dialog, u.utt, u.speaker, u.text] for d in dialogs for u in d])
    assert cli(["predict", "--model", str(bundle), "--manifest", str(tmp_path / "m.csv"), "--no-progress"]) == 0
    rows = {(r["dialog"], r["utt"]): r["probs"] for r in json.loads(capsys.readouterr().out)}
    assert rows == {(u.dialog, u.utt): r["probs"] for d, rs in zip(dialogs, out, strict=True)
                    for u, r in zip(d, rs, strict=True)}


@pytest.mark.launch
def test_predict_on_iemocap_layout(pipeline_runs, iemocap_raw, tmp_path, capsys):
    """IEMOCAP's layout: each turn cut out of its dialog's avi, its sound from the sentence wav."""
    root, manifest = iemocap_raw
    tree = tmp_path / "dl" / "IEMOCAP_full_release"  # one session is enough; found a level down
    shutil.copytree(root / "Session5", tree / "Session5")
    assert cli(["predict", "--model", str(pipeline_runs / "model"), "--root", str(tmp_path / "dl"), "--layout",
                         "iemocap", "--no-progress"]) == 0
    said = capsys.readouterr()
    rows = json.loads(said.out)
    six = {"neu", "hap", "sad", "ang", "exc", "fru"}
    turns = {m["utt"]: m for m in manifest["utterances"] if m["utt"].startswith("Ses05") and m["label"] in six}
    assert {r["utt"] for r in rows} == set(turns) and f"IEMOCAP: reading {tree}" in said.err
    assert all(r["emotion"] in r["probs"] and r["split"] == "test" for r in rows)  # the MELD model's labels
    assert all(r["text"] == turns[r["utt"]]["text"] for r in rows)
