"""SkyPilot's own public task files (tests/data/skypilot/, see its INDEX.md): each is accepted with
the same meaning, or refused (exit 2) with a message naming the SkyPilot feature hybridctl does
not do. Never "unknown key" for a key SkyPilot's schema accepts, never a YAML error for a
multi-document file.

Null `envs`/`secrets` values are filled as a user would on the command line (`--env`, `--secret`),
and a git workdir (`{url, ref}`) is replaced by a directory, as `hybridctl submit` does after
cloning it (tests/unit/test_skypilot_spec.py tests the clone itself)."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybridctl.core.errors import SpecError
from hybridctl.core.fit import candidates
from hybridctl.core.model import JobSpec, spec_from_dict
from hybridctl.core.spec import apply_flags, load_tasks, parse_spec

ROOT = Path(__file__).resolve().parents[1] / "data" / "skypilot"
FILES = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.y*ml"))

# Each refusal names the feature; these are every reason the corpus meets, with how many files.
REFUSALS = {
    r"resources\.accelerators: fractional GPUs \(\S+\) are not supported": 6,
    r"resources\.accelerators: TPUs \(\S+\) are not supported": 6,
    r"pool: SkyPilot pools .* are not supported": 6,
    r"execution: SkyPilot job groups .* are not supported": 4,
    r"run: is missing: a SkyPilot task without run: only sets up a long-lived cluster": 3,
}
ACCEPTED = 251


def submit_like_the_cli(task: dict[str, Any], source: str) -> tuple[JobSpec, list[str]]:
    """What `hybridctl submit FILE --env K=.. --secret K=..` makes of one task of a corpus file."""
    envs = [f"{k}=v" for k, v in (task.get("envs") or {}).items() if v is None]
    secrets = task.get("secrets") if isinstance(task.get("secrets"), dict) else {}
    given = [f"{k}=s3cret" for k, v in secrets.items() if v is None]
    if isinstance(task.get("workdir"), dict):
        task = {**task, "workdir": "/home/me/.cache/hybridctl/git/clone"}
    data = apply_flags(task, envs=envs or None, secrets=given or None, source=source)
    return parse_spec(data, source, default_use_spot=False)  # cloud.default_market: on-demand


def outcome(rel: str) -> tuple[list[JobSpec], str | None]:
    try:
        tasks = load_tasks((ROOT / rel).read_text(), rel)
        return [submit_like_the_cli(t, rel)[0] for t in tasks], None
    except SpecError as exc:
        assert exc.exit_code == 2
        return [], str(exc)


def raw_docs(rel: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / rel).read_text()) if d is not None]


def test_the_corpus_is_skypilots_own_task_files() -> None:
    assert len(FILES) >= 200
    index = (ROOT / "INDEX.md").read_text()
    assert all(f"`{rel}`" in index for rel in FILES), "INDEX.md lists every file"


def test_every_file_is_accepted_or_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    accepted = 0
    refused: collections.Counter[str] = collections.Counter()
    for rel in FILES:
        specs, error = outcome(rel)
        if error is None:
            accepted += 1
            continue
        assert "unknown key" not in error and "YAML error" not in error and "YAML syntax" not in error, error
        assert error.startswith(f"{rel}: "), error
        reasons = [r for r in REFUSALS if re.search(r, error)]
        assert reasons, f"refused for a reason that names no SkyPilot feature: {error}"
        refused[reasons[0]] += 1
    with capsys.disabled():
        print(f"\nSkyPilot corpus: {len(FILES)} files, {accepted} accepted, {sum(refused.values())} refused")
        for reason, n in refused.most_common():
            print(f"  {n:3d} {reason}")
    assert dict(refused) == REFUSALS
    assert accepted == ACCEPTED


def _accel_mentioned(doc: dict[str, Any]) -> bool:
    res = doc.get("resources") or {}
    entries = [res, *(res.get("any_of") or ()), *(res.get("ordered") or ())]
    return any(e.get("accelerators") is not None or e.get("gpus") is not None for e in entries)


@pytest.mark.parametrize("rel", FILES)
def test_accepted_files_keep_their_meaning(rel: str) -> None:
    specs, error = outcome(rel)
    if error is not None:
        return  # the reason is checked above
    docs = raw_docs(rel)
    tasks = docs[1:] if len(docs) > 1 and set(docs[0]) <= {"name", "execution"} else docs
    assert len(specs) == len(tasks)
    for spec, doc in zip(specs, tasks):
        assert spec.run == doc["run"]
        assert spec.setup == (doc.get("setup") or "" if str(doc.get("setup") or "").strip() else "")
        assert spec.num_nodes == doc.get("num_nodes", 1)
        assert set(spec.envs) == set(doc.get("envs") or {})
        for key, value in (doc.get("envs") or {}).items():
            if isinstance(value, str):
                assert spec.envs[key] == value
        assert set(spec.secrets) == set(doc.get("secrets") or {})
        # A GPU request anywhere (top level, any_of, ordered) never becomes a 0-GPU job.
        gpus = [c.gpus for c in candidates(spec.resources)]
        assert (min(gpus) > 0) == _accel_mentioned(doc) or doc["resources"].get("accelerators") in (0, "0")
        assert spec_from_dict(spec.to_dict()) == spec


# Spot checks of meaning, file by file: (file, task index, GPU candidates, ordered, num_nodes, use_spot).
MEANINGS = [
    ("llm/vllm/serve.yaml", 0, [("A100-80GB", 8)], False, 1, False),
    ("examples/distributed-pytorch/train.yaml", 0, [("L4", 2)], False, 2, False),
    ("llm/sglang/llama2.yaml", 0, [("L4", 1), ("A10G", 1), ("A10", 1), ("A100", 1), ("A100-80GB", 1)], False, 1, False),
    ("llm/llama-3_1/llama-3_1.yaml", 0,
     [("L4", 8), ("A10g", 8), ("A10", 8), ("A100", 4), ("A100", 8), ("A100-80GB", 2), ("A100-80GB", 4), ("A100-80GB", 8)],
     False, 1, False),
    ("examples/multi_resources.yaml", 0, [("A10g", 1), ("L4", 1)], True, 1, False),  # GPUs only inside `ordered`
    ("examples/multi_accelerators.yaml", 0, [("A100-40GB", 1), ("K80", 1), ("V100", 1), ("T4", 1), ("T4", 4)],
     False, 1, False),
    ("examples/serve/spot_policy/multi_accelerators.yaml", 0, [("V100", 1), ("T4", 1)], True, 1, True),
    ("examples/instance-aware-autoscaling/instance-aware_lambda.yml", 0, [("A100", 1), ("A10", 1)], True, 1, False),
    ("examples/gcp_gpu_direct_tcpx/tcpx_sglang_serving.yaml", 0, [("H100", 8)], False, 2, False),  # resources.gpus
    ("llm/rag/serve_rag.yaml", 0, None, False, 1, True),  # any_of: [use_spot: true, use_spot: false]
]


@pytest.mark.parametrize(("rel", "index", "cands", "ordered", "nodes", "spot"), MEANINGS)
def test_meaning_of_chosen_files(
    rel: str, index: int, cands: list[tuple[str, int]] | None, ordered: bool, nodes: int, spot: bool
) -> None:
    if not (ROOT / rel).exists():
        pytest.skip(f"{rel} is not in this corpus")
    specs, error = outcome(rel)
    assert error is None, error
    spec = specs[index]
    got = [(c.gpu_type, c.gpus) for c in candidates(spec.resources)]
    if cands is not None:
        assert got == cands
    assert spec.resources.ordered == ordered
    assert spec.num_nodes == nodes
    assert spec.resources.use_spot == spot  # files that do not say use_spot: the market of parse_spec's default


def test_pipelines_become_chains_of_tasks() -> None:
    specs, error = outcome("examples/spot_pipeline/multi_jobs.yaml")
    assert error is None, error
    docs = raw_docs("examples/spot_pipeline/multi_jobs.yaml")
    assert len(specs) == len(docs) - 1 >= 2
    assert [s.name for s in specs] == [d.get("name") or docs[0]["name"] for d in docs[1:]]
    headless, error = outcome("llm/gpt-2/gpt2-pipeline.yaml")  # no header: every document is a task
    assert error is None and len(headless) == 2
