"""The variables inside a job (core/jobenv.py) and SkyPilot's `secrets:` (core/spec.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from hybridctl.control.limits import mask_secrets, redact
from hybridctl.core.errors import SpecError
from hybridctl.core.jobenv import RankPlace, job_env, task_id, with_user_env
from hybridctl.core.model import spec_from_dict
from hybridctl.core.spec import apply_flags, load_yaml, parse_spec

# 2026-12-02 05:06:48.123456 UTC
T = 1796188008.123456

SOLO = RankPlace(job_id=42, task=0, attempt=0, rank=0, array=False, name="llama serve", user="ana",
                 submitted_at=T, gpus_per_node=2, node_ips=("10.0.0.5",), cluster_name="gpu1", site="onprem")
PAIR = replace(SOLO, rank=1, gpus_per_node=4, node_ips=("10.0.0.5", "10.0.0.6"), attempt=2)
CPU_ARRAY = replace(SOLO, task=7, array=True, gpus_per_node=0, name="")


@pytest.mark.parametrize(
    ("place", "expected"),
    [
        (SOLO, {"SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "10.0.0.5", "SKYPILOT_NUM_NODES": "1",
                "SKYPILOT_NUM_GPUS_PER_NODE": "2", "SKYPILOT_SETUP_NODE_RANK": "0",
                "SKYPILOT_SETUP_NODE_IPS": "10.0.0.5", "SKYPILOT_SETUP_NUM_GPUS_PER_NODE": "2",
                "SKYPILOT_USER": "ana", "HYBRIDCTL_ATTEMPT": "0", "HYBRIDCTL_NODE_RANK": "0",
                "HYBRIDCTL_NODE_IPS": "10.0.0.5", "HYBRIDCTL_NUM_NODES": "1",
                "SKYPILOT_TASK_ID": "hybridctl-2026-12-02-05-06-48-123456_llama-serve_42-0"}),
        (PAIR, {"SKYPILOT_NODE_RANK": "1", "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.6", "SKYPILOT_NUM_NODES": "2",
                "SKYPILOT_NUM_GPUS_PER_NODE": "4", "HYBRIDCTL_ATTEMPT": "2", "MASTER_ADDR": "10.0.0.5",
                "NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "4", "WORLD_SIZE": "8", "RANK": "4",
                "LOCAL_RANK": "0", "SKYPILOT_TASK_ID": "hybridctl-2026-12-02-05-06-48-123456_llama-serve_42-0"}),
        (CPU_ARRAY, {"SKYPILOT_NUM_GPUS_PER_NODE": "0", "HYBRIDCTL_ARRAY_TASK_ID": "7",
                     "SKYPILOT_TASK_ID": "hybridctl-2026-12-02-05-06-48-123456_job_42-7"}),
    ],
    ids=["single-node", "rank-1-of-2", "cpu-array-task"],
)
def test_every_job_gets_skypilots_variables(place: RankPlace, expected: dict[str, str]) -> None:
    env = job_env(place)
    assert {k: env.get(k) for k in expected} == expected
    assert json.loads(env["SKYPILOT_CLUSTER_INFO"]) == {"cluster_name": "gpu1", "cloud": "onprem",
                                                       "region": None, "zone": None}
    assert all(isinstance(v, str) for v in env.values())


def test_a_single_node_job_gets_no_torchrun_variables() -> None:
    """RANK / WORLD_SIZE in the environment put HF Trainer, Lightning, accelerate into
    distributed mode; a one-node job must not have them."""
    assert not {"MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NNODES"} & set(job_env(SOLO))
    assert "HYBRIDCTL_ARRAY_TASK_ID" not in job_env(SOLO)


def test_the_task_id_is_kept_across_attempts_and_differs_between_jobs_and_tasks() -> None:
    ids = {job_env(replace(SOLO, attempt=a))["SKYPILOT_TASK_ID"] for a in range(3)}
    assert len(ids) == 1
    others = {task_id(43, 0, "llama serve", T), task_id(42, 1, "llama serve", T), task_id(42, 0, "x", T + 1)}
    assert ids.isdisjoint(others) and len(others) == 3
    weird = task_id(1, 0, "a/b_c d\u00e9" * 20, T)
    assert weird.split("_")[1].replace("-", "").isalnum() and len(weird) < 120
    assert weird.split("_")[0] == "hybridctl-2026-12-02-05-06-48-123456"  # ${SKYPILOT_TASK_ID%%_*}


def test_hybridctls_variables_win_over_envs_and_secrets_over_envs() -> None:
    env = with_user_env(job_env(SOLO), {"SKYPILOT_NODE_RANK": "3", "A": "env", "B": "env"}, {"B": "secret"})
    assert env["SKYPILOT_NODE_RANK"] == "0" and env["A"] == "env" and env["B"] == "secret"


# ---- secrets ------------------------------------------------------------------------------


def parse(text: str, **flags: Any) -> Any:
    data = load_yaml(text, "job.yaml")
    return parse_spec(apply_flags(data, **flags) if flags else data, "job.yaml")


def test_secrets_are_read_like_skypilots_and_filled_from_the_command_line() -> None:
    spec, warnings = parse("run: x\nsecrets:\n  HF_TOKEN: null\n  WANDB_KEY: abc\n  N: 12\n",
                           secrets=["HF_TOKEN=hf_123"])
    assert spec.secrets == {"HF_TOKEN": "hf_123", "WANDB_KEY": "abc", "N": "12"} and warnings == []
    again = parse("run: x\nsecrets:\n  WANDB_KEY: abc\n", secrets=["WANDB_KEY=override"])[0]
    assert again.secrets == {"WANDB_KEY": "override"}
    assert spec_from_dict(spec.to_dict()).secrets == spec.secrets
    assert "hf_123" not in repr(spec)


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        ("run: x\nsecrets:\n  HF_TOKEN: null\n", None,
         "job.yaml: secrets.HF_TOKEN: is null and no value was given; give it with --secret HF_TOKEN=VALUE, "
         "or export HF_TOKEN in your shell and pass --secret HF_TOKEN"),
        ("run: x\nsecrets:\n  HYBRIDCTL_X: v4lue\n", None, "secrets.HYBRIDCTL_X: 'HYBRIDCTL_X' is not valid"),
        ("run: x\nsecrets: [a, b]\n", None, "job.yaml: secrets: SkyPilot managed secrets (a list of secret names) are not supported"),
        ("run: x\nsecrets:\n  K: [v4lue]\n", None, "job.yaml: secrets.K: a list is not valid"),
        ("run: x\n", ["1BAD=v4lue"], "--secret: '1BAD' is not valid"),
        ("run: x\n", ["K=v4l\0ue"], "--secret: holds a NUL character"),
    ],
)
def test_a_bad_secret_is_refused_without_showing_its_value(text: str, flags: Any, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse(text, **({"secrets": flags} if flags else {}))
    assert message in exc.value.message and "v4l" not in exc.value.message and exc.value.exit_code == 2


def test_show_masks_secrets_for_the_owner_and_redact_for_others() -> None:
    spec = parse("run: x\nenvs:\n  A: plain\nsecrets:\n  HF_TOKEN: hf_123\n")[0].to_dict()
    mine, theirs = mask_secrets(spec), redact(spec)
    assert mine["secrets"] == theirs["secrets"] == {"HF_TOKEN": "<secret>"} and mine["envs"] == {"A": "plain"}
    assert "hf_123" not in json.dumps(mine) + json.dumps(theirs)
    assert spec["secrets"] == {"HF_TOKEN": "hf_123"}  # not changed in place
