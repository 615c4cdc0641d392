"""How `make test` splits the suite over its two pytest-xdist workers.

Every module with a test that needs one of the trained session fixtures runs whole in one worker, so each fixture
is trained once and a module's tests keep the order they were written in (some read what an earlier one trained);
every other test goes to whichever worker is free. The launches' single-threaded parts (the deepspeed runner, its
``launch.py``, the ranks' imports, the launcher's exit) then overlap with the other worker's work.

pytest-xdist's own ``--dist loadgroup`` carries ``xdist_group`` marks to its scheduler inside the test ids, which
pytest 9.2 no longer lets a plugin rewrite (pytest-xdist issue 1386): the marks are ignored without a word, each
worker trained every stage itself, and a test that reads an earlier test's run failed. Here the scheduler groups
by module path, and collection checks that the list below names every module that needs a trained fixture.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

TRAINED_STAGES = "trained-stages"

# The session fixtures that train (tests/conftest.py): the stage runs, their features, the pipeline folder, the
# uninterrupted text run, and the SLURM cluster that the pipeline and the preemption test share.
SHARED_RUNS = frozenset({"stage_runs", "features", "pipeline_runs", "unstopped_text_run", "slurm"})

# The modules with a test that needs one of them, as pytest names them (relative to the repository).
GROUPED = frozenset({
    "tests/pipeline/test_pipeline.py", "tests/pipeline/test_pipeline_slurm.py",
    "tests/runtime/test_launch_hygiene.py", "tests/training/test_checkpoint_faults.py",
    "tests/training/test_preemption.py", "tests/training/test_slurm.py", "tests/training/test_train.py",
})


def check_grouped(items: list[pytest.Item], root: Path) -> None:
    """A module that needs a trained fixture but is missing from GROUPED would train it again in the other worker
    (and could run before the test whose run it reads): refused at collection, with the module's name."""
    needs = {item.path.relative_to(root).as_posix() for item in items
             if SHARED_RUNS & set(getattr(item, "fixturenames", ()))}
    if needs - GROUPED:
        raise pytest.UsageError(f"tests/scheduling.py: add {sorted(needs - GROUPED)} to GROUPED: they use one of "
                                f"{sorted(SHARED_RUNS)}, which must be trained once, in one worker")


class TrainedStagesScheduling(LoadScopeScheduling):
    """pytest-xdist's scope scheduling with two kinds of scope: all of GROUPED's modules together, and each other
    test alone."""

    def _split_scope(self, nodeid: str) -> str:
        return TRAINED_STAGES if nodeid.split("::", 1)[0] in GROUPED else nodeid
