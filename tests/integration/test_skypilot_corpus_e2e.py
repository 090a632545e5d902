"""A sample of SkyPilot's own task files (tests/data/skypilot/) submitted with the real CLI to a
real controller and three simulated GPU nodes (node1 8×A100, node2 4×RTX3090, node3 4×A100):
accelerator candidates choose a type the fleet has and `show` says which, a multi-node file
runs on two nodes, a pipeline runs its tasks one after the other, and a file whose candidates the
fleet can never hold is refused at submit.

Each file is submitted as written except `setup` and `run` (they install vLLM and friends; here
`run` prints what the job sees), `workdir` and `resources.image_id` (dropped: the test nodes
have no container runtime, and a `docker:` image is refused there at submit); its resources, num_nodes, envs, pipeline
structure and the keys hybridctl warns about are the file's own. CPUs and memory are given as
flags (`--cpus 1`), as a user on a small node would: the test machine has few cores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.integration.nodes import SshLab
from tests.waiting import wait_for

CORPUS = Path(__file__).resolve().parents[1] / "data" / "skypilot"
PRINT = 'echo "gpus=$SKYPILOT_NUM_GPUS_PER_NODE nodes=$SKYPILOT_NUM_NODES rank=$SKYPILOT_NODE_RANK cuda=$CUDA_VISIBLE_DEVICES"'


def as_test_task(rel: str, dest: Path) -> Path:
    """The corpus file with its setup/run replaced and its workdir dropped, every document kept."""
    docs = [d for d in yaml.safe_load_all((CORPUS / rel).read_text()) if d is not None]
    for d in docs:
        if "run" in d:
            d["run"] = PRINT
            d.pop("setup", None)
            d.pop("workdir", None)
            (d.get("resources") or {}).pop("image_id", None)  # the test nodes have no container runtime
    out = dest / rel.replace("/", "__")
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


def submit(lab: SshLab, path: Path, *flags: str) -> list[str]:
    envs = []
    for d in yaml.safe_load_all(path.read_text()):
        for k, v in ((d or {}).get("envs") or {}).items():
            if v is None:
                envs += ["--env", f"{k}=given"]
        for k, v in ((d or {}).get("secrets") or {}).items():
            if v is None:
                envs += ["--secret", f"{k}=given"]
    res = lab.controller.cli("submit", "--cpus", "1", *envs, *flags, str(path), timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def ended(lab: SshLab, job: str) -> dict[str, Any]:
    def done() -> Any:
        show = lab.controller.cli_json("show", job)
        return show if show["tasks"][0]["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    return wait_for(done, 120, what=f"job {job} to end (log: {lab.controller.log})")


def test_corpus_files_run_on_the_simulated_fleet(lab: SshLab, tmp_path: Path) -> None:
    # A set of 8 candidates ({L4:8, ..., A100:4, ...}): the first the fleet has is A100:4.
    (llama,) = submit(lab, as_test_task("llm/llama-3_1/llama-3_1.yaml", tmp_path), "--memory", "1G")
    # A set of 1-GPU candidates: A100:1.
    (sglang,) = submit(lab, as_test_task("llm/sglang/llama2.yaml", tmp_path))
    # Two nodes of A100:1 each.
    (deepspeed,) = submit(lab, as_test_task("examples/deepspeed-multinode/sky.yaml", tmp_path))
    # A pipeline of four tasks (V100 and T4 in the file, which the fleet lacks: A100 here, same counts).
    pipeline = submit(lab, as_test_task("examples/spot_pipeline/multi_jobs.yaml", tmp_path), "--gpu-type", "A100")

    show = ended(lab, llama)
    assert show["tasks"][0]["state"] == "SUCCEEDED", show
    assert show["tasks"][0]["gpu_type"] == "A100"
    assert "gpus=4 nodes=1 rank=0" in lab.controller.cli("logs", llama, check=True).stdout
    text = lab.controller.cli("show", llama, check=True).stdout
    assert "candidates {L4:8, A10g:8, A10:8, A100:4, A100:8, A100-80GB:2, A100-80GB:4, A100-80GB:8} (any)" in text
    assert "taken: A100" in text

    show = ended(lab, sglang)
    assert show["tasks"][0]["state"] == "SUCCEEDED" and show["tasks"][0]["gpu_type"] == "A100"
    assert "gpus=1 nodes=1" in lab.controller.cli("logs", sglang, check=True).stdout

    show = ended(lab, deepspeed)
    assert show["tasks"][0]["state"] == "SUCCEEDED", show
    assert len(show["tasks"][0]["nodes"].split(",")) == 2
    assert "gpus=1 nodes=2 rank=1" in lab.controller.cli("logs", deepspeed, "--rank", "1", check=True).stdout

    assert len(pipeline) == 4 and [int(j) for j in pipeline] == sorted(int(j) for j in pipeline)
    shows = [ended(lab, j) for j in pipeline]
    assert [s["tasks"][0]["state"] for s in shows] == ["SUCCEEDED"] * 4
    for before, after in zip(shows, shows[1:]):
        assert int(before["id"]) in after["spec"]["depends_on"]
        assert after["tasks"][0]["started_at"] >= before["tasks"][0]["ended_at"]
    assert [s["name"] for s in shows] == ["train1", "train2", "eval1", "eval2"]


def test_a_file_whose_candidates_the_fleet_never_holds_is_refused(lab: SshLab, tmp_path: Path) -> None:
    res = lab.controller.cli("submit", str(as_test_task("examples/multi_resources.yaml", tmp_path)))
    assert res.returncode == 2
    assert "none of the GPU candidates [A10g:1, L4:1] fits" in res.stderr, res.stderr
    res = lab.controller.cli("submit", str(as_test_task("examples/job-group-sdk/job_group.yaml", tmp_path)))
    assert res.returncode == 2 and "SkyPilot job groups" in res.stderr, res.stderr


def test_a_git_workdir_is_cloned_by_submit_and_the_job_runs_in_it(lab: SshLab, tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("git") is None:
        import pytest

        pytest.skip("git is not installed")
    src = tmp_path / "repo"
    src.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           "HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    for argv in (["init", "-q", "-b", "main"], ["add", "train.py"], ["commit", "-q", "-m", "v1"], ["tag", "v1"]):
        if argv[0] == "add":
            (src / "train.py").write_text("print('hello from v1')\n")
        subprocess.run(["git", "-C", str(src), *argv], check=True, env=env, capture_output=True)
    (src / "train.py").write_text("print('uncommitted')\n")  # the job must get the tagged commit
    task = tmp_path / "task.yaml"
    task.write_text(f"workdir:\n  url: file://{src}\n  ref: v1\nrun: {sys.executable} train.py\n")
    cache = tmp_path / "xdg"
    res = subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "submit", str(task)],
                         env={**lab.controller.env, "XDG_CACHE_HOME": str(cache)}, capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip()
    show = ended(lab, job)
    assert show["tasks"][0]["state"] == "SUCCEEDED", show
    assert show["spec"]["workdir"].startswith(str(cache / "hybridctl" / "git"))
    assert lab.controller.cli("logs", job, check=True).stdout.strip() == "hello from v1"
