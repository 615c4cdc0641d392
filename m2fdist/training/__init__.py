"""Training: the one DeepSpeed loop (``trainer``), the stages it trains (``stages/``), checkpoints and tracking."""
