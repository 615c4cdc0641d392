"""Vocabulary and utilities every step shares: labels, the modality and stage table, atomic writes, progress,
media (ffmpeg), local path or hub id, the error type of failed work.

Nothing here imports torch: pack workers, the CLI and the config checks all use these."""
