"""Cache-aware placement through the real controller, two real sshd + agent nodes: a job whose
file_mounts one node already holds goes there (locality.weight 1) and moves nothing, `show` says
why and `nodes --cache` lists the node's cache; with weight 0 it goes to the first fitting node,
as before, and its data is copied again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import make_controller
from tests.integration.nodes import LabNode
from tests.integration.sshd import Sshd, keygen, require_sshd
from tests.waiting import wait_for

pytestmark = [pytest.mark.needs_sshd]


def sent_lines(home: Path) -> list[str]:
    return [ln.split("file_mounts: ")[1] for p in sorted(home.rglob("*.log"))
            for ln in p.read_text(errors="replace").splitlines() if "file_mounts: sent" in ln]


def finished(ctl: Any, job: str) -> dict[str, Any]:
    def probe() -> Any:
        t = ctl.cli_json("show", job)["tasks"][0]
        return t if t["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    return wait_for(probe, 120, what=f"job {job} to end")


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_a_job_goes_where_its_data_is_and_show_says_why(tmp_path: Path, weight: float) -> None:
    require_sshd()
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"part{i}.bin").write_bytes(os.urandom(300_000))
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"file_mounts:\n  data: {data}\nrun: ls data | wc -l\n")
    key = keygen(tmp_path / "id_ed25519")
    nodes = [LabNode(n, tmp_path / n, "1:T4", Sshd(tmp_path / n / "sshd", key)) for n in ("a", "b")]
    ctl = make_controller(tmp_path / "ctl", {"scheduler": {"tick_seconds": 1.0}, "fleet": {"poll_interval": 0.5},
                                             "locality": {"weight": weight}})
    try:
        for n in nodes:
            n.sshd.start()
            n.start_agent()
        ctl.start()
        for n in nodes:
            assert ctl.cli(*n.add_args(key), timeout=120).returncode == 0
        # The first run lands on b (a is drained): b's cache now holds the data.
        ctl.cli("node", "drain", "a", check=True)
        first = ctl.cli("submit", str(job_file), check=True).stdout.strip()
        assert finished(ctl, first)["state"] == "SUCCEEDED"
        ctl.cli("node", "resume", "a", check=True)
        wait_for(lambda: next(n for n in ctl.cli_json("nodes") if n["name"] == "b")["cache"]["objects"] == 3, 30,
                 what="b's cache listing in `nodes --json`")
        second = ctl.cli("submit", str(job_file), check=True).stdout.strip()
        t = finished(ctl, second)
        assert t["state"] == "SUCCEEDED"
        shown = ctl.cli_json("show", second)
        text = ctl.cli("show", second, check=True).stdout
        if weight:
            assert t["nodes"] == "b"
            assert shown["placed"] == {"0": "b: data 900 kB warm, moves 0 B"}  # saved 7 ms: not said
            assert "  placed     b: data 900 kB warm, moves 0 B" in text
            assert sent_lines(ctl.home)[-1].startswith("sent 0 bytes to b")
        else:
            assert t["nodes"] == "a" and "placed" not in shown and "placed     " not in text
            assert sent_lines(ctl.home)[-1].startswith("sent 900000 bytes to a")
        listed = {n["name"]: n for n in ctl.cli_json("nodes", "--cache")}
        assert sorted(i["bytes"] for i in listed["b"]["cache_items"]) == [300_000] * 3
        assert {i["kind"] for i in listed["b"]["cache_items"]} == {"data"}
        table = ctl.cli("nodes", "--cache", check=True).stdout
        assert "3 data objects" in table and "300 kB" in table
    finally:
        ctl.stop()
        for n in nodes:
            n.stop()
