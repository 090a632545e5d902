"""The variables hybridctl sets inside a job: its own `HYBRIDCTL_*`, SkyPilot's `SKYPILOT_*`
(for every job, so SkyPilot task files run unchanged) and torchrun's rendezvous for multi-node
jobs. One pure table, so the controller's launch and the tests read the same mapping."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from hybridctl.core.model import JobSpec

RENDEZVOUS_PORT_BASE = 29500
"""MASTER_PORT is this plus a hash of job, task and attempt (under 2000), so two attempts or
two jobs sharing a first node rarely collide."""


@dataclass(frozen=True)
class RankPlace:
    """Where one rank of one attempt runs, and the job facts its variables are made from."""

    job_id: int
    task: int
    attempt: int
    rank: int
    array: bool
    """The job is an array (then HYBRIDCTL_ARRAY_TASK_ID is set)."""
    name: str
    """The job's name ('' when it has none)."""
    user: str
    """The submitter's user name."""
    submitted_at: float
    """Seconds since the epoch; names SKYPILOT_TASK_ID's run."""
    gpus_per_node: int
    """GPUs this rank holds (every rank of a job holds the same count)."""
    node_ips: tuple[str, ...]
    """Each rank's node address, in rank order, as the controller reaches it."""
    cluster_name: str
    """The node of rank 0: SKYPILOT_CLUSTER_INFO's cluster_name."""
    site: str
    """Rank 0's site (`local`, a lab name, a cloud): SKYPILOT_CLUSTER_INFO's cloud."""


def task_id(job_id: int, task: int, name: str, submitted_at: float) -> str:
    """SKYPILOT_TASK_ID in the form of SkyPilot's managed jobs,
    `hybridctl-<submit time, UTC, %Y-%m-%d-%H-%M-%S-%f>_<name>_<job id>-<array task>`: unique per
    job and array task, and the same for every attempt, as a managed job's recoveries keep theirs
    (a W&B run id taken from it resumes the run after a requeue; HYBRIDCTL_ATTEMPT tells attempts
    apart). `${SKYPILOT_TASK_ID%%_*}` is the run, as in SkyPilot. The name keeps [A-Za-z0-9.-]
    (others become '-'; 'job' when empty), so the id is safe in a path and as a run id."""
    when = datetime.fromtimestamp(submitted_at, tz=timezone.utc).strftime("%Y-%m-%d-%H-%M-%S-%f")
    safe = re.sub(r"[^A-Za-z0-9.-]", "-", name)[:64].strip("-") or "job"
    return f"hybridctl-{when}_{safe}_{job_id}-{task}"


def job_env(p: RankPlace) -> dict[str, str]:
    """Every variable hybridctl sets for rank `p.rank`. The agent adds the node-local ones
    (CUDA_VISIBLE_DEVICES, HYBRIDCTL_JOB_ID, HYBRIDCTL_NODE, ...). SkyPilot's setup-stage names
    (SKYPILOT_SETUP_*) are set too: hybridctl runs setup and run in one script. Multi-node jobs
    also get torchrun's variables (`rendezvous_env`); single-node jobs do not, since RANK and
    WORLD_SIZE in the environment switch many libraries into distributed mode."""
    ips = "\n".join(p.node_ips)
    env = {
        "HYBRIDCTL_ATTEMPT": str(p.attempt),
        "HYBRIDCTL_NODE_RANK": str(p.rank),
        "HYBRIDCTL_NODE_IPS": ips,
        "HYBRIDCTL_NUM_NODES": str(len(p.node_ips)),
        "SKYPILOT_NODE_RANK": str(p.rank),
        "SKYPILOT_NODE_IPS": ips,
        "SKYPILOT_NUM_NODES": str(len(p.node_ips)),
        "SKYPILOT_NUM_GPUS_PER_NODE": str(p.gpus_per_node),
        "SKYPILOT_SETUP_NODE_RANK": str(p.rank),
        "SKYPILOT_SETUP_NODE_IPS": ips,
        "SKYPILOT_SETUP_NUM_GPUS_PER_NODE": str(p.gpus_per_node),
        "SKYPILOT_TASK_ID": task_id(p.job_id, p.task, p.name, p.submitted_at),
        "SKYPILOT_USER": p.user,
        "SKYPILOT_CLUSTER_INFO": json.dumps(
            {"cluster_name": p.cluster_name, "cloud": p.site, "region": None, "zone": None}
        ),
    }
    if p.array:
        env["HYBRIDCTL_ARRAY_TASK_ID"] = str(p.task)
    if len(p.node_ips) > 1:
        env.update(rendezvous_env(p))
    return env


