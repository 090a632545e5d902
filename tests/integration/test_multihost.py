"""The install path of README "Installing on real servers", rehearsed end to end on separate hosts:
network namespaces (tests/integration/netns.py) stand in for the controller host and three GPU
servers, each server with its own address, sshd on port 22 and /opt, and no package index in
reach. The README's commands run as written, with test directories for /opt, /etc, /var/lib and
/run, lab addresses for host names, and two differences its servers force (no systemd there:
`--no-systemd`, and the controller started from its unit's ExecStart and Environment); the last
test checks that the README shows every command the rehearsal ran. Then jobs run: one alone, a
two-node gloo all-reduce rendezvousing over the servers' addresses, a cancel, and a server whose
cable is pulled, its job requeued on another. The systemd units pass `systemd-analyze verify`.

The package index pip uses throughout is a directory of wheels repacked from this test
environment (tests/integration/wheelhouse.py), named by PIP_NO_INDEX/PIP_FIND_LINKS: nothing is
downloaded. Phase times are printed at the end (run with -s to see them)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require
from tests.integration.harness import REPO, ControllerProc
from tests.integration.netns import Lan, netns_inode, netns_pids, require_netns
from tests.integration.sshd import require_sshd
from tests.integration.workloads import have_torch
from tests.integration.wheelhouse import offline_index, project_dependencies, source_copy
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.needs_sshd, pytest.mark.needs_root]

SECTION = "Installing on real servers"
SERVERS = ["gpu01", "gpu02", "gpu03"]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
PHASES: dict[str, float] = {}


@contextmanager
def phase(name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        PHASES[name] = time.monotonic() - start


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that would point a program at the checkout, the
    test controller or another package index."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HYBRIDCTL_", "PIP_", "VIRTUAL_ENV")) and k != "PYTHONPATH"}
    env.update(extra)
    return env


@dataclass
class Script:
    """The admin's shell on the controller host: runs commands and remembers each as the README
    would show it (test paths back to /opt, /var/lib, ..., addresses back to host names)."""

    root: Path
    """The controller host's / in this test."""
    env: dict[str, str]
    shown: dict[str, str] = field(default_factory=dict)
    """Test text -> README text, applied to every argument (longest first)."""
    ran: list[list[str]] = field(default_factory=list)

    DROPPED = ("--no-systemd",)
    """Arguments only the rehearsal's servers need (they run no systemd)."""

    def path(self, real: str) -> Path:
        return self.root / real.lstrip("/")

    def as_shown(self, argv: list[str]) -> list[str]:
        subs = sorted([(str(self.root) + "/", "/"), *self.shown.items()], key=lambda kv: -len(kv[0]))
        out = []
        for arg in argv:
            if arg in self.DROPPED:
                continue
            for test, real in subs:
                arg = arg.replace(test, real)
            out.append(arg)
        return out

    def run(self, *argv: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        args = [str(a) for a in argv]
        self.ran.append(self.as_shown(args))
        res = subprocess.run(args, env=self.env, cwd=cwd or self.root, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, f"{shlex.join(args)} exited {res.returncode}:\n{res.stderr[-3000:]}"
        return res


@pytest.fixture(scope="module", autouse=True)
def report_phases() -> Iterator[None]:
    yield
    if PHASES:
        print("\nmultihost phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in PHASES.items()), file=sys.stderr)


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Script]:
    root = tmp_path_factory.mktemp("controller-host")
    index = root / "srv" / "index"
    with phase("offline index"):
        offline_index(index, [*project_dependencies(), "setuptools"])
    sh = Script(root, clean_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index), PIP_DISABLE_PIP_VERSION_CHECK="1"))
    sh.shown.update({sys.executable: "python3", str(Path(sys.executable).parent / "pip"): "pip"})
    try:
        yield sh
    finally:
        with phase("rm -r"):
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class Release:
    """hybridctl installed on the controller host from its wheel: /opt/hybridctl."""

    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


