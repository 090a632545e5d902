"""Image jobs (`image_id: docker:IMAGE`) through a real agent and real rootful podman.

The image (tests/agent/image_kit.py: busybox, an /etc/passwd that calls the job's uid `root`, a
setuid-root program that prints a file) is pushed to a docker-registry on 127.0.0.1, and the
agent pulls it from there. Containers are removed by the
names the agent gives them, the image by the name given here. Nothing is ever bound from a home
directory: the job's directories are fresh ones under /tmp, and the agent makes no host mounts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Tuple

import psutil
import pytest

from hybridctl_agent import binds, container
from tests.agent.agent_harness import AgentProc, alive
from tests.agent.image_kit import NOBODY, READFILE_CODE, local_registry, podman, tiny_elf
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image jobs need a root agent (rootful podman)")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, str]]:
    """(image reference pushed to a local docker-registry, registries.conf that trusts it)."""
    with local_registry(tmp_path_factory.mktemp("registry")) as found:
        yield found


@pytest.fixture
def image_agent(make_agent: Callable[..., AgentProc], registry: Tuple[str, str]) -> Iterator[AgentProc]:
    agent = make_agent("--simulate-gpus", "2:A100", env={"CONTAINERS_REGISTRIES_CONF": registry[1]})
    yield agent
    for key in ("c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12"):  # the names the agent gives
        podman("rm", "--force", "--ignore", "--time", "0", container.container_name(agent.state_dir, key),
               check=False)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A fresh directory the job's user (nobody) owns, under /tmp (never a home)."""
    d = Path(tempfile.mkdtemp(prefix="hct-img-", dir="/tmp"))
    os.chmod(d, 0o755)
    os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    yield d
    shutil.rmtree(d)


def cgroup_mounts() -> list:
    return [Path(line.split()[4]) for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.partition(" - ")[2].split()[:1] in (["cgroup"], ["cgroup2"])]


def launch(agent: AgentProc, key: str, run: str, ref: str, **job: Any) -> Dict[str, Any]:
    return agent.call("launch", job={"key": key, "run": run, "uid": NOBODY.pw_uid, "gid": NOBODY.pw_gid,
                                     "user": "nobody", "image": f"docker:{ref}", **job})["job"]


def out(agent: AgentProc, key: str, stream: str = "stdout") -> str:
    return agent.call("logs", key=key, stream=stream, max_bytes=1 << 20)["data"]


def left(agent: AgentProc) -> list:
    """`podman ps -a`: the containers this agent made that still exist (running or not)."""
    mine = container.container_name(agent.state_dir, "")  # hybridctl-<this agent>-
    return [n for n in podman("ps", "-a", "--format", "{{.Names}}").stdout.split() if n.startswith(mine)]


