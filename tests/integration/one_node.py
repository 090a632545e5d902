"""One real node behind a real sshd and a subprocess controller, for tests whose jobs run as
`nobody` and touch checkpoints (test_trust_files.py, test_checkpoint_chunks.py): the `lab` and
`world_base` fixtures, and `store(lab, job)`, the controller's copy of a job's checkpoint."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import require
from tests.integration.harness import ControllerProc, make_controller
from tests.integration.nodes import FLEET_CONFIG, LabNode
from tests.integration.other_user import AsUser, BoundCli
from tests.integration.sshd import Sshd, keygen, require_sshd


@dataclass
class OneNode:
    base: Path
    node: LabNode
    ctl: ControllerProc
    as_user: BoundCli
    drop: Path
    """A world-writable directory the job and the test share."""

    def task(self, job: str) -> dict[str, object]:
        return self.ctl.cli_json("show", job)["tasks"][0]  # type: ignore[no-any-return]

    def submit_as_nobody(self, *args: str) -> str:
        nobody = pwd.getpwnam("nobody")
        before = {r["job_id"] for r in self.ctl.cli_json("queue", "--all")}
        code, err = self.as_user(nobody.pw_uid, nobody.pw_gid, "submit", *args)
        assert code == 0, err
        [job] = {r["job_id"] for r in self.ctl.cli_json("queue", "--all") if r["job_id"] not in before}
        return str(job)


def start_lab(base: Path, as_user: AsUser, node_cls: type[LabNode] = LabNode) -> OneNode:
    key = keygen(base / "id_ed25519")
    node = node_cls("node1", base / "node1", "2:A100", Sshd(base / "node1" / "sshd", key))
    ctl = make_controller(base / "ctl", FLEET_CONFIG)
    drop = base / "drop"
    drop.mkdir(mode=0o777)
    drop.chmod(0o1777)
    lab = OneNode(base, node, ctl, BoundCli(as_user, ctl.env), drop)
    node.sshd.start()
    node.start_agent()
    ctl.start()
    res = ctl.cli(*node.add_args(key), timeout=120)
    assert res.returncode == 0, res.stderr
    return lab


@pytest.fixture
def world_base() -> Iterator[Path]:
    """A base directory every uid can enter: the job, as `nobody`, must reach its checkpoint dir
    under the node's state dir (pytest's tmp_path is private to root)."""
    require_sshd()
    require(os.geteuid() == 0, "needs root to run jobs as nobody")
    base = Path(tempfile.mkdtemp(prefix="hyb-tf-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def lab(world_base: Path, as_user: AsUser) -> Iterator[OneNode]:
    lab = start_lab(world_base, as_user)
    try:
        yield lab
    finally:
        lab.ctl.stop()
        lab.node.stop()


def store(lab: OneNode, job: str) -> Path:
    return lab.ctl.home / "checkpoints" / job
