"""From trained checkpoints to predictions: export, load an export, extract features, predict, evaluate an export."""
