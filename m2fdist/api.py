"""The Python API: an exported M2FNet that loads, predicts and shares the Hugging Face way.

    from m2fdist import M2FNet

    model = M2FNet.from_pretrained("runs/meld/model")          # a bundle folder, or a Hub id
    dialogs = [[{"speaker": "Ross", "text": "Hi!", "video": "clips/a.mp4"},
                {"speaker": "Rachel", "text": "Oh my God.", "video": "clips/b.mp4", "audio": "clips/b.wav"}]]
    out = model.predict(dialogs)      # per dialog, per utterance: {"emotion": "joy", "probs": {...}}
    model.save_pretrained("somewhere/")                     # the same bundle layout, model card included
    model.push_to_hub("me/m2fnet-meld")                     # needs a Hub token and network

A bundle is the stage exports of ``m2fdist export`` (``text/``, ``audio/``, ``visual/``, ``fusion/``; ``text/``
alone for a text-only model), a ``config.json`` naming its dataset and labels, and a ``README.md`` model card.
Weights are safetensors and configs JSON: loading one never unpickles, and downloads from the Hub fetch only
those file types. ``m2fdist predict`` runs through this class, so the CLI and the API predict alike.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelHubMixin, snapshot_download
from safetensors.torch import save_file
from tqdm import tqdm

from m2fdist import __version__
from m2fdist.common import atomic
from m2fdist.common.modalities import fusion_reads
from m2fdist.common.paths import looks_local
from m2fdist.faces.faceset import FaceSet, FaceSettings
from m2fdist.format.exports import (
    BUNDLE_PARTS,
    CONFIG,
    REPORT,
    WEIGHTS,
    bundle_config,
    is_export,
    labels_of,
    public_meta,
    read_json,
    read_meta,
)
from m2fdist.format.lineage import MADE_FROM, WEIGHTS_SHA, file_sha256
from m2fdist.inference.load import load_exported
from m2fdist.inference.predict import needs_of, predict_dialog, preparation
from m2fdist.raw.base import Corpus, add_context
from m2fdist.raw.manifest import utterance
from m2fdist.results.card import model_card, public_report
from m2fdist.runtime.devices import resolve_device

# What a Hub download may fetch: weights, configs, tokenizer vocabularies and the card. Never pickles or code.
SAFE_FILES = ["*.safetensors", "*.json", "*.txt", "*.md"]


class M2FNet(ModelHubMixin, library_name="m2fdist", repo_url="https://arxiv.org/abs/2206.02187",
             tags=["emotion-recognition-in-conversation", "multimodal", "m2fnet"]):
    """An exported M2FNet: its stage models, their saved configs, its labels and its model card."""
    def __init__(self, exports: dict[str, tuple[Any, Any]], metas: dict[str, dict[str, Any]],
                 card: str | None = None, encoder_config: dict[str, Any] | None = None,
                 report: dict[str, Any] | None = None):
        # card: the README.md as found, to read; publishing writes a card anew from metas and report
        self.exports, self.metas, self.card, self.encoder_config = exports, metas, card, encoder_config
        self.report = public_report(report) if report is not None else None
        main = metas.get("fusion") or metas["text"]
        self.dataset: str = main["run"]["dataset"]
        self.labels: list[str] = labels_of(main)
        self.needs: str = needs_of(exports)  # what it reads besides text: "AV", "A", "V" or ""
        self.config = {"format": "m2fdist-bundle", "m2fdist": __version__, "dataset": self.dataset,
                       "labels": self.labels, "parts": list(exports)}
        self._hub_mixin_config = self.config

    # -- loading and saving ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, revision: str | None = None,
                        cache_dir: str | Path | None = None, force_download: bool = False,
                        local_files_only: bool = False, token: str | bool | None = None,
                        device: str = "cpu") -> M2FNet:
        """A bundle from a local folder or a Hub repository (``device="cpu" | "cuda" | "auto"``).

        Not huggingface_hub's own: that one reads config.json itself (``json.load``, unbounded, a traceback for
        a broken one) before this class reads it again. Here a Hub repository is downloaded (weights, configs,
        tokenizer files and the card only) and the folder loaded like a local one, its config read once.
        """
        name = str(pretrained_model_name_or_path)
        path = Path(name)
        if not path.is_dir():
            if looks_local(name):
                raise FileNotFoundError(f"{name} is not a model folder (a bundle such as RUNS/model, or a Hub id)")
            path = Path(snapshot_download(repo_id=name, revision=revision, cache_dir=cache_dir, token=token,
                                          force_download=force_download, local_files_only=local_files_only,
                                          allow_patterns=SAFE_FILES))
        return cls.load(path, device)

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> M2FNet:
        """A bundle folder, or a text stage's export alone (a text-only model). Each config is read once."""
        path, device = Path(path), resolve_device(device)
        if is_export(path):  # one stage's export: only a text classifier predicts on its own
            own, metas = None, {"text": read_meta(path)}
            if metas["text"].get("stage") != "text":
                raise ValueError(f"{path} is the {metas['text'].get('stage')} stage's export; give the bundle "
                                 "(RUNS/model)")
            roots = {"text": path}
        else:
            own = bundle_config(path)  # only the parts its config names
            roots = {p: path / p for p in own["parts"]}
            metas = {p: read_meta(roots[p]) for p in roots}
        exports = {"fusion": load_exported(roots["fusion"], device, metas["fusion"])} if "fusion" in roots else {}
        needed = list(fusion_reads(exports["fusion"][0].fusion.modalities)) if exports else ["text"]
        if missing := [p for p in needed if p not in roots]:
            raise FileNotFoundError(f"{path}: the fusion model reads {', '.join(missing)}, but the bundle has no "
                                    f"{', '.join(m + '/' for m in missing)} export")
        exports.update({p: load_exported(roots[p], device, metas[p]) for p in needed})
        exports = {p: exports[p] for p in BUNDLE_PARTS if p in exports}  # parts it does not read are not loaded
        report = read_json(path / REPORT) if own is not None and (path / REPORT).is_file() else None
        if report is not None and not isinstance(report, dict):
            raise ValueError(f"{path / REPORT}: not a report (a JSON object of scores)")
        model = cls(exports, {p: metas[p] for p in exports},
                    card=(path / "README.md").read_text() if (path / "README.md").is_file() else None,
                    encoder_config=read_json(roots["text"] / "text_encoder" / CONFIG), report=report)
        if own is not None and own.get("labels") is not None and own["labels"] != model.labels:
            raise ValueError(f"{path / CONFIG}: labels {own['labels']} differ from the model's {model.labels}")
        return model

    def _save_pretrained(self, save_directory: Path) -> None:
        """The bundle layout: per part model.safetensors + config.json (+ the text encoder's config and
        tokenizer), the bundle's config.json, the report its card shows, and the card, written anew."""
        made_from = {}
        for part, (_, module) in self.exports.items():
            folder = Path(save_directory) / part
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()},
                      str(folder / WEIGHTS))
            # this file's own identity (its bytes need not be the loaded file's), through public_meta once more
            meta = {**public_meta(self.metas[part]), WEIGHTS_SHA: file_sha256(folder / WEIGHTS)}
            atomic.write_json(folder / CONFIG, meta)
            made_from[part] = f"sha256:{meta[WEIGHTS_SHA]}"
            if part == "text":
                module.tokenizer.save_pretrained(folder / "text_encoder")
                atomic.write_json(folder / "text_encoder" / CONFIG, self.encoder_config, indent=2)
        atomic.write_json(Path(save_directory) / CONFIG, {**self.config, MADE_FROM: made_from})
        if self.report is not None:
            atomic.write_json(Path(save_directory) / REPORT, self.report)
        atomic.write_text(Path(save_directory) / "README.md", self.model_card())

    def model_card(self) -> str:
        """The card publishing writes: generated from the parts' configs and the report, never the card as
        found (an older one may name local paths, shard URLs or commands)."""
        return model_card(self.config, self.metas, self.report)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        return ModelCard(self.model_card())

    def to(self, device: str) -> M2FNet:
        device = resolve_device(device)
        for _, module in self.exports.values():
            module.to(device)
        return self

    # -- predicting ---------------------------------------------------------------------------------------

    def predict_corpus(self, corpus: Any, batch_size: int = 16, faces: Path | None = None,
                       progress: bool = False) -> dict[str, dict[str, Any]]:
        """Per utterance key of a reader's corpus: ``emotion``, ``probs`` by label, and ``skipped`` or ``note``."""
        return {u.key: r for dialog in self.iter_dialogs(corpus, batch_size, faces, progress) for u, r in dialog}

    def iter_dialogs(self, corpus: Any, batch_size: int = 16, faces: Path | None = None,
                     progress: bool = False) -> Iterator[list[tuple[Any, dict[str, Any]]]]:
        """(utterance, result) pairs, one dialog at a time as each is predicted, so a caller writes results as
        they come: a run stopped or failing later has lost nothing already done."""
        face_set = None
        if faces is not None and "V" in self.needs:
            vis = self.exports["visual"][0]
            face_set = FaceSet(faces, FaceSettings(vis.data.num_frames, vis.visual.min_face_size))
        dialogs = [d for split in corpus.splits.values() for d in split]
        prep = preparation(self.exports, self.metas)  # clips prepared as the model's shards were packed
        with tqdm(total=sum(map(len, dialogs)), desc="predict", unit="utt", disable=not progress,
                  file=sys.stderr) as bar:
            for dialog in dialogs:
                probs, reasons, notes = predict_dialog(self.exports, dialog, batch_size, face_set, bar.update,
                                                       prep)
                yield [(u, self._result(probs.get(u.key), reasons.get(u.key), notes.get(u.key))) for u in dialog]

    def _result(self, p: Any, reason: str | None, note: str | None) -> dict[str, Any]:
        if p is None:
            return {"emotion": None, "probs": None, "skipped": reason}
        out = {"emotion": self.labels[int(p.argmax())],
               "probs": {n: round(float(x), 6) for n, x in zip(self.labels, p, strict=True)}}
        return {**out, "note": note} if note else out

    def predict(self, dialogs: Sequence[Sequence[dict[str, Any]]], batch_size: int = 16,
                progress: bool = False) -> list[list[dict[str, Any]]]:
        """Emotions of plain-Python dialogs: a list of dialogs, each a list of utterances in order, each a dict
        with ``text``, and ``speaker``, ``video`` (an mp4), ``audio`` (a wav beside a silent video), ``start`` /
        ``end`` (a span of a longer video) as the model needs. Paths are absolute or relative to the working
        folder. Returns, aligned with the input, per utterance ``{"emotion", "probs"}`` (probabilities by
        label), or ``{"emotion": None, "probs": None, "skipped": reason}`` for one that cannot be read.
        """
        out: list[list[dict[str, Any]]] = []
        kept: list[list[Any]] = []
        for di, dialog in enumerate(dialogs):
            out.append([])
            kept.append([])
            for ui, fields in enumerate(dialog):
                try:
                    if not isinstance(fields, dict):
                        raise ValueError(f"an utterance is a dict, not {type(fields).__name__}")
                    u = utterance(fields, Path.cwd(), self.needs)
                except ValueError as e:
                    out[-1].append({"emotion": None, "probs": None, "skipped": str(e)})
                    continue
                u.dialog, u.utt, u.key = str(di), str(ui), f"d{di}_u{ui}"
                kept[-1].append(u)
                out[-1].append({"key": u.key})
        add_context(kept, 8)
        results = self.predict_corpus(Corpus("python", {"": [d for d in kept if d]}, []), batch_size,
                                      progress=progress)
        return [[results[r["key"]] if "key" in r else r for r in dialog] for dialog in out]