def test_image_job_runs_as_its_user_env_hidden_from_argv_and_cancel_kills_it(
        image_agent: AgentProc, registry: Tuple[str, str], workdir: Path) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    launch(image_agent, "c1", 'echo "uid=$(id -u) gid=$(id -g) cwd=$(pwd) v=$HCT_SECRET"; echo hi > made.txt; '
                              "echo started; sleep 120", registry[0],
           envs={"HCT_SECRET": secret}, workdir=str(workdir))
    def started() -> bool:
        rec = image_agent.job("c1")
        assert rec["state"] == "running", (rec, out(image_agent, "c1", "stderr"))
        return "started" in out(image_agent, "c1")
    wait_for(started, what="the image job to start")
    first = out(image_agent, "c1").splitlines()[0]
    assert first == f"uid={NOBODY.pw_uid} gid={NOBODY.pw_gid} cwd={workdir} v={secret}"
    assert (workdir / "made.txt").stat().st_uid == NOBODY.pw_uid
    # ps shows argv to everyone: the value is in no process's command line (podman's included).
    leaked = [p.info for p in psutil.process_iter(["pid", "cmdline"])
              if any(secret in a for a in (p.info["cmdline"] or []))]
    assert leaked == []
    name = container.container_name(image_agent.state_dir, "c1")
    assert podman("container", "exists", name, check=False).returncode == 0
    image_agent.call("cancel", key="c1", grace=2)
    rec = image_agent.wait_exited("c1")
    assert rec["reason"] == "cancelled"
    assert podman("container", "exists", name, check=False).returncode == 1  # removed, not left
    assert left(image_agent) == []
    assert not [p for p in psutil.process_iter(["cmdline"]) if secret in " ".join(p.info["cmdline"] or [])]
    # Pulled once: a second job finds the node's mark and asks podman nothing before its run.
    assert len(list((Path(image_agent.state_dir) / "images").glob("*.pulled"))) == 1
    launch(image_agent, "c2", 'id -u; echo "$CUDA_VISIBLE_DEVICES $HYBRIDCTL_GPUS"', registry[0], gpus=[1])
    assert image_agent.wait_exited("c2")["exit_code"] == 0
    # the container sees only its GPU, as device 0; HYBRIDCTL_GPUS names the node's
    assert out(image_agent, "c2").split("\n")[:2] == [str(NOBODY.pw_uid), "0 1"]
    assert left(image_agent) == []  # a normal exit: removed by the supervisor (no --rm)


def test_the_time_limit_stops_the_container(image_agent: AgentProc, registry: Tuple[str, str]) -> None:
    launch(image_agent, "c4", "trap '' TERM; sleep 120", registry[0], time_limit=1, kill_grace=0.5)
    rec = image_agent.wait_exited("c4")
    assert rec["reason"] == "timeout"
    name = container.container_name(image_agent.state_dir, "c4")
    assert podman("container", "exists", name, check=False).returncode == 1


def test_a_killed_supervisor_takes_its_container_with_it(image_agent: AgentProc,
                                                        registry: Tuple[str, str]) -> None:
    launch(image_agent, "c6", "echo started; sleep 300", registry[0])
    rec = wait_for(lambda: (lambda r: r if r["supervisor_pid"] and "started" in out(image_agent, "c6") else None)(
        image_agent.job("c6")), what="the image job to start")
    name = container.container_name(image_agent.state_dir, "c6")
    inside = int(podman("container", "inspect", "--format", "{{.State.Pid}}", name).stdout)
    assert inside > 0 and alive(inside)
    # The telemetry's owner map finds the job of a process in podman's cgroup below the job's.
    from hybridctl_agent.containment import agent_parent, job_of

    assert job_of(inside, os.path.basename(agent_parent("", image_agent.state_dir)), {"c6"}) == "c6"
    os.kill(rec["supervisor_pid"], signal.SIGKILL)
    done = image_agent.wait_exited("c6")
    assert done["reason"] == "lost: supervisor died"
    wait_for(lambda: not alive(inside), what="the container's process to be killed")
    assert podman("container", "exists", name, check=False).returncode == 1
    assert left(image_agent) == [] and not (image_agent.job_dir("c6") / container.CONMON_DIR).exists()
    job = agent_parent("/hybridctl", image_agent.state_dir).strip("/") + "/job-c6"
    assert [m for m in cgroup_mounts() if (m / job).exists()] == []  # podman's libpod-<id> and conmon too


def test_a_stopped_agent_leaves_no_cgroup_podman_made(image_agent: AgentProc, registry: Tuple[str, str]) -> None:
    from hybridctl_agent.containment import agent_parent

    launch(image_agent, "c5", "true", registry[0])
    assert image_agent.wait_exited("c5")["exit_code"] == 0
    rel = agent_parent("/hybridctl", image_agent.state_dir).strip("/")
    made = [m / rel for m in cgroup_mounts() if (m / rel).is_dir()]
    assert made  # podman's hierarchies (blkio, cpuset, ...) as well as the agent's own
    image_agent.stop()
    assert [d for d in made if d.exists()] == []


