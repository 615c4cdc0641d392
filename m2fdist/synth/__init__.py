"""Synthetic raw corpora in the exact MELD.Raw and IEMOCAP_full_release layouts.

They let the raw readers, the packer and every training stage run end to end on a laptop or in CI:
each emotion leaves a learnable but per-modality ambiguous cue (see :mod:`m2fdist.synth.cues`), and
``synth_manifest.json`` records the ground truth (rows, labels, planted bad files) to test readers against.
"""

from m2fdist.synth.cues import CueConfig
from m2fdist.synth.iemocap import synth_iemocap
from m2fdist.synth.meld import synth_meld

__all__ = ["CueConfig", "synth_iemocap", "synth_meld"]
