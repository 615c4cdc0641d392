"""m2fdist: M2FNet emotion recognition in conversation, trained at cluster scale.

``from m2fdist import M2FNet`` gives the Python API of an exported model (see :mod:`m2fdist.api`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["M2FNet", "__version__"]


def __getattr__(name: str) -> Any:
    # imported on first use, so `m2fdist --help` and the launchers do not pay for torch and huggingface_hub
    if name == "M2FNet":
        from m2fdist.api import M2FNet

        return M2FNet
    raise AttributeError(f"module 'm2fdist' has no attribute {name!r}")
