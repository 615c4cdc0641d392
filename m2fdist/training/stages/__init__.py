"""Training stages behind one small interface (:class:`m2fdist.training.stages.base.Stage`), one module per kind."""

from m2fdist.training.stages.base import Stage
from m2fdist.training.stages.extractors import AudioStage, VisualStage
from m2fdist.training.stages.fusion import FusionStage
from m2fdist.training.stages.text import TextStage

# The stage class of each name in common.modalities.STAGES.
STAGE_TYPES: dict[str, type[Stage]] = {"text": TextStage, "audio": AudioStage, "visual": VisualStage,
                                       "fusion": FusionStage}

__all__ = ["STAGE_TYPES", "AudioStage", "FusionStage", "Stage", "TextStage", "VisualStage"]
