"""Faces of packed utterances: the stored face sets (``faceset``, read by the visual stage, extraction and
prediction) and the pass that writes them (``facepass``)."""
