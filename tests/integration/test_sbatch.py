"""Slurm batch scripts end to end: `submit --dry-run` prints the spec and sends nothing; on a real
agent, the `srun`/`scontrol` shims and `--signal` + `--requeue` (PyTorch Lightning's SLURM
pattern); on a real controller and nodes, public corpus scripts (tests/data/sbatch) submitted
unchanged, with their SLURM_* variables, working directory and srun copies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import yaml

from tests.agent.agent_harness import AgentProc
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "sbatch"


def cli(*args: str, cwd: Path | None = None, env: Dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCTL_")}
    # No controller: a dry run must never need one (this socket does not exist).
    base.update({"HYBRIDCTL_SOCKET": "/nonexistent/hybridctl.sock", "PYTHONPATH": str(REPO)})
    return subprocess.run([sys.executable, "-m", "hybridctl.cli.main", *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_dry_run_prints_the_spec_of_a_batch_script_and_sends_nothing(tmp_path: Path) -> None:
    res = cli("submit", "--dry-run", "--dependency", "afterok:12", str(CORPUS / "pita_lightning_requeue.sbatch"),
              cwd=tmp_path, env={"HF_TOKEN": "hf_secret_value", "WANDB_PROJECT": "lj55"})
    assert res.returncode == 0, res.stderr
    assert "hf_secret_value" not in res.stdout + res.stderr
    spec = yaml.safe_load(res.stdout)
    assert spec["name"] == "h100_rdem" and spec["workdir"] == str(tmp_path)
    assert spec["resources"] == {"cpus": 24, "accelerators": "a100l:4", "memory": "393216M"}
    assert spec["slurm"]["signal"] == "USR1" and spec["slurm"]["requeue"] is True
    assert spec["depends_on"] == "afterok:12" and spec["envs"]["WANDB_PROJECT"] == "lj55"
    assert spec["secrets"] == {"HF_TOKEN": None} and "PWD" not in spec["envs"]
    assert "short-unkillable" in res.stderr  # the unmapped partition is warned about
    # The printed YAML is itself a job file hybridctl reads the same way.
    printed = tmp_path / "job.yaml"
    printed.write_text(res.stdout)
    again = cli("submit", "--dry-run", "--secret", "HF_TOKEN=x", str(printed), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load(again.stdout)["run"] == spec["run"]


def test_dry_run_refuses_what_it_cannot_run_naming_the_directive(tmp_path: Path) -> None:
    res = cli("submit", "--dry-run", str(CORPUS / "ml_bees_exclude.sbatch"), cwd=tmp_path)
    assert res.returncode == 2 and "--exclude" in res.stderr and res.stdout == ""
    res = cli("submit", "--dry-run", "--sbatch", str(CORPUS / "muss_single_gpu.sbatch"), "--dependency",
              "afterany:3?afterok:4", cwd=tmp_path)
    assert res.returncode == 2 and "--dependency" in res.stderr


def test_dry_run_of_a_yaml_file(tmp_path: Path) -> None:
    job = tmp_path / "task.yaml"
    job.write_text("name: t\nresources: {accelerators: A100:1}\nrun: python train.py\n")
    res = cli("submit", "--dry-run", "--time-limit", "1h", str(job), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout) == {"name": "t", "resources": {"accelerators": "A100:1"},
                                          "run": "python train.py", "time_limit": "1h"}


# ---- the agent side: shims, --signal, requeue -------------------------------------------------


@pytest.fixture
def agent() -> Iterator[AgentProc]:
    a = AgentProc(["--simulate-gpus", "2:T4", "--interval", "0.2"]).start()
    os.chmod(a.base, 0o711)
    try:
        yield a
    finally:
        a.cleanup()


def launch(agent: AgentProc, key: str, run: str, slurm: Dict[str, Any], **job: Any) -> None:
    envs = {"SLURM_JOB_ID": "42", "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "127.0.0.1",
            "SLURM_NTASKS_PER_NODE": str(slurm.get("ntasks_per_node", 1)), **job.pop("envs", {})}
    agent.call("launch", job={"key": key, "run": run, "uid": os.getuid(), "slurm": slurm, "envs": envs, **job})


def out(agent: AgentProc, key: str, stream: str = "stdout") -> str:
    return str(agent.call("logs", key=key, stream=stream, max_bytes=1 << 20)["data"])


def test_srun_runs_its_copies_and_scontrol_expands_hostnames(agent: AgentProc) -> None:
    run = ("srun sh -c 'echo task $SLURM_PROCID/$SLURM_LOCALID of $SLURM_NTASKS' | sort\n"
           "scontrol show hostnames \"$SLURM_JOB_NODELIST\"\n"
           "scontrol show hostnames 'gpu[01-02]'\n"
           "command -v srun\n")
    launch(agent, "80.0", run, {"ntasks_per_node": 3}, envs={"SLURM_NTASKS": "3"})
    done = agent.wait_exited("80.0")
    assert done["exit_code"] == 0, out(agent, "80.0", "stderr")
    lines = out(agent, "80.0").split("\n")
    assert lines[:6] == ["task 0/0 of 3", "task 1/1 of 3", "task 2/2 of 3", "127.0.0.1", "gpu01", "gpu02"]
    assert lines[6] == str(agent.job_dir("80.0") / "bin" / "srun")


def lightning_like(tmp: Path) -> str:
    """A trainer as Lightning's SLURM connector behaves: on SIGUSR1 it saves a checkpoint and runs
    `scontrol requeue $SLURM_JOB_ID`, then keeps going until Slurm (here, hybridctl) stops it."""
    return (
        f"{sys.executable} -c '\n"
        "import os, signal, subprocess, time\n"
        "def on_usr1(sig, frame):\n"
        f"    open(\"{tmp}/ckpt\", \"w\").write(\"step\")\n"
        "    subprocess.run([\"scontrol\", \"requeue\", os.environ[\"SLURM_JOB_ID\"]], check=True)\n"
        "signal.signal(signal.SIGUSR1, on_usr1)\n"
        "print(\"training\", flush=True)\n"
        "for _ in range(600): time.sleep(0.1)\n"
        "'\n"
    )


def test_signal_before_the_time_limit_then_scontrol_requeue_stops_the_job_for_a_requeue(
        agent: AgentProc, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)
    started = time.monotonic()
    launch(agent, "81.0", "srun " + lightning_like(tmp_path), {"signal": "USR1", "signal_before": 28, "requeue": True},
           time_limit=30)
    done = agent.wait_exited("81.0")
    took = time.monotonic() - started
    assert done["reason"] == "requeue: the job asked (scontrol requeue)", (done, out(agent, "81.0", "stderr"))
    assert (tmp_path / "ckpt").read_text() == "step"
    assert took < 25, f"the job ran {took:.1f}s: it was stopped by its time limit, not by its requeue"


def test_a_batch_shell_trap_gets_the_signal_and_exiting_after_it_is_a_requeue(agent: AgentProc) -> None:
    run = "trap 'echo got USR1; exit 1' USR1\necho up\nfor i in $(seq 300); do sleep 0.1; done\n"
    launch(agent, "82.0", run, {"signal": "USR1", "signal_before": 1, "signal_batch": True, "requeue": True},
           time_limit=2)
    done = agent.wait_exited("82.0")
    assert out(agent, "82.0") == "up\ngot USR1\n"
    assert done["reason"] == "requeue: stopped after --signal USR1 with --requeue", done
    # Without --requeue the same stop is the job's own exit (and a time limit stays final).
    launch(agent, "83.0", run, {"signal": "USR1", "signal_before": 1, "signal_batch": True}, time_limit=2)
    done = agent.wait_exited("83.0")
    assert done["exit_code"] == 1 and not done.get("reason"), done


def test_without_b_the_signal_reaches_the_steps_not_the_batch_shell(agent: AgentProc) -> None:
    # Slurm sends --signal=USR1 (no B:) to the job's steps: here the `sleep`, which dies of it; a
    # bash without a trap would die too, so it must not get it, and carries on.
    launch(agent, "86.0", "sleep 20; echo survived $?\n", {"signal": "USR1", "signal_before": 28}, time_limit=30)
    done = agent.wait_exited("86.0", timeout=25)
    assert out(agent, "86.0") == "survived 138\n" and done["exit_code"] == 0 and not done.get("reason"), done


def test_no_requeue_refuses_scontrol_requeue(agent: AgentProc) -> None:
    launch(agent, "84.0", "scontrol requeue $SLURM_JOB_ID; echo rc=$?", {"requeue": False})
    done = agent.wait_exited("84.0")
    assert out(agent, "84.0") == "rc=1\n" and done["exit_code"] == 0 and not done.get("reason"), done
    assert "--no-requeue" in out(agent, "84.0", "stderr")


def test_a_job_not_from_a_batch_script_gets_no_shims(agent: AgentProc) -> None:
    agent.call("launch", job={"key": "85.0", "run": "command -v scontrol || echo none", "uid": os.getuid()})
    agent.wait_exited("85.0")
    assert out(agent, "85.0") == "none\n"
    assert not (agent.job_dir("85.0") / "bin").exists()
    assert wait_for(lambda: json.dumps(agent.job("85.0")), what="json listing")


# ---- a real controller and nodes: corpus scripts submitted unchanged ----------------------------

FAKE = '''
import json, os, signal, sys, time
"""Stands in for `python`, `python3` and `torchrun` in the corpus scripts: records what the
program would see (argv, cwd, SLURM_* variables), and for `training.py` behaves as PyTorch
Lightning's SLURM connector: on SIGUSR1 rank 0 saves a checkpoint and runs
`scontrol requeue $SLURM_JOB_ID`; a run that finds the checkpoint resumes and finishes."""
out = os.environ["SCRIPT_TEST_OUT"]
me = dict(argv=sys.argv, cwd=os.getcwd(), gpus=os.environ.get("CUDA_VISIBLE_DEVICES"),
          env={k: v for k, v in os.environ.items() if k.startswith("SLURM_")})
with open(os.path.join(out, "calls.jsonl"), "a") as f:
    f.write(json.dumps(me) + "\\n")
if sys.argv[1:2] == ["training.py"]:
    ckpt = os.path.join(out, "last.ckpt")
    if os.path.exists(ckpt):
        print("resumed from", open(ckpt).read(), flush=True)
        sys.exit(0)
    def on_usr1(sig, frame):
        if os.environ["SLURM_PROCID"] == "0":
            open(ckpt, "w").write("epoch 3")
            os.system("scontrol requeue " + os.environ["SLURM_JOB_ID"])
    signal.signal(signal.SIGUSR1, on_usr1)
    print("training", os.environ["SLURM_PROCID"], flush=True)
    for _ in range(1200):
        time.sleep(0.1)
    sys.exit(3)
'''


SMALL = ("--cpus", "1", "--memory", "1G")
"""The lab's servers are this machine (2 CPUs): flags override the script's #SBATCH values, as
sbatch's command-line options do."""


