"""Training stages behind one small interface (:class:`m2fdist.stages.base.Stage`), one module per kind."""

from m2fdist.stages.base import Stage
from m2fdist.stages.extractors import AudioStage, VisualStage
from m2fdist.stages.fusion import FusionStage
from m2fdist.stages.text import TextStage

STAGES: dict[str, type[Stage]] = {"text": TextStage, "audio": AudioStage, "visual": VisualStage,
                                  "fusion": FusionStage}

__all__ = ["STAGES", "AudioStage", "FusionStage", "Stage", "TextStage", "VisualStage"]
