"""Which launch a pipeline stage gets: deepspeed here, or launch/srun_deepspeed.sh inside a multi-node allocation
(the launch itself runs in tests/pipeline/test_pipeline_slurm.py)."""

from __future__ import annotations

import pytest

from m2fdist.runtime.launcher import SRUN_DEEPSPEED, launch_command

pytestmark = pytest.mark.unit


def test_a_multi_node_allocation_launches_through_srun_deepspeed():
    args = ["--config", "c.yaml", "k=v"]
    here, env = launch_command("launch/train.py", args, 2, {"PATH": "/bin"})
    assert here[0].endswith("/deepspeed") and here[1:3] == ["--num_gpus", "2"] and here[-4:] == ["launch/train.py",
                                                                                                 *args]
    assert env == {"PATH": "/bin"}
    one_node, _ = launch_command("launch/train.py", args, 2, {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1"})
    assert one_node[0].endswith("/deepspeed")  # one node: the local launch, num_gpus processes
    cmd, env = launch_command("launch/extract.py", args, 2, {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2"})
    assert cmd == ["bash", str(SRUN_DEEPSPEED), "launch/extract.py", *args] and SRUN_DEEPSPEED.is_file()
    assert int(env["MASTER_PORT"]) > 0 and env["M2FDIST_DEEPSPEED"].endswith("/deepspeed")
    _, mine = launch_command("launch/train.py", args, 2, {"SLURM_JOB_ID": "7", "SLURM_NNODES": "3",
                                                          "M2FDIST_DEEPSPEED": "/opt/ds"})
    assert mine["M2FDIST_DEEPSPEED"] == "/opt/ds"
