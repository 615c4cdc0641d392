"""The signals a run may stop on (``train.stop_signals``), and the rule that only the rank acts on them.

Here, at the bottom of the package, because both sides need it: the trainer catches them
(:mod:`m2fdist.training.preemption`), and the data loader's workers must ignore them.
"""

from __future__ import annotations

import signal

SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")


def ignore_stop_signals() -> None:
    """In a data-loader worker: leave stopping to the rank. A SIGTERM sent to the whole process group (SLURM,
    the deepspeed launcher) would otherwise kill a worker mid-batch, and the rank with it, before the rank could
    save; the worker still ends with its rank (torch's loader workers exit when their parent does)."""
    for name in SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
