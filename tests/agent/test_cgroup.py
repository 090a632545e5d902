"""Job containment in cgroups through a real root agent: a stop (time limit, cancel) kills every
process a job started, setsid and double-forked ones included, before the job is reported gone;
memory, CPU and process-count limits and the GPU device rules are enforced by the kernel. Runs on
the host's cgroup v1 controllers, and on a cgroup2 tree this test mounts (kill-all only where the
v2 controllers are bound to v1 hierarchies, as on the CI host)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from hybridctl_agent import cgroup as cgroups
from hybridctl_agent.containment import detect
from tests.agent.agent_harness import AgentProc, alive
from tests.conftest import require
from tests.waiting import wait_for

NOBODY = 65534


def _v1_available() -> bool:
    return os.path.isfile("/sys/fs/cgroup/pids/cgroup.procs") and \
        os.path.isfile("/sys/fs/cgroup/freezer/cgroup.procs")


def _kill_tree(top: str) -> None:
    """Kill every process below cgroup directory `top` and remove the directories, leaves first."""
    if not os.path.isdir(top):
        return
    for root, dirs, _files in os.walk(top, topdown=False):
        for d in dirs:
            path = os.path.join(root, d)
            mode = cgroups.MODE_V2 if os.path.exists(os.path.join(path, "cgroup.kill")) \
                else cgroups.MODE_V1
            cg = cgroups.Cgroup(mode, {"x": path})
            cg.kill_and_wait(timeout=10)
            cg.remove()
    cgroups.Cgroup(cgroups.MODE_V1, {"x": top}).remove()


@pytest.fixture
def v1_parent() -> Iterator[str]:
    """A fresh relative cgroup parent (under this test's own cgroup in each v1 hierarchy, so a
    job's memory stays inside whatever limit the test itself runs under); removed afterwards."""
    require(os.geteuid() == 0, "cgroup tests need root (create cgroups, run jobs as nobody)")
    require(_v1_available(), "no writable cgroup v1 pids/freezer hierarchy at /sys/fs/cgroup")
    name = f"hca-test-{uuid.uuid4().hex[:8]}"
    found = detect(parent=name)
    require(found.mode == cgroups.MODE_V1, f"cgroup v1 not usable here: {found.describe()}")
    yield name
    for d in found.dirs.values():
        _kill_tree(d)


@pytest.fixture
def cg_agent(make_agent: Callable[..., AgentProc], v1_parent: str,
             tmp_path: Path) -> Callable[..., AgentProc]:
    def make(**cfg: Any) -> AgentProc:
        path = tmp_path / f"agent-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps({"cgroup_parent": v1_parent, **cfg}))
        agent = make_agent("--simulate-gpus", "4:A100", "--config", str(path))
        os.chmod(agent.base, 0o711)  # jobs run as nobody: let them reach their work directory
        return agent
    return make


def launch(agent: AgentProc, key: str, run: str, **job: Any) -> Dict[str, Any]:
    job.setdefault("uid", NOBODY)
    return agent.call("launch", job={"key": key, "run": run, **job})["job"]


def started(agent: AgentProc, key: str) -> Dict[str, Any]:
    path = agent.job_dir(key) / "started.json"

    def probe() -> Any:
        if path.exists():
            return json.loads(path.read_text())
        if (path.parent / "exit.json").exists():
            raise AssertionError(f"job {key} ended before it started: {agent.job(key)}")
        return None
    return wait_for(probe, what=f"job {key} to start")


def job_dirs(agent: AgentProc, key: str) -> Dict[str, str]:
    """The job's cgroup directory per hierarchy, from the spec the agent wrote."""
    spec = json.loads((agent.job_dir(key) / "spec.json").read_text())
    contain = cgroups.Containment.from_dict(spec["cgroup"]["containment"])
    return cgroups.job_paths(contain, key)


def procs(path: str) -> List[int]:
    try:
        return [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def read_pid(agent: AgentProc, key: str, name: str) -> int:
    path = agent.job_dir(key) / "work" / name
    return int(wait_for(lambda: path.read_text().strip() if path.exists() else None, what=f"{path}"))


# A setsid'd sleeper behind a double fork: a new session and process group, parent gone (so it
# is re-parented to init): nothing a process-group kill reaches.
ESCAPE = ("( setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > escaped.pid ) &\n"
          "wait\n"
          "sleep 1000\n")


@pytest.mark.needs_root
@pytest.mark.parametrize("stop", ["timeout", "cancel"])
def test_a_stop_kills_setsid_double_forked_children_before_the_job_is_reported_gone(
        cg_agent: Callable[..., AgentProc], stop: str) -> None:
    agent = cg_agent()
    assert agent.call("hello")["containment"].startswith(cgroups.MODE_V1)
    limit = {"time_limit": 2, "kill_grace": 1} if stop == "timeout" else {}
    launch(agent, "31", ESCAPE, **limit)
    job = started(agent, "31")
    escaped = read_pid(agent, "31", "escaped.pid")
    wait_for(lambda: os.getsid(escaped) == escaped, what="the sleeper to have its own session")
    assert escaped != job["pgid"]
    dirs = job_dirs(agent, "31")
    assert job["cgroup"] == next(iter(dirs.values()))
    for path in dirs.values():
        assert escaped in procs(path) and job["pid"] in procs(path)
    if stop == "cancel":
        agent.call("cancel", key="31", grace=1)
    done = agent.wait_exited("31")
    # Checked at once: the supervisor writes exit.json only after the cgroup is empty.
    assert not alive(escaped), "a setsid child outlived its job"
    assert not alive(job["pid"])
    assert done["reason"] == ("timeout" if stop == "timeout" else "cancelled")
    for path in dirs.values():
        assert procs(path) == [] and not os.path.exists(path), "the job cgroup was left behind"


@pytest.mark.needs_root
def test_a_setsid_process_on_a_gpu_is_the_jobs_not_foreign(
        cg_agent: Callable[..., AgentProc]) -> None:
    agent = cg_agent(interval=0.2)
    launch(agent, "37", ESCAPE, gpus=[1])
    escaped = read_pid(agent, "37", "escaped.pid")
    wait_for(lambda: os.getsid(escaped) == escaped, what="the sleeper to have its own session")
    agent.call("sim_foreign", index=3, pid=escaped)

    def seen() -> Any:
        gpu = agent.call("sample")["samples"][-1]["gpus"][3]
        return gpu["processes"] or None
    assert [p["job"] for p in wait_for(seen, what="the sleeper on GPU 3")] == ["37"]
    agent.call("cancel", key="37", grace=0)
    agent.wait_exited("37")
    assert not alive(escaped)


@pytest.mark.needs_root
def test_leftover_processes_die_when_the_job_script_ends(cg_agent: Callable[..., AgentProc]) -> None:
    agent = cg_agent()
    # Exit only once the sleeper has its own session (a process-group kill would miss it).
    launch(agent, "32", "( setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > escaped.pid )\n"
                        "p=$(cat escaped.pid)\n"
                        "while [ \"$(cut -d' ' -f6 /proc/$p/stat)\" != \"$p\" ]; do sleep 0.05; done\n"
                        "exit 0")
    escaped = read_pid(agent, "32", "escaped.pid")
    done = agent.wait_exited("32")
    assert (done["exit_code"], done["reason"]) == (0, None)
    assert not alive(escaped)


@pytest.mark.needs_root
def test_limits_are_written_to_the_job_cgroup(cg_agent: Callable[..., AgentProc]) -> None:
    agent = cg_agent(job_pids_max=500)
    launch(agent, "33", "sleep 1000", cpus=1.5, memory_mb=100, gpus=[1])
    started(agent, "33")
    dirs = job_dirs(agent, "33")
    read = lambda ctrl, name: Path(dirs[ctrl], name).read_text().strip()  # noqa: E731
    assert read("cpu", "cpu.cfs_quota_us") == "150000"
    assert read("cpu", "cpu.cfs_period_us") == "100000"
    assert read("memory", "memory.limit_in_bytes") == str(100 << 20)
    if os.path.exists(os.path.join(dirs["memory"], "memory.memsw.limit_in_bytes")):
        assert read("memory", "memory.memsw.limit_in_bytes") == str(100 << 20)  # no swapping
    assert read("pids", "pids.max") == "500"
    agent.call("cancel", key="33", grace=0)
    agent.wait_exited("33")


@pytest.mark.needs_root
def test_a_job_past_its_memory_limit_is_oom_killed_and_says_so(
        cg_agent: Callable[..., AgentProc]) -> None:
    require(shutil.which("python3") is not None, "no python3 on PATH for the allocating job")
    agent = cg_agent()
    launch(agent, "34", "python3 -c \"x = b'x' * (400 << 20); print('survived')\"", memory_mb=64)
    done = agent.wait_exited("34")
    assert done["exit_code"] == 128 + signal.SIGKILL  # bash reports its child's SIGKILL
    assert done["reason"].startswith("out_of_memory:") and "64 MiB" in done["reason"]
    assert agent.call("logs", key="34")["data"] == ""


FORK_BOMB = """python3 - <<'EOF'
import os, time
n = 0
try:
    while n < 2000:
        if os.fork() == 0:
            time.sleep(1000)
            os._exit(0)
        n += 1
except OSError as exc:
    print(n, exc.errno, flush=True)
EOF
"""


@pytest.mark.needs_root
def test_a_fork_bomb_stops_at_the_pids_limit(cg_agent: Callable[..., AgentProc]) -> None:
    require(shutil.which("python3") is not None, "no python3 on PATH for the forking job")
    agent = cg_agent(job_pids_max=40)
    launch(agent, "35", FORK_BOMB)
    done = agent.wait_exited("35")
    forked, code = map(int, agent.call("logs", key="35")["data"].split())
    assert code == errno.EAGAIN
    assert 30 <= forked < 40  # bash and python count too
    assert done["exit_code"] == 0
    assert not os.path.exists(job_dirs(agent, "35")["pids"])  # emptied and removed


@pytest.mark.needs_root
def test_gpus_not_given_to_a_job_cannot_be_opened(cg_agent: Callable[..., AgentProc]) -> None:
    """With no driver, opening an allowed /dev/nvidia node fails with ENXIO (no such device),
    a denied one with EPERM from the devices cgroup: nodes made here show the rule at work."""
    agent = cg_agent()
    devdir = tempfile.mkdtemp(prefix="hca-dev-", dir="/tmp")
    try:
        os.chmod(devdir, 0o755)
        for minor in (0, 1, 2, 3, 255):
            path = os.path.join(devdir, f"nv{minor}")
            os.mknod(path, 0o666 | 0o020000, os.makedev(cgroups.NVIDIA_MAJOR, minor))
            os.chmod(path, 0o666)
        run = (f"for m in 0 1 2 3 255; do head -c1 {devdir}/nv$m >/dev/null 2>err || true; "
               "echo \"$m $(cat err)\"; done")
        launch(agent, "36", run, gpus=[1])
        assert agent.wait_exited("36")["exit_code"] == 0
        lines = dict(line.split(" ", 1) for line in
                     agent.call("logs", key="36")["data"].splitlines())
    finally:
        shutil.rmtree(devdir, ignore_errors=True)
    assert "No such device or address" in lines["1"], lines  # its own GPU: allowed
    assert "No such device or address" in lines["255"], lines  # nvidiactl: allowed
    for other in ("0", "2", "3"):
        assert "Operation not permitted" in lines[other], lines


def test_the_v1_device_rules_deny_exactly_the_other_gpus() -> None:
    limits = cgroups.Limits(memory_bytes=1 << 30, cpus=2, pids=64, deny_gpus=(3, 0, 2))
    v1 = cgroups.limit_files(cgroups.MODE_V1, limits, cgroups.V1_CONTROLLERS, True)
    assert [w for w in v1 if w[0] == "devices"] == [
        ("devices", "devices.deny", "c 195:0 rwm"), ("devices", "devices.deny", "c 195:2 rwm"),
        ("devices", "devices.deny", "c 195:3 rwm")]
    assert v1[:2] == [("memory", "memory.limit_in_bytes", str(1 << 30)),
                      ("memory", "memory.memsw.limit_in_bytes", str(1 << 30))]
    v2 = cgroups.limit_files(cgroups.MODE_V2, limits, ("memory", "cpu", "pids", "devices"))
    assert v2 == [("memory", "memory.max", str(1 << 30)), ("memory", "memory.swap.max", "0"),
                  ("cpu", "cpu.max", "200000 100000"), ("pids", "pids.max", "64")]
    assert cgroups.limit_files(cgroups.MODE_V2, limits, ()) == []  # controllers not available


def test_detect_says_why_there_is_no_containment() -> None:
    off = detect(enabled=False)
    assert off.mode == cgroups.MODE_NONE and "cgroup_enable: false" in off.describe()
    rootless = detect(euid=1000)
    assert rootless.describe().startswith("none: rootless agent")
    bare = detect(euid=0, mountinfo="22 1 0:20 / /proc rw - proc proc rw\n", own="0::/\n")
    assert bare.describe().startswith("none: no cgroup filesystem mounted")


# ---- cgroup v2 ---------------------------------------------------------------------------------


@pytest.fixture
def v2_root() -> Iterator[str]:
    """A cgroup2 tree mounted for this test."""
    require(os.geteuid() == 0, "mounting a cgroup2 tree needs root")
    point = tempfile.mkdtemp(prefix="hca-cg2-", dir="/tmp")
    res = subprocess.run(["mount", "-t", "cgroup2", "none", point], capture_output=True,
                         text=True, timeout=30)
    if res.returncode != 0:
        os.rmdir(point)
        require(False, f"cannot mount cgroup2 here: {res.stderr.strip()}")
    try:
        yield point
    finally:
        for entry in os.listdir(point):
            if entry.startswith("hca-test-"):
                _kill_tree(os.path.join(point, entry))
        subprocess.run(["umount", point], check=False, timeout=30)
        os.rmdir(point)


@pytest.mark.needs_root
def test_on_cgroup_v2_a_cancel_kills_everything_with_cgroup_kill(
        make_agent: Callable[..., AgentProc], v2_root: str, tmp_path: Path) -> None:
    parent = f"/hca-test-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"cgroup_root": v2_root, "cgroup_parent": parent}))
    agent = make_agent("--simulate-gpus", "2:A100", "--config", str(cfg))
    os.chmod(agent.base, 0o711)
    hello = agent.call("hello")["containment"]
    assert hello.startswith(cgroups.MODE_V2) and "no GPU device rules" in hello
    controllers = Path(v2_root, "cgroup.controllers").read_text().split()
    for ctrl in cgroups.V2_CONTROLLERS:  # what this host cannot enforce is named
        assert (ctrl in controllers) != (f"{ctrl} (not available" in hello), hello
    launch(agent, "41", ESCAPE, memory_mb=64, cpus=1)
    job = started(agent, "41")
    escaped = read_pid(agent, "41", "escaped.pid")
    path = job_dirs(agent, "41")[""]
    assert job["cgroup"] == path and path.startswith(v2_root + parent + "/agent-")
    require(os.path.exists(os.path.join(path, "cgroup.kill")), "no cgroup.kill (kernel < 5.14)")
    assert {escaped, job["pid"]} <= set(procs(path))
    agent.call("cancel", key="41", grace=1)
    done = agent.wait_exited("41")
    assert not alive(escaped) and done["reason"] == "cancelled"
    assert not os.path.exists(path)
