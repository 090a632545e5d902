"""Fixtures for the cloud tests: a small offer catalog, each provider wired to local stand-ins
(simulated machines on loopback, a moto server on 127.0.0.1, scripts written by the test)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from hybridctl.cloud import catalog as catalog_mod
from hybridctl.cloud.catalog import Catalog

CATALOG: dict[str, Any] = {
    "snapshot": "test",
    "instance_types": {
        "sim.a100x1": {"gpu": "A100", "gpus": 1, "vcpus": 8, "memory_gb": 64},
        "sim.a100x2": {"gpu": "A100", "gpus": 2, "vcpus": 16, "memory_gb": 128},
        "sim.l40sx1": {"gpu": "L40S", "gpus": 1, "vcpus": 4, "memory_gb": 32},
    },
    "regions": {
        "sim-east": {
            "zones": ["sim-east-a", "sim-east-b"],
            "on_demand": {"sim.a100x1": 3.0, "sim.a100x2": 6.0, "sim.l40sx1": 1.8},
            "spot": {"sim.a100x1": [1.0, 1.2], "sim.a100x2": [2.1, 2.3], "sim.l40sx1": [0.9, None]},
        },
    },
}


def small_catalog() -> Catalog:
    return catalog_mod.parse(CATALOG, "test catalog")


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    from hybridctl.sim.keys import client_key

    return client_key(tmp_path / "keys")


@pytest.fixture
def moto_endpoint(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The moto server's URL (real boto3 over HTTP), with fake credentials in env."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-2"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


FAKE_CLOUD = textwrap.dedent('''\
    """A command-provider cloud for tests: instances in a JSON file ($FAKE_CLOUD_STATE)."""
    import fcntl, json, os, sys, time
    path = os.environ["FAKE_CLOUD_STATE"]
    # Calls may overlap (a delete while the next create runs) and the test reads the file
    # meanwhile: serialise on a lock file and replace the state atomically.
    lock = open(path + ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    state = json.load(open(path)) if os.path.exists(path) else {"next": 1, "instances": {}}
    req = json.load(sys.stdin)
    action = os.environ["HYBRIDCTL_ACTION"]
    out = None
    if action == "create":
        if req["instance_type"] in os.environ.get("FAKE_CLOUD_FULL", "").split(","):
            print("no capacity in " + req["zone"], file=sys.stderr)
            sys.exit(75)
        iid = "vm-%d" % state["next"]
        state["next"] += 1
        inst = {"id": iid, "name": req["name"], "state": "running", "tags": req["tags"],
                "instance_type": req["instance_type"], "zone": req["zone"], "spot": req["spot"],
                "launched_at": time.time(), "host": "127.0.0.1", "port": 1}
        state["instances"][iid] = inst
        out = inst
    elif action == "delete":
        state["instances"].pop(req["id"], None)
    elif action == "list":
        want = req.get("tags") or {}
        out = [i for i in state["instances"].values()
               if all(i["tags"].get(k) == v for k, v in want.items())]
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)
    if out is not None:
        json.dump(out, sys.stdout)
''')


def fake_cloud_script(base: Path) -> tuple[str, dict[str, str]]:
    """The command line and env of the test's command-provider script."""
    base.mkdir(parents=True, exist_ok=True)
    script = base / "fakecloud.py"
    script.write_text(FAKE_CLOUD)
    return f"{sys.executable} {script}", {"FAKE_CLOUD_STATE": str(base / "state.json")}


@pytest.fixture(autouse=True)
def _no_aws_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # boto3 must never find a developer's real ~/.aws in tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Any]:
    """make_lab(burst=..., simulated=..., cloud=..., fleet=..., recovery=...) -> a started `tests.cloud.lab.CloudLab`."""
    from tests.cloud.lab import CloudLab

    labs: list[CloudLab] = []

    def make(**kw: Any) -> CloudLab:
        lab = CloudLab(tmp_path / f"l{len(labs)}", **kw)
        labs.append(lab)
        lab.start()
        return lab

    yield make
    for lab in labs:
        lab.stop()
