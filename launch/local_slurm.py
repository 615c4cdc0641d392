"""A two-node SLURM cluster on this one machine, kept in one folder: for the tests, and for trying
``launch/slurm.sbatch`` before a real cluster.

    python launch/local_slurm.py up DIR     # prints the SLURM_CONF to export
    SLURM_CONF=DIR/slurm.conf sbatch --nodes=2 launch/slurm.sbatch configs/tiny/text.yaml ...
    python launch/local_slurm.py down DIR   # cancels its jobs, stops every daemon it started, by PID

Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` are installed with apt when missing (as
root). Nothing is written outside DIR: munge's key, socket and logs, slurm.conf, state, spool, pid and log
files all live there, and the clients find the config through ``SLURM_CONF``. The two "nodes" ``n1``, ``n2``
are two slurmd daemons on 127.0.0.1 (Debian builds SLURM with multiple-slurmd), with two partitions: ``low``
(the default) and ``high``, whose jobs preempt ``low`` jobs by requeueing them, as a busy cluster does.
Settings that work without systemd or cgroups, and their reasons, are in ../docs/cluster.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
NODES = ("n1", "n2")
CPUS_PER_NODE = 2


def install() -> None:
    """The Debian packages, when a command of theirs is missing (needs root and the Debian mirror)."""
    if all(shutil.which(c) for c in ("slurmctld", "slurmd", "sbatch", "munged", "mungekey")):
        return
    if os.geteuid() != 0:
        raise SystemExit(f"SLURM is not installed and installing needs root: apt-get install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def slurm_conf(folder: Path, ports: list[int], kill_wait: int) -> str:
    host = socket.gethostname().split(".")[0]
    nodes = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={p} CPUs={CPUS_PER_NODE} "
                      "State=UNKNOWN" for n, p in zip(NODES, ports[1:], strict=True))
    return f"""ClusterName=m2fdist-local
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd-%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd-%n.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=1,bf_interval=1
JobRequeue=1
KillWait={kill_wait}
MailProg=/bin/true
ReturnToService=2
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
{nodes}
PartitionName=low Nodes={','.join(NODES)} Default=YES PriorityTier=1 MaxTime=INFINITE State=UP
PartitionName=high Nodes={','.join(NODES)} PriorityTier=10 MaxTime=INFINITE State=UP
"""


def _munge(folder: Path) -> list[str]:
    m = folder / "munge"
    return ["munged", f"--socket={m}/munge.socket", f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
            f"--seed-file={m}/munge.seed", f"--log-file={m}/munged.log", "--force"]


def _start(cmd: list[str], env: dict[str, str], log: Path) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")


def up(folder: Path, kill_wait: int = 15, timeout: float = 60) -> dict[str, str]:
    """Start munged, slurmctld and two slurmd in ``folder``; returns the environment the clients need."""
    install()
    folder = Path(folder).resolve()
    (folder / "munge").mkdir(parents=True, exist_ok=True)
    os.chmod(folder / "munge", 0o755)  # munged checks its socket folder's permissions
    for sub in ("state", *(f"spool/{n}" for n in NODES)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    key = folder / "munge" / "munge.key"
    if not key.exists():
        subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, capture_output=True)
    os.chmod(key, 0o600)
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, _free_ports(1 + len(NODES)), kill_wait))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    _start(_munge(folder), env, folder / "munge" / "munged.log")
    _start(["slurmctld"], env, folder / "slurmctld.log")
    for node in NODES:
        _start(["slurmd", "-N", node], env, folder / f"slurmd-{node}.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-N", "-p", "low", "-o", "%N %t"], env=env, capture_output=True,
                               text=True)
        if state.returncode == 0 and sorted(state.stdout.split("\n")[:-1]) == [f"{n} idle" for n in NODES]:
            return {"SLURM_CONF": str(conf)}
        time.sleep(0.2)
    down(folder)
    raise RuntimeError(f"the local SLURM cluster did not come up in {timeout:g} s: {state.stdout}{state.stderr}")


def _pids(folder: Path) -> list[tuple[str, int]]:
    files = [*(folder / f"slurmd-{n}.pid" for n in NODES), folder / "slurmctld.pid", folder / "munge" / "munged.pid"]
    out = []
    for f in files:
        try:
            out.append((f.name, int(f.read_text().split()[0])))
        except (OSError, ValueError, IndexError):
            continue
    return out


def down(folder: Path, timeout: float = 20) -> list[str]:
    """Cancel every job, then stop the daemons this folder's pid files name (slurmd first, munged last).
    Returns what was stopped."""
    folder = Path(folder).resolve()
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    if (folder / "slurm.conf").is_file():
        subprocess.run(["scancel", "--full", "--quiet", "-u", "root"], env=env, capture_output=True, timeout=30)
    stopped = []
    for name, pid in _pids(folder):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        stopped.append(f"{name.removesuffix('.pid')} ({pid})")
    return stopped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("folder", type=Path)
    args = p.parse_args(argv)
    if args.action == "up":
        env = up(args.folder)
        print(f"export SLURM_CONF={env['SLURM_CONF']}")
    else:
        print("stopped: " + (", ".join(down(args.folder)) or "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