def test_root_in_passwd_and_a_setuid_root_binary_give_no_root(
        image_agent: AgentProc, registry: Tuple[str, str], workdir: Path, tmp_path: Path) -> None:
    secret = workdir / "secret"
    secret.write_text("TOPSECRET\n")
    os.chmod(secret, 0o600)  # root's, in a directory the job's user may enter
    # The attacker works: run as nobody without no-new-privileges, it reads the file.
    probe = tmp_path / "readfile"
    probe.write_bytes(tiny_elf(READFILE_CODE))
    os.chmod(tmp_path, 0o755)
    os.chmod(probe, 0o4755)
    control = subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                              str(probe), str(secret)], capture_output=True, text=True, timeout=30)
    assert control.stdout == "TOPSECRET\n"
    launch(image_agent, "c3", f"whoami; id -u; /bin/readfile {secret}; echo rc=$?; touch /etc/x; echo touch=$?",
           registry[0], workdir=str(workdir))
    rec = image_agent.wait_exited("c3")
    text = out(image_agent, "c3")
    assert rec["exit_code"] == 0, (rec, out(image_agent, "c3", "stderr"))
    assert "TOPSECRET" not in text
    assert text.split() == ["root", str(NOBODY.pw_uid), "rc=3", "touch=1"]  # "root" by name only


def test_a_link_into_a_private_directory_is_not_bound(image_agent: AgentProc, registry: Tuple[str, str],
                                                      workdir: Path) -> None:
    private = Path(tempfile.mkdtemp(prefix="hct-private-", dir="/tmp"))  # 0700 root
    try:
        (private / "pub").mkdir(mode=0o755)
        (private / "pub" / "data").write_text("behind a 0700 directory\n")
        os.symlink(private / "pub", workdir / "link")
        launch(image_agent, "c4", "cat data", registry[0], workdir=str(workdir / "link"))
        rec = image_agent.wait_exited("c4")
        assert rec["reason"].startswith("launch_failed") and "symbolic link" in rec["reason"], rec
        assert "behind" not in out(image_agent, "c4")
    finally:
        shutil.rmtree(private)


def test_the_output_dir_is_bound_when_it_passes_and_named_when_it_does_not(
        image_agent: AgentProc, registry: Tuple[str, str], workdir: Path) -> None:
    (workdir / "out").mkdir()
    os.chown(workdir / "out", NOBODY.pw_uid, NOBODY.pw_gid)
    os.symlink(workdir / "out", workdir / "out-link")
    launch(image_agent, "c7", 'echo done > "$HYBRIDCTL_OUTPUT_DIR/result.txt"', registry[0],
           envs={"HYBRIDCTL_OUTPUT_DIR": str(workdir / "out")})
    assert image_agent.wait_exited("c7")["exit_code"] == 0, out(image_agent, "c7", "stderr")
    made = workdir / "out" / "result.txt"
    assert made.read_text() == "done\n" and made.stat().st_uid == NOBODY.pw_uid
    launch(image_agent, "c2", 'echo done > "$HYBRIDCTL_OUTPUT_DIR/again.txt"', registry[0],
           envs={"HYBRIDCTL_OUTPUT_DIR": str(workdir / "out-link")})
    assert image_agent.wait_exited("c2")["exit_code"] != 0
    assert "HYBRIDCTL_OUTPUT_DIR is not bound into the container" in out(image_agent, "c2", "stderr")
    assert not (workdir / "out" / "again.txt").exists()


def test_bind_root_refuses_links_homes_and_unreachable_directories(workdir: Path) -> None:
    uid, gids = NOBODY.pw_uid, [NOBODY.pw_gid]
    fd = binds.bind_root(str(workdir), uid, gids)
    os.close(fd)
    private = Path(tempfile.mkdtemp(prefix="hct-private-", dir="/tmp"))
    try:
        (private / "pub").mkdir(mode=0o755)
        os.symlink(private / "pub", workdir / "link")
        for path, why in ((str(workdir / "link"), "symbolic link"), (str(private / "pub"), "cannot search"),
                          ("/", "home"), (str(workdir), "home"), ("relative", "absolute"),
                          (str(workdir) + "/../x", "absolute"), (str(workdir) + "/a:/etc", "':'")):
            with pytest.raises(binds.BindRefused, match=why):
                binds.bind_root(path, uid, gids, homes={str(workdir)} if why == "home" else set())
    finally:
        shutil.rmtree(private)