def rendezvous_env(p: RankPlace) -> dict[str, str]:
    """What every rank of a multi-node job gets, so `torchrun` works unchanged. WORLD_SIZE counts
    processes (nodes × processes per node, torch's meaning); RANK and LOCAL_RANK describe the
    node's first process, which is right for one process per node and is overridden by torchrun
    for its workers."""
    nproc = max(1, p.gpus_per_node)
    port = RENDEZVOUS_PORT_BASE + (p.job_id * 131 + p.task * 17 + p.attempt) % 2000
    nodes = len(p.node_ips)
    return {
        "MASTER_ADDR": p.node_ips[0], "MASTER_PORT": str(port), "NNODES": str(nodes),
        "NODE_RANK": str(p.rank), "NPROC_PER_NODE": str(nproc), "WORLD_SIZE": str(nodes * nproc),
        "RANK": str(p.rank * nproc), "LOCAL_RANK": "0",
    }  # fmt: skip


def with_user_env(system: Mapping[str, str], envs: Mapping[str, str], secrets: Mapping[str, str]) -> dict[str, str]:
    """The environment a launch carries: the job's `envs`, its `secrets` over them (SkyPilot merges
    them so), and hybridctl's variables last, so a file's `SKYPILOT_NODE_RANK: 3` cannot lie
    to the job about where it runs."""
    return {**envs, **secrets, **system}



def slurm_env(p: RankPlace, spec: JobSpec, gpu_indices: Sequence[int] = ()) -> dict[str, str]:
    """The SLURM_* variables of a job read from a Slurm batch script (`spec.slurm` set; {} for
    other jobs: SLURM_JOB_ID in the environment switches libraries such as Lightning into Slurm
    mode). hybridctl runs the script on every node, so each node's batch shell gets its node's
    SLURM_NODEID and its first task's SLURM_PROCID; the `srun` shim sets SLURM_PROCID and
    SLURM_LOCALID per copy. The node list is the nodes' addresses, comma-separated (a valid
    Slurm hostlist, so `scontrol show hostnames` and Lightning's root-address parsing work).
    SLURM_JOB_ID is the hybridctl job id for every task of an array (hybridctl has one id per
    array; `scontrol requeue $SLURM_JOB_ID` acts on the calling task), equal to
    SLURM_ARRAY_JOB_ID; SLURM_ARRAY_TASK_ID tells the tasks apart."""
    s = spec.slurm
    if not s:
        return {}
    per_node = int(s.get("ntasks_per_node", 1))  # type: ignore[call-overload]
    cpt = int(s.get("cpus_per_task", 1))  # type: ignore[call-overload]
    nodes = len(p.node_ips)
    nodelist = ",".join(p.node_ips)
    env = {
        "SLURM_JOB_ID": str(p.job_id), "SLURM_JOBID": str(p.job_id),
        "SLURM_JOB_NAME": spec.name or "sbatch",
        "SLURM_JOB_USER": p.user,
        "SLURM_NNODES": str(nodes), "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NODEID": str(p.rank),
        "SLURM_PROCID": str(p.rank * per_node), "SLURM_LOCALID": "0",
        "SLURM_NTASKS": str(nodes * per_node), "SLURM_NPROCS": str(nodes * per_node),
        "SLURM_NTASKS_PER_NODE": str(per_node),
        "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})" if nodes > 1 else str(per_node),
        "SLURM_CPUS_PER_TASK": str(cpt),
        "SLURM_CPUS_ON_NODE": str(per_node * cpt),
        "SLURM_JOB_NODELIST": nodelist, "SLURM_NODELIST": nodelist,
        "SLURMD_NODENAME": p.node_ips[p.rank] if p.rank < nodes else "",
        "SLURM_SUBMIT_DIR": str(s.get("submit_dir") or spec.workdir or ""),
        "SLURM_GPUS_ON_NODE": str(p.gpus_per_node),
        "SLURM_JOB_GPUS": ",".join(str(g) for g in gpu_indices),
        "SLURM_MEM_PER_NODE": str(spec.resources.memory_mb),
        "SLURM_CLUSTER_NAME": "hybridctl",
        "SLURM_RESTART_COUNT": str(p.attempt),
    }  # fmt: skip
    if p.gpus_per_node:
        env["SLURM_GPUS_PER_NODE"] = str(p.gpus_per_node)
    if spec.time_limit:
        env["SLURM_TIME_LIMIT"] = str(spec.time_limit)
    for key in ("partition", "qos", "account"):
        if s.get(key):
            env[f"SLURM_JOB_{key.upper()}"] = str(s[key])
    if p.array:
        env.update({
            "SLURM_ARRAY_JOB_ID": str(p.job_id), "SLURM_ARRAY_TASK_ID": str(p.task),
        })
        if spec.array is not None:
            idx = spec.array.indices
            env.update({"SLURM_ARRAY_TASK_COUNT": str(len(idx)), "SLURM_ARRAY_TASK_MIN": str(idx[0]), "SLURM_ARRAY_TASK_MAX": str(idx[-1]),
                        **({} if spec.array.parts else {"SLURM_ARRAY_TASK_STEP": str(spec.array.step)})})
    return env
