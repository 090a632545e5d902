"""The researcher's path end to end: real controller process, real CLI processes, real SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.integration.harness import ControllerProc
from tests.waiting import wait_for


def count_jobs(c: ControllerProc) -> int:
    with sqlite3.connect(c.home / "hybridctl.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def test_submit_prints_id_and_queue_shows_it_placed(controller: ControllerProc) -> None:
    res = controller.cli("submit", "--gpus", "A100:2", "--name", "train", "--", "python", "train.py", "--lr", "0.1")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    assert job_id.isdigit()

    def placed() -> dict | None:
        rows = controller.cli_json("queue")
        return rows[0] if rows and rows[0]["state"] == "STARTING" else None

    row = wait_for(placed, what="job placed")
    assert row["nodes"] == "gpu01"
    assert len(row["gpu_ids"].split(",")) == 2
    text = controller.cli("queue", check=True).stdout
    assert "JOBID" in text and job_id in text and "gpu01" in text
    show = controller.cli_json("show", job_id)
    assert show["spec"]["run"] == "python train.py --lr 0.1"
    assert [e["to"] for e in show["events"]][:2] == ["PENDING", "STARTING"]


def test_typed_request_lands_on_the_matching_model_of_a_mixed_node(controller: ControllerProc) -> None:
    job_id = controller.cli("submit", "--gpus", "A6000:1", "--", "true", check=True).stdout.strip()
    row = wait_for(lambda: next((r for r in controller.cli_json("queue") if r["state"] == "STARTING"), None),
                   what="placement")
    assert str(row["job_id"]) == job_id
    assert (row["nodes"], row["gpu_ids"]) == ("gpu02", "2")


def test_yaml_file_with_flag_overrides_and_json_record(controller: ControllerProc, tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("name: sweep\nresources:\n  accelerators: A100:1\n  cpus: 4\nenvs:\n  LR: 0.1\nrun: python sweep.py\n")
    res = controller.cli("submit", str(spec), "--priority", "5", "--array", "1-20%4", "--json")
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout)
    assert rec["name"] == "sweep" and rec["priority"] == 5 and rec["array"] == "1-20%4"
    assert len(rec["tasks"]) == 20 and rec["spec"]["envs"] == {"LR": "0.1"}
    # The %4 throttle: at most four tasks start although 8 A100s are free.
    wait_for(lambda: sum(r["state"] == "STARTING" for r in controller.cli_json("queue")) == 4, what="4 started")
    rows = controller.cli_json("queue")
    pending = [r for r in rows if r["state"] == "PENDING"]
    assert len(pending) == 16 and all("throttle" in r["reason"] for r in pending)
    text = controller.cli("queue").stdout
    assert f"{rec['id']}_[5-20]" in text  # pending tasks collapse into one row, as in squeue


@pytest.mark.parametrize(
    "args, field",
    [
        (["--gpus", "-1", "--", "true"], "gpus"),
        (["--gpus", "A100:x", "--", "true"], "A100:x"),
        (["--memory", "lots", "--", "true"], "lots"),
        (["--array", "5-1", "--", "true"], "5-1"),
        (["--time-limit", "soon", "--", "true"], "soon"),
        (["--env", "1BAD=x", "--", "true"], "1BAD"),
    ],
)
def test_bad_flags_exit_2_name_the_value_and_write_nothing(controller: ControllerProc, args: list[str], field: str) -> None:
    res = controller.cli("submit", *args)
    assert res.returncode == 2
    assert field in res.stderr and res.stdout == ""
    assert "Traceback" not in res.stderr
    assert count_jobs(controller) == 0


@pytest.mark.parametrize(
    "text, needle",
    [
        ("run: [unclosed\n  x: y\n", "line"),
        ("name: x\nrun: ''\n", "run"),
        ("run: echo\nresources:\n  acelerators: 2\n", "accelerators"),
    ],
)
def test_bad_yaml_exit_2_with_file_and_field(controller: ControllerProc, tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "job.yaml"
    f.write_text(text)
    res = controller.cli("submit", str(f))
    assert res.returncode == 2, res.stderr
    assert "job.yaml" in res.stderr and needle in res.stderr
    assert count_jobs(controller) == 0


def test_job_too_big_for_any_node_is_refused_with_largest_shape(controller: ControllerProc) -> None:
    res = controller.cli("submit", "--gpus", "16", "--", "true")
    assert res.returncode == 2
    assert "gpu01" in res.stderr and "8" in res.stderr
    assert count_jobs(controller) == 0


def test_pending_reason_cancel_priority_and_show_history(controller: ControllerProc) -> None:
    first = controller.cli("submit", "--gpus", "A100:8", "--", "sleep", "1", check=True).stdout.strip()
    second = controller.cli("submit", "--gpus", "A100:8", "--", "true", check=True).stdout.strip()
    row = wait_for(lambda: next((r for r in controller.cli_json("queue") if str(r["job_id"]) == second and r["reason"]), None),
                   what="a reason for the second job")
    assert "A100" in row["reason"]
    assert controller.cli("priority", second, "50", check=True).returncode == 0
    res = controller.cli("cancel", first, second)
    assert res.returncode == 0 and first in res.stdout
    assert controller.cli_json("queue") == []
    hist = controller.cli_json("show", second)
    assert hist["tasks"][0]["state"] == "CANCELLED"
    assert any(e["to"] == "PRIORITY" for e in hist["events"])
    again = controller.cli("cancel", second)
    assert "already finished" in again.stderr


def test_unknown_job_is_exit_4(controller: ControllerProc) -> None:
    res = controller.cli("show", "999")
    assert res.returncode == 4 and "999" in res.stderr


def test_controller_down_is_one_line_exit_1(tmp_path: Path) -> None:
    from tests.integration.harness import make_controller

    c = make_controller(tmp_path, {})
    res = c.cli("queue")
    assert res.returncode == 1
    assert "not running" in res.stderr and "hybridctl server" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_drain_moves_work_elsewhere_and_reason_names_the_node(controller: ControllerProc) -> None:
    controller.cli("node", "drain", "gpu01", "--reason", "fan noise", check=True)
    nodes = {n["name"]: n for n in controller.cli_json("nodes")}
    assert nodes["gpu01"]["state"] == "DRAINED" and nodes["gpu01"]["state_reason"] == "fan noise"
    job = controller.cli("submit", "--gpus", "A100:1", "--", "true", check=True).stdout.strip()
    row = wait_for(lambda: next((r for r in controller.cli_json("queue") if r["reason"]), None), what="reason")
    assert str(row["job_id"]) == job and "gpu01" in row["reason"]
    controller.cli("node", "resume", "gpu01", check=True)
    wait_for(lambda: controller.cli_json("queue")[0]["state"] == "STARTING", what="placed after resume")
    # A node with work on it drains (DRAINING) rather than being DRAINED.
    controller.cli("node", "drain", "gpu01", check=True)
    assert {n["name"]: n["state"] for n in controller.cli_json("nodes")}["gpu01"] == "DRAINING"


def test_usage_counts_gpu_hours(controller: ControllerProc) -> None:
    controller.cli("submit", "--gpus", "A100:4", "--", "true", check=True)
    wait_for(lambda: controller.cli_json("queue")[0]["state"] == "STARTING", what="placed")
    rows = wait_for(lambda: controller.cli_json("usage"), what="usage rows")
    assert rows[0]["gpu_hours"] >= 0 and rows[0]["user"]


def test_submit_queue_show_cancel_import_no_heavy_module(controller: ControllerProc) -> None:
    """The fast-CLI rule: the researcher's commands never import textual, asyncssh or torch."""
    import subprocess
    import sys

    probe = ("import sys; from hybridctl.cli.main import main; rc = main(sys.argv[1:]); "
             "print('HEAVY', [m for m in ('textual', 'asyncssh', 'torch') if m in sys.modules], rc)")

    def run(*args: str) -> str:
        res = subprocess.run([sys.executable, "-c", probe, *args], env=controller.env, capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
        return res.stdout

    out = run("submit", "--gpus", "1", "--", "true")
    job = out.split()[0]
    assert out.splitlines()[-1] == "HEAVY [] 0"
    for args in (["queue", "--all"], ["show", job], ["cancel", job]):
        assert run(*args).splitlines()[-1] == "HEAVY [] 0", args