def test_two_jobs_naming_a_new_image_pull_it_once(image_agent: AgentProc, registry: Tuple[str, str]) -> None:
    fresh = registry[0].rsplit(":", 1)[0] + ":fresh-" + uuid.uuid4().hex[:8]  # in the registry, not on the node
    podman("pull", "--quiet", "--tls-verify=false", registry[0], env={"CONTAINERS_REGISTRIES_CONF": registry[1]})
    podman("tag", registry[0], fresh)
    podman("push", "--quiet", "--tls-verify=false", fresh)
    podman("rmi", fresh)
    try:
        for key in ("c8", "c9"):
            launch(image_agent, key, "true", fresh)
        assert [image_agent.wait_exited(k)["exit_code"] for k in ("c8", "c9")] == [0, 0]
        said = [out(image_agent, k, "stderr") for k in ("c8", "c9")]
        assert sum(f"pulled image {fresh} onto this node" in s for s in said) == 1, said
    finally:
        podman("rmi", "--force", "--ignore", fresh, check=False)


def test_a_failed_pull_names_the_image(image_agent: AgentProc, registry: Tuple[str, str]) -> None:
    missing = registry[0].rsplit(":", 1)[0] + ":no-such-tag"
    launch(image_agent, "c5", "true", missing)
    rec = image_agent.wait_exited("c5")
    assert "image_pull_failed" in rec["reason"] and missing in rec["reason"], rec
    assert left(image_agent) == []


def test_an_image_job_past_its_memory_limit_ends_out_of_memory(image_agent: AgentProc,
                                                              registry: Tuple[str, str]) -> None:
    # busybox tail keeps a line that never ends: 400 MiB of zeros against a 64 MiB limit
    launch(image_agent, "c10", "busybox head -c 400m /dev/zero | busybox tail", registry[0], memory_mb=64)
    rec = image_agent.wait_exited("c10")
    assert rec["exit_code"] == 128 + signal.SIGKILL, (rec, out(image_agent, "c10", "stderr"))
    # the same words as a job on the node's own OS (tests/agent/test_cgroup.py)
    assert (rec["reason"] or "").startswith("out_of_memory: the kernel killed a process of the job") \
        and "64 MiB" in rec["reason"], rec
    assert left(image_agent) == []
    assert not (image_agent.job_dir("c10") / container.CONMON_DIR).exists()
    # Not every failure under a limit is an OOM kill.
    launch(image_agent, "c11", "exit 3", registry[0], memory_mb=64)
    rec = image_agent.wait_exited("c11")
    assert (rec["exit_code"], rec["reason"]) == (3, None), rec
    assert left(image_agent) == []


@pytest.mark.parametrize("image", ["docker:--privileged", "docker:", "docker:a b", "docker:x/UPPER",
                                   "docker:x;rm -rf /", 42])
def test_an_image_that_is_no_reference_is_refused(image: Any) -> None:
    from hybridctl_agent.jobspec import plan_launch
    from hybridctl_agent.protocol import AgentError

    with pytest.raises(AgentError) as err:
        plan_launch({"key": "k", "run": "true", "image": image}, node="n", gpu_indices=[], rootless=True,
                    job_path="/usr/bin:/bin", kill_grace=1)
    assert err.value.code == "bad_request" and "image" in err.value.message


