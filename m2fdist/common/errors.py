"""Work that was started and failed, as opposed to input that was wrong.

The CLI's policy (:mod:`m2fdist.cli`): wrong input (a ConfigError, a missing file, a bad value, an untrusted
shard) is one line (``error:``, or ``config error:``) and exit code 2, like argparse's own usage errors; a
:class:`RunFailed` (a pack worker died, a stage's launch failed, a rank's training raised) is its message, the
traceback of its cause when it has one, and exit code 1.
"""


class RunFailed(RuntimeError):
    """Started work that failed; the message says where (and which log holds the rest)."""
