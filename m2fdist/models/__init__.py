"""M2FNet's modules: text classifier, audio and visual extractors, and the dialog-level fusion model."""

from m2fdist.models.audio import AudioConfig, AudioExtractor
from m2fdist.models.dialog import DialogConfig, M2FNetDialog
from m2fdist.models.text import TextModel
from m2fdist.models.text_config import TextConfig
from m2fdist.models.text_inputs import build_input
from m2fdist.models.visual import VisualConfig, VisualExtractor

__all__ = [
    "AudioConfig", "AudioExtractor", "DialogConfig", "M2FNetDialog", "TextConfig", "TextModel", "VisualConfig",
    "VisualExtractor", "build_input",
]