def test_the_podman_argv_keeps_the_job_to_itself() -> None:
    argv = container.build_argv(podman="/usr/bin/podman", ref="busybox:1", name="hybridctl-x-1", uid=1000,
                                gid=1000, groups=[1000, 27], gpus=[1, 3], env_path="/proc/self/fd/9",
                                parent="/hybridctl/agent-x/job-1", script="/s/jobs/1/job.sh",
                                binds=[("/data/w", "/data/w", False)], workdir="/data/w", runtime=None, cdi=True)
    joined = " ".join(argv)
    for part in ("--user 1000:1000", "--group-add 27", "--security-opt no-new-privileges",
                 "--cap-drop all", "--network host", "--env-file /proc/self/fd/9",
                 "--cgroup-parent /hybridctl/agent-x/job-1", "--device nvidia.com/gpu=1",
                 "--device nvidia.com/gpu=3", "-v /data/w:/data/w:rw", "-- busybox:1 /bin/sh -c"):
        assert part in joined, part
    assert "--group-add 1000" not in joined and "nvidia.com/gpu=0" not in joined
    assert "--privileged" not in argv and argv.index("--") == len(argv) - 6
    assert "--rm" not in argv  # kept until the supervisor has read its OOM state, then removed


def test_podmans_working_directory_is_private_fresh_and_holds_conmons_oom_mark(tmp_path: Path) -> None:
    jobdir = tmp_path / "job"
    jobdir.mkdir()
    run_dir = container.make_run_dir(str(jobdir))
    st = os.lstat(run_dir)
    assert run_dir == str(jobdir / container.CONMON_DIR)
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, os.geteuid())
    no_podman = str(tmp_path / "no-podman")  # podman is not asked when the mark is there, else False
    launch = container.Launch([], {}, -1, [], "hybridctl-x-none", None, no_podman, run_dir)
    assert launch.oom_killed(137, None) is False
    Path(run_dir, container.OOM_MARK).touch()  # what conmon makes in its working directory
    assert launch.oom_killed(137, None) is True and launch.oom_killed(None, 9) is True
    # trusted only for a job killed by SIGKILL: one that failed otherwise was no OOM kill
    assert launch.oom_killed(1, None) is False and launch.oom_killed(None, 15) is False
    assert container.make_run_dir(str(jobdir)) == run_dir and os.listdir(run_dir) == []  # a stale mark goes
    container.remove_run_dir(run_dir)
    assert not os.path.lexists(run_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / container.OOM_MARK).touch()
    os.symlink(elsewhere, run_dir)  # a link in its place is refused and never followed
    with pytest.raises(container.ContainerError, match="working directory"):
        container.make_run_dir(str(jobdir))
    assert (elsewhere / container.OOM_MARK).exists()


def test_the_env_file_carries_values_and_refuses_line_breaks() -> None:
    fd = container.env_file({"PATH": "/x", "A": "1 2 'three'", "B": ""})
    try:
        assert os.pread(fd, 4096, 0) == b"A=1 2 'three'\nB=\n"
    finally:
        os.close(fd)
    with pytest.raises(container.ContainerError, match="envs.K"):
        container.env_file({"K": "line1\nline2"})


def test_an_image_jobs_file_mounts_resolve_through_its_users_link_directory(
        image_agent: AgentProc, registry: Tuple[str, str]) -> None:
    """The job reads its file_mount through its own user's link directory (bound read-only), and
    cannot open the shared objects/ directory by id."""
    import hashlib
    data = b"mounted into a container " + uuid.uuid4().hex.encode()
    sha = hashlib.sha256(data).hexdigest()
    opened = image_agent.call("stage_open")
    Path(opened["path"], "f").write_bytes(data)
    image_agent.call("cache_add", token=opened["token"], files={"f": [sha, len(data)]})
    os.chmod(image_agent.base, 0o711)
    launch(image_agent, "c12", f"cat m; cat {image_agent.state_dir}/cache/objects/{sha} && echo OPENED",
           registry[0], file_mounts=[{"dst": "m", "objects": {"": [sha, len(data)]}}])
    rec = image_agent.wait_exited("c12")
    assert out(image_agent, "c12") == data.decode(), (rec, out(image_agent, "c12", "stderr"))
