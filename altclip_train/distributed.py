"""Distributed environment from a job scheduler: SLURM tasks (and submitit's local tasks) -> torch.distributed.

`accelerate launch`, torchrun and the DeepSpeed launcher export RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT for every process they start. A job started one process per GPU by the
scheduler itself (`srun python -m altclip_train ...`, or Hydra's submitit launcher with
tasks_per_node = gpus_per_node) gets none of them, only the scheduler's own variables. This module
translates those, so Accelerate and DeepSpeed initialise the same way under both kinds of launch.
It changes nothing when a launcher already set the variables, outside a job step, or for one task.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from typing import Mapping, MutableMapping

log = logging.getLogger(__name__)

# Set by every launcher that starts the worker processes itself; any one of them means "hands off".
LAUNCHER_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
# Ports derived from the job id, so all tasks of a job agree without talking, and two jobs sharing
# a node rarely collide. Kept below the usual ephemeral range (32768+).
PORT_BASE, PORT_SPAN = 12000, 20000


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host list, expanded: 'gpu[01-03,7],cpu1' -> ['gpu01', 'gpu02', 'gpu03', 'gpu7', 'cpu1']."""
    hosts: list[str] = []
    for item in _split_top_level(hostlist.strip()):
        parts = re.split(r"\[([^\]]*)\]", item)  # even indices: literal text, odd: range lists
        choices = []
        for index, part in enumerate(parts):
            choices.append(_expand_ranges(part, hostlist) if index % 2 else [part])
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        depth += (char == "[") - (char == "]")
        current += char
    items.append(current)
    return [item for item in items if item]


def _expand_ranges(ranges: str, hostlist: str) -> list[str]:
    values = []
    for piece in ranges.split(","):
        start, _, stop = piece.partition("-")
        if not start.isdigit() or (stop and not stop.isdigit()):
            raise ValueError(f"cannot read SLURM host list '{hostlist}': bad range '{piece}'")
        width = len(start)  # zero padding: node[001-010]
        last = int(stop) if stop else int(start)
        values.extend(str(number).zfill(width) for number in range(int(start), last + 1))
    return values


def expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM's tasks-per-node list: '4(x2),2' -> [4, 4, 2]."""
    counts = []
    for piece in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", piece)
        if not match:
            raise ValueError(f"cannot read SLURM tasks-per-node list '{spec}'")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def job_port(job_id: str) -> int:
    digits = re.sub(r"\D", "", job_id) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def _first(environ: Mapping[str, str], *keys: str) -> str | None:
    for key in keys:
        if environ.get(key):
            return environ[key]
    return None


def slurm_torch_env(environ: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed variables for one task of a multi-task SLURM step ({} when not applicable)."""
    if any(key in environ for key in LAUNCHER_KEYS):
        return {}
    # Outside `srun` (a batch script, an salloc shell) SLURM_NTASKS describes the allocation, not
    # the processes actually running; mapping it would make one process wait for absent peers.
    if "SLURM_PROCID" not in environ or _first(environ, "SLURM_STEP_ID", "SLURM_STEPID") is None:
        return {}
    world = int(_first(environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or 1)
    if world <= 1:
        return {}
    node_rank = int(environ.get("SLURM_NODEID", "0"))
    per_node = _first(environ, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    local_world = expand_tasks_per_node(per_node)[node_rank] if per_node else world
    nodelist = _first(environ, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    if nodelist is None:
        raise ValueError("SLURM task without a node list (SLURM_STEP_NODELIST / SLURM_JOB_NODELIST): "
                         "cannot tell the rank-0 host; set MASTER_ADDR")
    return {
        "RANK": environ["SLURM_PROCID"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(local_world),
        "NODE_RANK": str(node_rank),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or expand_hostlist(nodelist)[0],
        "MASTER_PORT": environ.get("MASTER_PORT") or str(job_port(environ.get("SLURM_JOB_ID", "0"))),
    }


def submitit_local_torch_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The same for submitit's local executor (`hydra/launcher=submitit_local` with tasks_per_node > 1)."""
    if any(key in environ for key in LAUNCHER_KEYS) or "SUBMITIT_LOCAL_GLOBALID" not in environ:
        return {}
    world = int(environ.get("SUBMITIT_LOCAL_NTASKS", "1"))
    if world <= 1:
        return {}
    return {
        "RANK": environ["SUBMITIT_LOCAL_GLOBALID"],
        "LOCAL_RANK": environ.get("SUBMITIT_LOCAL_LOCALID", environ["SUBMITIT_LOCAL_GLOBALID"]),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "NODE_RANK": "0",
        "MASTER_ADDR": environ.get("MASTER_ADDR") or "127.0.0.1",
        "MASTER_PORT": environ.get("MASTER_PORT") or str(job_port(environ.get("SUBMITIT_LOCAL_JOB_ID", "0"))),
    }


def scheduler_torch_env(environ: Mapping[str, str]) -> dict[str, str]:
    return slurm_torch_env(environ) or submitit_local_torch_env(environ)


def apply_scheduler_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Export the scheduler's task layout as torch.distributed variables; returns what was set."""
    environ = os.environ if environ is None else environ
    mapped = scheduler_torch_env(environ)
    environ.update(mapped)
    if mapped:
        log.info("distributed env from the scheduler: rank %s of %s (local %s), master %s:%s", mapped["RANK"],
                 mapped["WORLD_SIZE"], mapped["LOCAL_RANK"], mapped["MASTER_ADDR"], mapped["MASTER_PORT"])
    return mapped