@pytest.fixture
def shell(tmp_path: Path) -> Dict[str, Any]:
    """A submitting shell: its directory, and PATH with stand-ins for python/python3/torchrun/
    module/conda that the corpus scripts call (exported to the job, as sbatch does)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "fake.py").write_text(FAKE)
    for name in ("python", "python3", "torchrun"):
        stub = bindir / name
        stub.write_text(f"#!/bin/sh\nexec {sys.executable} {bindir / 'fake.py'} \"$@\"\n")
        stub.chmod(0o755)
    for name in ("module", "conda"):
        stub = bindir / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    work = tmp_path / "proj"
    work.mkdir()
    for p in (tmp_path, bindir, work):
        os.chmod(p, 0o777)
    return {"cwd": work, "env": {"PATH": f"{bindir}:{os.environ['PATH']}", "SCRIPT_TEST_OUT": str(work)}}


def submit(lab: Any, shell: Dict[str, Any], *args: str) -> str:
    env = {**lab.controller.env, **shell["env"]}
    res = subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "submit", *args], cwd=shell["cwd"], env=env,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def ended(lab: Any, job: str, timeout: float = 90) -> Dict[str, Any]:
    from tests.waiting import wait_for as wait

    def done() -> Any:
        j = lab.controller.cli_json("show", job)
        return j if all(t["state"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT") for t in j["tasks"]) else None

    return wait(done, timeout, what=f"job {job} to end")


def calls(shell: Dict[str, Any]) -> list:
    path = shell["cwd"] / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_corpus_scripts_run_unchanged_with_their_variables_directory_and_srun_copies(lab: Any, shell: Dict[str, Any]) -> None:
    # A single-GPU script, and the same as a 3-task array (--array on the command line).
    job = submit(lab, shell, str(CORPUS / "muss_single_gpu.sbatch"))
    arr = submit(lab, shell, "--array", "1-3", str(CORPUS / "muss_single_gpu.sbatch"))
    # Two tasks per node under srun (Lightning DDP script), 2 GPUs.
    ddp = submit(lab, shell, *SMALL, "--time-limit", "1h", str(CORPUS / "ml_bees_ddp_signal.sbatch"))
    for j in (job, arr):
        assert all(t["state"] == "SUCCEEDED" for t in ended(lab, j)["tasks"])
    seen = calls(shell)
    single = [c for c in seen if c["env"]["SLURM_JOB_ID"] == job]
    assert len(single) == 1 and single[0]["argv"][1:] == ["test_slurm.py"]
    s = single[0]
    assert s["cwd"] == str(shell["cwd"]) and s["env"]["SLURM_SUBMIT_DIR"] == str(shell["cwd"])
    assert (s["env"]["SLURM_NNODES"], s["env"]["SLURM_NTASKS"], s["env"]["SLURM_PROCID"]) == ("1", "1", "0")
    assert s["env"]["SLURM_GPUS_ON_NODE"] == "1" and s["env"]["SLURM_JOB_GPUS"] == s["gpus"]
    assert s["env"]["SLURM_MEM_PER_NODE"] == "1000" and s["env"]["SLURM_CPUS_PER_TASK"] == "1"
    tasks = sorted(c["env"]["SLURM_ARRAY_TASK_ID"] for c in seen if c["env"].get("SLURM_ARRAY_JOB_ID") == arr)
    assert tasks == ["1", "2", "3"]
    assert {c["env"]["SLURM_ARRAY_TASK_COUNT"] for c in seen if c["env"].get("SLURM_ARRAY_JOB_ID") == arr} == {"3"}
    # The DDP script's srun started its two tasks (it keeps training until cancelled).
    from tests.waiting import wait_for as wait

    ranks = wait(lambda: sorted((c["env"]["SLURM_PROCID"], c["env"]["SLURM_LOCALID"]) for c in calls(shell)
                                if c["env"]["SLURM_JOB_ID"] == ddp) or None, 60, what="the DDP tasks")
    wait(lambda: len([c for c in calls(shell) if c["env"]["SLURM_JOB_ID"] == ddp]) == 2, 30, what="both tasks")
    ranks = sorted((c["env"]["SLURM_PROCID"], c["env"]["SLURM_LOCALID"], c["env"]["SLURM_NTASKS"])
                   for c in calls(shell) if c["env"]["SLURM_JOB_ID"] == ddp)
    assert ranks == [("0", "0", "2"), ("1", "1", "2")]
    lab.controller.cli("cancel", ddp, check=True)
    ended(lab, ddp)


def test_a_multi_node_script_srun_torchrun_on_every_node(lab: Any, shell: Dict[str, Any]) -> None:
    # pytorch/examples asks for 4 nodes; the lab has 3 servers, so --nodes 2 on the command line.
    job = submit(lab, shell, *SMALL, "--nodes", "2", str(CORPUS / "pytorch_examples_multinode.sbatch"))
    assert ended(lab, job)["tasks"][0]["state"] == "SUCCEEDED"
    runs = sorted((c["env"]["SLURM_NODEID"], c["env"]["SLURM_PROCID"]) for c in calls(shell) if c["argv"][0].endswith("fake.py"))
    assert runs == [("0", "0"), ("1", "1")]
    for c in calls(shell):
        assert c["env"]["SLURM_NNODES"] == "2" and c["env"]["SLURM_NTASKS"] == "2"
        assert c["argv"][1:4] == ["--nnodes", "4", "--nproc_per_node"]
        assert len(c["env"]["SLURM_JOB_NODELIST"].split(",")) == 2


def test_lightnings_requeue_pattern_resumes_from_its_checkpoint_without_using_max_restarts(
        lab: Any, shell: Dict[str, Any]) -> None:
    # --signal=SIGUSR1@90 in the script; a 95 s limit sends it 5 s after the start.
    job = submit(lab, shell, *SMALL, "--time-limit", "95s", str(CORPUS / "ml_bees_ddp_signal.sbatch"))
    done = ended(lab, job, timeout=120)
    t = done["tasks"][0]
    assert t["state"] == "SUCCEEDED", done
    assert t["attempt"] == 1 and t.get("restarts", 0) == 0, t
    log = lab.controller.cli("logs", job, check=True).stdout
    assert "resumed from epoch 3" in log, log
    history = json.dumps(done.get("events") or done)
    assert "requeue" in history


def test_an_afterany_chain_and_a_list_array_through_the_real_controller(lab: Any, shell: Dict[str, Any]) -> None:
    """Slurm's afterany runs after a failed job (afterok would be cancelled), and a list array
    ('1,3,8%1') runs exactly its indices, with SLURM_ARRAY_TASK_COUNT/MIN/MAX of the list."""
    fail = shell["cwd"] / "fail.sbatch"
    fail.write_text("#!/bin/bash\n#SBATCH --job-name=first\n#SBATCH --time=5\nexit 1\n")
    step = shell["cwd"] / "step.sbatch"
    step.write_text("#!/bin/bash\n#SBATCH --job-name=step\n#SBATCH --array=1,3,8%1\npython step.py\n")
    first = submit(lab, shell, *SMALL, str(fail))
    after = submit(lab, shell, *SMALL, "--dependency", f"afterany:{first}", str(step))
    doomed = submit(lab, shell, *SMALL, "--dependency", f"afterok:{first}", str(step))
    shown = lab.controller.cli("show", after, check=True).stdout
    assert f"afterany:{first} (" in shown, shown
    assert ended(lab, first)["tasks"][0]["state"] == "FAILED"
    assert {t["state"] for t in ended(lab, doomed)["tasks"]} == {"CANCELLED"}
    done = ended(lab, after)
    assert [(t["task"], t["state"]) for t in done["tasks"]] == [(1, "SUCCEEDED"), (3, "SUCCEEDED"), (8, "SUCCEEDED")]
    assert f"afterany:{first} (met)" in lab.controller.cli("show", after, check=True).stdout
    seen = [c["env"] for c in calls(shell) if c["env"].get("SLURM_ARRAY_JOB_ID") == after]
    assert sorted(e["SLURM_ARRAY_TASK_ID"] for e in seen) == ["1", "3", "8"]
    assert {(e["SLURM_ARRAY_TASK_COUNT"], e["SLURM_ARRAY_TASK_MIN"], e["SLURM_ARRAY_TASK_MAX"]) for e in seen} == {
        ("3", "1", "8")}