@pytest.fixture(scope="module")
def release(script: Script) -> Release:
    """README: build the wheel in a checkout, install it into a fresh venv."""
    checkout = source_copy(REPO, script.root / "src" / "hybridctl")
    with phase("pip wheel"):
        script.run(Path(sys.executable).parent / "pip", "wheel", "--no-deps", "-w", "dist", ".", cwd=checkout)
    (wheel,) = (checkout / "dist").glob("hybridctl-*.whl")
    script.shown[wheel.name] = "hybridctl-*.whl"
    venv = script.path("/opt/hybridctl")
    with phase("python3 -m venv"):
        script.run(sys.executable, "-m", "venv", venv)
    with phase("pip install"):
        script.run(venv / "bin" / "pip", "install", f"dist/{wheel.name}", cwd=checkout)
    # `ln -s /opt/hybridctl/bin/hybridctl /usr/local/bin/`: on the PATH.
    script.shown[str(venv / "bin" / "hybridctl")] = "hybridctl"
    return Release(venv)


def test_the_wheel_installs_everything_the_console_scripts_need(release: Release, tmp_path: Path) -> None:
    env = clean_env()
    where = subprocess.run(
        [release.bin / "python", "-c", "import hybridctl, hybridctl_agent, hybridctl.store.sqlite as s; "
         "print(hybridctl.__file__, hybridctl_agent.__file__, s.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert str(REPO) not in where and where.count(str(release.venv)) == 3, where
    for name in ("hybridctl", "hybridctl-agent"):
        res = subprocess.run([release.bin / name, "--help"], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert res.returncode == 0 and res.stdout.startswith("usage:"), res.stderr


# ---- systemd units --------------------------------------------------------------------------------

def verify_unit(text: str, name: str, where: Path, user: bool = False) -> str:
    """`systemd-analyze verify` of one unit; its complaints (it exits 0 on unknown keys and bad
    values, so any output counts), or '' for a clean unit."""
    where.mkdir(parents=True, exist_ok=True)
    (where / name).write_text(text)
    runtime = where / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    res = subprocess.run([SYSTEMD_ANALYZE, *(["--user"] if user else []), "verify", str(where / name)],
                         capture_output=True, text=True, timeout=60, cwd=where,
                         env=clean_env(XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_COLOR="0"))
    # Only what it says about this unit: `--user` also loads the host's user units, and a host
    # package's broken one (gpg-agent-browser.socket on some images) is not this project's.
    ours = [line for line in (res.stdout + res.stderr).splitlines() if name.rpartition("/")[2] in line]
    return "\n".join(ours).strip() or ("" if res.returncode == 0 else f"exit {res.returncode}")


def installed_copy(unit: Path, release: Release, binary: str) -> str:
    """The unit as shipped, with ExecStart's program pointing at the venv's console script (which
    README links into /usr/local/bin): verify checks that the program exists."""
    text = unit.read_text()
    assert binary in text, f"{unit} no longer runs {binary}"
    return text.replace(binary, str(release.bin / Path(binary).name))


def test_systemd_units_verify(release: Release, tmp_path: Path) -> None:
    require(os.path.exists(SYSTEMD_ANALYZE), "needs systemd-analyze (apt-get install systemd)")
    from hybridctl.cloud.bootstrap import agent_unit

    with phase("systemd-analyze"):
        python = str(release.bin / "python")
        units = {
            "hybridctl.service": (installed_copy(REPO / "config/hybridctl.service", release,
                                                 "/usr/local/bin/hybridctl"), False),
            "hybridctl-agent.service": (installed_copy(REPO / "agents/systemd/hybridctl-agent.service", release,
                                                       "/usr/local/bin/hybridctl-agent"), False),
            "hybridctl-agent-user.service": (installed_copy(REPO / "agents/systemd/hybridctl-agent-user.service",
                                                            release, "%h/.local/bin/hybridctl-agent"), True),
            # What `node add --install` writes on a server with systemd (as root; as another user).
            "written-system/hybridctl-agent.service": (agent_unit(python, "/opt/hybridctl-agent", "gpu01", True),
                                                       False),
            "written-user/hybridctl-agent.service": (agent_unit(python, "/home/lab/.hybridctl", "gpu01", False), True),
        }
        problems = {}
        for path, (text, user) in units.items():
            folder, _, name = path.rpartition("/")
            problems[path] = verify_unit(text, name, tmp_path / (folder or "shipped"), user)
        # The check itself can fail: a unit with a bad value is reported.
        bad = units["hybridctl.service"][0].replace("Restart=on-failure", "Restart=sometimes")
        caught = verify_unit(bad, "hybridctl.service", tmp_path / "bad")
    assert problems == dict.fromkeys(units, ""), problems
    assert "Failed to parse service restart specifier, ignoring: sometimes" in caught, caught


# ---- the lab --------------------------------------------------------------------------------------

def unit_service(unit: Path, script: Script) -> dict[str, str]:
    """The [Service] settings of a shipped unit, its /var, /etc and /run paths moved under the
    test's controller host; Environment= lines are joined by newlines."""

    def moved(value: str) -> str:
        return str(script.path(value)) if value.startswith(("/var/", "/etc/", "/run/")) else value

    settings: dict[str, str] = {}
    section = ""
    for line in unit.read_text().splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            if key == "Environment":
                name, _, value = value.partition("=")
                value = f"{name}={moved(value)}"
            settings[key] = f"{settings[key]}\n{moved(value)}" if key in settings else moved(value)
    return settings


@dataclass
class InstalledController(ControllerProc):
    """`hybridctl server` as config/hybridctl.service runs it (its ExecStart, Environment and
    directories), from the venv, in the lab's switch namespace. The CLI runs as a user's shell
    would; HYBRIDCTL_SOCKET stands in for its default, the unit's /run/hybridctl/controller.sock."""

    release: Release | None = None
    prefix: list[str] = field(default_factory=list)
    service: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return clean_env(HYBRIDCTL_SOCKET=str(self.socket))

    def start(self, timeout: float = 60.0) -> None:
        assert self.release is not None
        program, *args = self.service["ExecStart"].split()  # /usr/local/bin/hybridctl: README's link
        env = dict(line.split("=", 1) for line in self.service["Environment"].splitlines())
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([*self.prefix, str(self.release.bin / Path(program).name), *args],
                                     stdout=out, stderr=out, env=clean_env(**env), stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        out.close()
        wait_for(self._answers, timeout, what=f"controller socket {self.socket} (log: {self.log})")

    def cli(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        assert self.release is not None
        res = subprocess.run([str(self.release.bin / "hybridctl"), *args], env=self.env, capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.home)
        if check and res.returncode != 0:
            raise AssertionError(f"hybridctl {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res


def installed_controller(script: Script, release: Release, prefix: list[str]) -> InstalledController:
    """The directories the unit has systemd make (StateDirectory private, RuntimeDirectory open to
    users, with their modes), and the config README copies from the example; the rehearsal's edit
    shortens the fleet's liveness so that a pulled cable costs seconds."""
    service = unit_service(REPO / "config/hybridctl.service", script)
    env = dict(line.split("=", 1) for line in service["Environment"].splitlines())
    home = Path(env["HYBRIDCTL_HOME"])
    states = [script.path("/var/lib") / d for d in service["StateDirectory"].split()]
    assert home == states[0]
    for d in states:
        d.mkdir(mode=int(service.get("StateDirectoryMode", "0755"), 8), parents=True)
    if "RuntimeDirectory" in service:
        script.path("/run").joinpath(service["RuntimeDirectory"]).mkdir(
            mode=int(service.get("RuntimeDirectoryMode", "0755"), 8), parents=True)
    config = Path(env["HYBRIDCTL_CONFIG"])
    script.run("mkdir", "-p", config.parent)
    script.run("cp", "config/hybridctl.example.yaml", config, cwd=script.path("/src/hybridctl"))
    settings = yaml.safe_load(config.read_text())
    settings["scheduler"]["tick_seconds"] = 1.0
    settings["fleet"].update(poll_interval=0.5, unreachable_after=3.0, lost_after=8.0)
    config.write_text(yaml.safe_dump(settings))
    return InstalledController(home=home, socket=Path(env.get("HYBRIDCTL_SOCKET") or home / "hybridctl.sock"),
                               config=config, release=release, prefix=prefix, service=service)


@dataclass
class MultiLab:
    lan: Lan
    ctl: InstalledController
    added: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    def task(self, job: str) -> dict[str, Any]:
        return self.ctl.cli_json("show", job)["tasks"][0]

    def wait_state(self, job: str, *states: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: (t := self.task(job))["state"] in states and t, timeout,
                        what=f"job {job} in {states} (controller log: {self.ctl.log})")

    def submit(self, *args: str) -> str:
        return self.ctl.cli("submit", *args, check=True).stdout.strip()


@pytest.fixture(scope="module")
def lab(script: Script, release: Release, tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[MultiLab]:
    require_sshd()
    require_netns()
    lan = Lan(tmp_path_factory.mktemp("servers"), SERVERS)
    script.shown.update({h.addr: f"{h.name}.lab" for h in lan.hosts.values()})
    ctl = installed_controller(script, release, lan.in_switch())
    script.env["HYBRIDCTL_SOCKET"] = str(ctl.socket)  # stands for its default (see InstalledController)
    failed = request.session.testsfailed
    try:
        # README: the controller's key (its .pub into root's authorized_keys on each server: the
        # lab does that), the servers' offline bundle, then each server added.
        key = script.path("/var/lib/hybridctl/.ssh/id_ed25519")
        wheels = script.path("/var/lib/hybridctl/wheels")
        script.run("install", "-d", "-m", "700", key.parent)
        script.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
        with phase("pip download"):
            script.run(release.bin / "pip", "download", "-d", wheels, "psutil", "nvidia-ml-py")
        with phase("namespaces+sshd"):
            lan.start(key)
        with phase("controller start"):
            ctl.start()
        with phase("node add --install x3"), ThreadPoolExecutor(len(SERVERS)) as pool:
            def add(name: str) -> subprocess.CompletedProcess[str]:
                return script.run(release.bin / "hybridctl", "node", "add", name, "--host", lan.hosts[name].addr,
                                  "--user", "root", "--accept-new", "--identity", key, "--install", "--wheels", wheels,
                                  "--no-systemd")
            multi = MultiLab(lan, ctl, dict(zip(SERVERS, pool.map(add, SERVERS))))
        yield multi
    except BaseException:
        failed = -1
        raise
    finally:
        ctl.stop()
        with phase("servers stop"):
            lan.stop()
        if request.session.testsfailed > failed:  # the logs go with the directories: show them first
            for log in [ctl.log, *sorted(lan.base.glob("*/opt/hybridctl-agent/agent.log"))]:
                if log.exists():
                    print(f"\n--- {log}\n{log.read_text()[-3000:]}", file=sys.stderr)
        shutil.rmtree(lan.base, ignore_errors=True)


def test_node_add_install_puts_the_wheels_agent_on_each_server(lab: MultiLab, release: Release) -> None:
    for name, res in lab.added.items():
        assert res.returncode == 0, f"{name}: {res.stderr}"
        assert f"node {name} added: 0 GPUs (none)" in res.stdout, res.stdout
        assert "dependencies: installed into /opt/hybridctl-agent/deps" in res.stderr, res.stderr
        assert "wait: the agent listens on /opt/hybridctl-agent/agent.sock" in res.stderr, res.stderr
    bundle = sorted(p.name.split("-")[0] for p in (lab.ctl.home / "wheels").glob("*.whl"))
    assert bundle == ["nvidia_ml_py", "psutil"]
    nodes = wait_for(lambda: (ns := lab.ctl.cli_json("nodes")) and all(n["telemetry"] for n in ns) and ns, 60,
                     what="telemetry from every server")
    assert sorted((n["name"], n["state"]) for n in nodes) == [(s, "UP") for s in SERVERS]
    site = next(release.venv.glob("lib/python*/site-packages/hybridctl_agent"))
    for host in lab.lan.hosts.values():
        agent = host.opt / "hybridctl-agent"
        # The agent is the wheel's (from the venv), under each server's own /opt.
        assert (agent / "pkg/hybridctl_agent/daemon.py").read_bytes() == (site / "daemon.py").read_bytes()
        assert (agent / "deps/psutil").is_dir() and (agent / "deps/pynvml.py").exists()
        pid = int((agent / "agent.pid").read_text())
        assert pid in netns_pids(host.netns), f"the agent of {host.name} does not run in its namespace"


def test_a_job_runs_inside_its_server(lab: MultiLab) -> None:
    with phase("single job"):
        res = lab.ctl.cli("submit", "--wait", "--", 'echo "$HYBRIDCTL_NODE $(readlink /proc/self/ns/net)"',
                          timeout=120)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().splitlines()[0]
    node, netns = lab.ctl.cli("logs", job, check=True).stdout.split()
    assert netns == f"net:[{netns_inode(lab.lan.hosts[node].netns)}]"


ALLREDUCE = """\
import os, socket, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="env://", world_size=int(os.environ["NNODES"]),
                        rank=int(os.environ["NODE_RANK"]))
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the address this rank reaches rank 0 from
    s.connect((os.environ["MASTER_ADDR"], 9))
    me = s.getsockname()[0]
print("node", os.environ["HYBRIDCTL_NODE"], "addr", me, "master", os.environ["MASTER_ADDR"],
      "ifname", os.environ.get("GLOO_SOCKET_IFNAME"), "sum", int(t.item()), flush=True)
dist.destroy_process_group()
"""


def test_two_node_gloo_all_reduce_rendezvous_on_the_servers_addresses(lab: MultiLab, tmp_path: Path) -> None:
    require(have_torch(), "needs torch with gloo (pip install torch==2.13.0)")
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    with phase("2-node gloo job"):
        job = lab.submit("--nodes", "2", "--env", "OMP_NUM_THREADS=1", "--", f"{sys.executable} {script}")
        t = lab.wait_state(job, "SUCCEEDED", "FAILED", timeout=120)
    assert t["state"] == "SUCCEEDED", lab.ctl.cli("logs", job, "--stderr").stdout
    seen = {}
    for rank in (0, 1):
        words = lab.ctl.cli("logs", job, "--rank", str(rank), check=True).stdout.split()
        seen[rank] = dict(zip(words[::2], words[1::2]))
    first, second = (lab.lan.hosts[seen[r]["node"]] for r in (0, 1))
    assert first is not second
    # MASTER_ADDR is rank 0's server's own lab address, reached from rank 1's own address over eth0.
    assert seen[0]["master"] == seen[1]["master"] == first.addr
    assert (seen[0]["addr"], seen[1]["addr"]) == (first.addr, second.addr)
    assert seen[0]["ifname"] == seen[1]["ifname"] == "eth0"
    assert seen[0]["sum"] == seen[1]["sum"] == "3"  # 1 + 2


def job_processes(lab: MultiLab, marker: str) -> list[int]:
    """Processes in any server whose command line holds `marker`."""
    found = []
    for host in lab.lan.hosts.values():
        for pid in netns_pids(host.netns):
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_text():
                    found.append(pid)
            except OSError:
                pass
    return found


def test_cancel_stops_the_job_on_its_server(lab: MultiLab) -> None:
    marker = f"600.{os.getpid()}1"  # `sleep 600.<pid>1`: a command line no other process has
    with phase("cancel"):
        job = lab.submit("--", f"sleep {marker}")
        lab.wait_state(job, "RUNNING")
        assert job_processes(lab, marker)
        lab.ctl.cli("cancel", job, check=True)
        lab.wait_state(job, "CANCELLED")
        wait_for(lambda: not job_processes(lab, marker), 30, what="the cancelled job's processes to end")


def test_a_server_pulled_off_the_network_has_its_job_requeued_on_another(lab: MultiLab) -> None:
    marker = f"600.{os.getpid()}2"
    with phase("cable pulled -> requeued"):
        job = lab.submit("--", f"sleep {marker}")  # the default spec: a lost server is recovered
        first = lab.wait_state(job, "RUNNING")["nodes"]
        lab.lan.unplug(first)
        t = wait_for(lambda: (x := lab.task(job))["state"] == "RUNNING" and x["attempt"] == 1 and x, 60,
                     what=f"job {job} running again after {first} went off the network")
    assert t["nodes"] != first
    nodes = {n["name"]: n["state"] for n in lab.ctl.cli_json("nodes")}
    assert nodes[first] == "LOST"
    events = [e["to"] for e in lab.ctl.cli_json("show", job)["events"]]
    assert events.count("NODE_LOST") == 1, events
    lab.ctl.cli("cancel", job, check=True)
    # `systemctl stop hybridctl` with a server off the network: the controller ends by itself, in
    # bounded time (closing that server's channels once waited for SSH keepalives to give up).
    assert lab.ctl.proc is not None
    with phase("controller stop"):
        lab.ctl.proc.terminate()
        assert lab.ctl.proc.wait(timeout=20) == 0


def readme_commands() -> list[list[str]]:
    """Every command line in the sh blocks of README's install section, as argv (comments and
    backslash continuations handled as the shell does)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"^## {SECTION}\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, f"README.md has no '## {SECTION}' section"
    blocks = re.findall(r"^```sh\n(.*?)^```", m[1], re.S | re.M)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [argv for line in lines if (argv := shlex.split(line, comments=True))]


def test_the_readme_shows_every_command_the_rehearsal_ran(script: Script, lab: MultiLab) -> None:
    shown = readme_commands()
    ran = [argv for argv in script.ran if argv not in shown]
    assert not ran, "README's install section lacks:\n" + "\n".join(shlex.join(a) for a in ran)
    assert len(script.ran) >= 8 + len(SERVERS)
