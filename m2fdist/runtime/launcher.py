"""How one deepspeed launch of a stage starts: on this machine, or across the nodes of a SLURM allocation.

The pipeline runs each training stage and the extraction as one launch. Outside SLURM, or in an allocation of
one node, that is ``deepspeed --num_gpus N`` here. Inside an allocation of more than one node (``sbatch
launch/pipeline.sbatch``, or ``m2fdist pipeline`` from an ``salloc`` shell) it is ``launch/srun_deepspeed.sh``,
the script ``launch/slurm.sbatch`` runs its training job through: one launcher per node (srun), processes per
node from the allocation, so a stage on a cluster starts exactly as a single training job there does (one
mechanism, not a copy of it in Python).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from m2fdist.runtime.process import free_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
SRUN_DEEPSPEED = ROOT / "launch" / "srun_deepspeed.sh"


def allocation_nodes(env: Mapping[str, str]) -> int:
    """Nodes of the SLURM allocation this process runs in (0 outside one)."""
    if not env.get("SLURM_JOB_ID"):
        return 0
    return int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)


def launch_command(script: str, args: list[str], num_gpus: int,
                   env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment of one launch of ``script`` (relative to the repository root).

    Across an allocation, ``num_gpus`` does not apply (a node runs one rank per GPU it was given, or
    ``M2FDIST_PROCS_PER_NODE`` on CPU nodes); each launch gets a port free on this node, which is the first of
    the allocation and the master, and the launcher beside this Python unless ``M2FDIST_DEEPSPEED`` names one.
    """
    if allocation_nodes(env) > 1:
        out = {**env, "MASTER_PORT": str(free_port())}
        out.setdefault("M2FDIST_DEEPSPEED", str(BIN / "deepspeed"))
        return ["bash", str(SRUN_DEEPSPEED), script, *args], out
    cmd = [str(BIN / "deepspeed"), "--num_gpus", str(num_gpus), "--master_port", str(free_port()), script, *args]
    return cmd, dict(env)
