"""Job execution through a real agent process: environment, exit codes, time limits, cancel,
crash recovery (agent, supervisor and fork server killed -9), logs, idempotency, validation, and
the long poll woken by the supervisors' reports."""

from __future__ import annotations

import json
import os
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import psutil
import pytest

from hybridctl_agent.client import AgentCallError
from tests.agent.agent_harness import AgentProc, alive
from tests.waiting import wait_for


def launch(agent: AgentProc, key: str, run: str, **job: Any) -> Dict[str, Any]:
    job.setdefault("uid", os.getuid())
    return agent.call("launch", job={"key": key, "run": run, **job})["job"]


def stdout(agent: AgentProc, key: str, stream: str = "stdout") -> str:
    return agent.call("logs", key=key, stream=stream, max_bytes=1 << 20)["data"]


def wait_file(path: Path) -> str:
    return wait_for(lambda: path.read_text().strip() if path.exists() else None, what=f"{path} to be written")


def fork_server(agent: AgentProc) -> psutil.Process:
    assert agent.proc is not None
    servers = [p for p in psutil.Process(agent.proc.pid).children()
               if "hybridctl_agent.supervise" in " ".join(p.cmdline())]
    assert len(servers) == 1, servers
    return servers[0]


RESCAN_S = 30.0
"""The slow-rescan agents below re-read their job directory this rarely, so a long poll that
answers within QUICK_S can only have been woken by an event."""
QUICK_S = 15.0


@pytest.fixture
def slow_rescan_agent(make_agent: Callable[..., AgentProc], tmp_path: Path) -> AgentProc:
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"jobs_rescan": RESCAN_S}))
    return make_agent("--simulate-gpus", "2:A100", "--config", str(cfg))


def long_poll(agent: AgentProc, since: str) -> Dict[str, Any]:
    """`jobs(since, wait=RESCAN_S)`; fails unless it answered with a change within QUICK_S."""
    t = time.monotonic()
    answer = agent.call("jobs", since=since, wait=RESCAN_S)
    assert time.monotonic() - t < QUICK_S, "the long poll was not woken by the change"
    assert answer["version"] != since
    return answer


def test_launch_pins_gpus_sets_env_and_records_exit_code(agent: AgentProc) -> None:
    node = agent.call("hello")["node"]
    rec = launch(agent, "42_0.1", "env; echo out-line; echo err-line >&2; exit 3",
                 setup="echo setup-ran", gpus=[1, 3],
                 envs={"FOO": "bar baz", "TRICKY": "$(touch /tmp/pwned); `id`", "N": 5})
    assert rec["key"] == "42_0.1" and rec["gpus"] == [1, 3]
    done = agent.wait_exited("42_0.1")
    assert (done["exit_code"], done["signal"], done["reason"]) == (3, None, None)
    assert done["ended_at"] >= done["started_at"] > 0
    out = stdout(agent, "42_0.1")
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert env["HYBRIDCTL_GPUS"] == "1,3"
    assert env["HYBRIDCTL_JOB_ID"] == "42_0"
    assert env["HYBRIDCTL_JOB_KEY"] == "42_0.1"
    assert env["HYBRIDCTL_NODE"] == node
    assert env["FOO"] == "bar baz" and env["N"] == "5"
    assert env["TRICKY"] == "$(touch /tmp/pwned); `id`"  # passed literally, never evaluated
    assert env["PATH"] and env["HOME"] and env["USER"] and env["LANG"]
    assert "PYTHONPATH" not in env  # the agent's own environment does not leak into jobs
    assert out.index("setup-ran") < out.index("out-line")
    assert stdout(agent, "42_0.1", "stderr") == "err-line\n"


def test_zero_gpus_get_an_empty_cuda_visible_devices(agent: AgentProc) -> None:
    launch(agent, "7", 'echo "cvd=[$CUDA_VISIBLE_DEVICES] set=${CUDA_VISIBLE_DEVICES+yes}"')
    assert agent.wait_exited("7")["exit_code"] == 0
    assert stdout(agent, "7") == "cvd=[] set=yes\n"


def test_failing_setup_fails_the_job_before_run(agent: AgentProc) -> None:
    launch(agent, "8", "echo run-reached", setup="false\necho setup-continued")
    done = agent.wait_exited("8")
    assert done["exit_code"] == 1
    assert stdout(agent, "8") == ""


def test_time_limit_terminates_with_reason_timeout(agent: AgentProc) -> None:
    launch(agent, "9", "sleep 300", time_limit=1)
    done = agent.wait_exited("9")
    assert done["reason"] == "timeout"
    assert done["signal"] == signal.SIGTERM and done["exit_code"] is None


def test_time_limit_escalates_to_sigkill_after_grace(agent: AgentProc) -> None:
    launch(agent, "10", "trap '' TERM; sleep 300", time_limit=1, kill_grace=1)
    done = agent.wait_exited("10")
    assert (done["reason"], done["signal"]) == ("timeout", signal.SIGKILL)


def test_cancel_kills_the_whole_process_group(agent: AgentProc) -> None:
    run = ("bash -c 'sleep 300 & echo $! > grandchild.pid; wait' &\n"
           "echo $! > child.pid\n"
           "sleep 300 & echo $! > sleeper.pid\n"
           "wait\n")
    launch(agent, "11", run, gpus=[0])
    work = agent.job_dir("11") / "work"
    pids = [int(wait_file(work / f"{n}.pid")) for n in ("grandchild", "child", "sleeper")]
    job_pid = agent.job("11")["pid"]
    assert all(alive(p) for p in pids + [job_pid])
    rec = agent.call("cancel", key="11", grace=5)["job"]
    assert rec["key"] == "11"
    done = agent.wait_exited("11")
    assert done["reason"] == "cancelled"
    for pid in pids + [job_pid]:
        wait_for(lambda: not alive(pid), what=f"pid {pid} to be gone")
    again = agent.call("cancel", key="11")["job"]  # idempotent
    assert again == done


def test_job_survives_agent_kill9_and_its_result_is_recorded(agent: AgentProc) -> None:
    launch(agent, "12_0.1", "while [ ! -e go ]; do sleep 0.05; done; echo finished; exit 7")
    launch(agent, "12_1.1", "while [ ! -e go ]; do sleep 0.05; done; exit 5")
    before = wait_for(lambda: all(agent.job(k)["pid"] for k in ("12_0.1", "12_1.1")), what="job pids")
    assert before
    pid = agent.job("12_0.1")["pid"]
    boot = agent.call("hello")["boot_id"]
    agent.kill9()
    assert alive(pid), "the job died with the agent"
    (agent.job_dir("12_1.1") / "work" / "go").touch()  # this one ends while the agent is down
    wait_for(lambda: (agent.job_dir("12_1.1") / "exit.json").exists(), what="job 12_1.1 to end")
    agent.start()  # same socket (stale file left by kill -9) and state dir
    assert agent.call("hello")["boot_id"] != boot
    rec = agent.job("12_0.1")
    assert (rec["state"], rec["pid"]) == ("running", pid)
    assert agent.call("logs", key="12_0.1")["eof"] is False
    assert agent.job("12_1.1")["exit_code"] == 5
    (agent.job_dir("12_0.1") / "work" / "go").touch()
    done = agent.wait_exited("12_0.1")
    assert (done["exit_code"], done["reason"]) == (7, None)
    assert stdout(agent, "12_0.1") == "finished\n"


def test_supervisor_killed_is_reported_lost_and_its_job_killed(agent: AgentProc) -> None:
    launch(agent, "13", "sleep 300")
    rec = wait_for(lambda: (lambda r: r if r["pid"] and r["supervisor_pid"] else None)(
                       agent.job("13")), what="supervisor and job pids")
    os.kill(rec["supervisor_pid"], signal.SIGKILL)
    done = agent.wait_exited("13")
    assert done["exit_code"] is None
    assert done["reason"] == "lost: supervisor died"
    wait_for(lambda: not alive(rec["pid"]), what="the orphaned job to be killed")
    assert agent.job("13") == done  # stable from now on


def test_logs_read_byte_ranges_on_character_boundaries(agent: AgentProc) -> None:
    launch(agent, "14", "printf 'hello world\\n\\303\\251\\303\\251\\n'")
    agent.wait_exited("14")
    total = len("hello world\n".encode()) + len("éé\n".encode())
    first = agent.call("logs", key="14", offset=0, max_bytes=5)
    assert (first["data"], first["offset"], first["eof"]) == ("hello", 5, False)
    rest = agent.call("logs", key="14", offset=5)
    assert (rest["data"], rest["offset"], rest["eof"]) == (" world\néé\n", total, True)
    split = agent.call("logs", key="14", offset=12, max_bytes=3)  # would cut the second é
    assert (split["data"], split["offset"]) == ("é", 14)
    tail = agent.call("logs", key="14", offset=-3)
    assert (tail["data"], tail["offset"], tail["eof"]) == ("é\n", total, True)
    assert agent.call("logs", key="14", offset=-2)["data"] == "\n"  # no half character
    past = agent.call("logs", key="14", offset=10_000)
    assert (past["data"], past["offset"], past["eof"]) == ("", total, True)
    err_log = agent.call("logs", key="14", stream="stderr")
    assert (err_log["data"], err_log["offset"], err_log["eof"]) == ("", 0, True)
    for bad, code in (({"key": "nope"}, "not_found"), ({"key": "14", "stream": "both"},
                      "bad_request"), ({"key": "14", "max_bytes": 0}, "bad_request"),
                      ({"key": "../state"}, "bad_request")):
        with pytest.raises(AgentCallError) as err:
            agent.call("logs", **bad)
        assert err.value.code == code


def test_launch_is_idempotent(agent: AgentProc) -> None:
    run = "echo ran >> ran.txt; sleep 300"
    launch(agent, "15", run)
    pid = wait_for(lambda: agent.job("15")["pid"], what="job 15 to start")
    assert launch(agent, "15", run)["pid"] == pid
    other = launch(agent, "15", "echo a different script", gpus=[99])  # known key: no checks
    assert other["pid"] == pid
    results: List[Dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: results.append(launch(agent, "16", run)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pid16 = wait_for(lambda: agent.job("16")["pid"], what="job 16 to start")
    assert len(results) == 3 and {r["pid"] for r in results} <= {pid16, None}
    for key in ("15", "16"):
        wait_file(agent.job_dir(key) / "work" / "ran.txt")
        agent.call("cancel", key=key, grace=1)
    for key in ("15", "16"):
        agent.wait_exited(key)
        assert (agent.job_dir(key) / "work" / "ran.txt").read_text() == "ran\n"
    keys = [j["key"] for j in agent.call("jobs")["jobs"]]
    assert sorted(keys) == ["15", "16"]


@pytest.mark.parametrize("key", ["", "../etc", "a/b", "a b", "x" * 129, ".hidden", "..", 5, None,
                                 "naïve"])
def test_bad_keys_are_refused(agent: AgentProc, key: Any) -> None:
    with pytest.raises(AgentCallError) as err:
        agent.call("launch", job={"key": key, "run": "true", "uid": os.getuid()})
    assert err.value.code == "bad_request"
    assert "key" in err.value.message
    assert not any(Path(agent.state_dir, "jobs").iterdir())


@pytest.mark.parametrize("job, code, words", [
    ({"gpus": [7]}, "refused", "GPU 7 does not exist"),
    ({"gpus": [0, 0]}, "bad_request", "twice"),
    ({"gpus": "0"}, "bad_request", "job.gpus"),
    ({"workdir": "relative/dir"}, "bad_request", "absolute"),
    ({"time_limit": -1}, "bad_request", "time_limit"),
    ({"run": None}, "bad_request", "job.run is required"),
    ({"envs": {"BAD-NAME": "x"}}, "bad_request", "BAD-NAME"),
    ({"envs": {"X": ["list"]}}, "bad_request", "job.envs.X"),
])
def test_bad_launch_fields_name_the_field(agent: AgentProc, job: Dict[str, Any], code: str,
                                          words: str) -> None:
    spec = {"key": "20", "run": "true", "uid": os.getuid(), **job}
    with pytest.raises(AgentCallError) as err:
        agent.call("launch", job=spec)
    assert err.value.code == code and words in err.value.message


def test_workdir_is_used_and_a_missing_one_fails_the_launch(agent: AgentProc,
                                                            tmp_path: Path) -> None:
    launch(agent, "21", "pwd", workdir=str(tmp_path))
    agent.wait_exited("21")
    assert stdout(agent, "21") == f"{tmp_path}\n"
    rec = launch(agent, "22", "pwd", workdir="/nonexistent/dir")
    done = rec if rec["state"] == "exited" else agent.wait_exited("22")
    assert done["reason"].startswith("launch_failed: ")
    assert "/nonexistent/dir" in done["reason"] and "No such file" in done["reason"]
    assert done["exit_code"] is None and done["pid"] is None


def test_forget_drops_exited_records_only(agent: AgentProc) -> None:
    launch(agent, "23", "echo kept")
    launch(agent, "24", "sleep 300")
    agent.wait_exited("23")
    with pytest.raises(AgentCallError) as err:
        agent.call("forget", key="24")
    assert err.value.code == "refused"
    agent.call("forget", key="23")
    assert [j["key"] for j in agent.call("jobs")["jobs"]] == ["24"]
    with pytest.raises(AgentCallError) as err:
        agent.call("logs", key="23")
    assert err.value.code == "not_found"
    assert (Path(agent.state_dir) / "done" / "23" / "stdout.log").read_text() == "kept\n"
    agent.restart()
    assert [j["key"] for j in agent.call("jobs")["jobs"]] == ["24"]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run jobs as other users")


@pytest.mark.needs_root
@needs_root
def test_unknown_uid_is_refused(agent: AgentProc) -> None:
    with pytest.raises(AgentCallError) as err:
        agent.call("launch", job={"key": "30", "run": "true", "uid": 3_999_999})
    assert err.value.code == "refused" and "uid 3999999 does not exist" in err.value.message
    with pytest.raises(AgentCallError) as err:
        agent.call("launch", job={"key": "30", "run": "true"})
    assert err.value.code == "bad_request" and "uid" in err.value.message


@pytest.mark.needs_root
@needs_root
def test_job_runs_as_the_requested_user(agent: AgentProc) -> None:
    import pwd
    nobody = pwd.getpwnam("nobody")
    os.chmod(agent.base, 0o711)  # the job's user must be able to reach its job directory
    launch(agent, "31", "id -u; id -g; echo $USER $HOME; touch made-here; pwd",
           uid=nobody.pw_uid, gid=nobody.pw_gid, user="nobody")
    done = agent.wait_exited("31")
    assert done["exit_code"] == 0, stdout(agent, "31", "stderr")
    lines = stdout(agent, "31").splitlines()
    assert lines[:3] == [str(nobody.pw_uid), str(nobody.pw_gid), f"nobody {nobody.pw_dir}"]
    made = agent.job_dir("31") / "work" / "made-here"
    assert made.stat().st_uid == nobody.pw_uid
    assert (agent.job_dir("31") / "stdout.log").stat().st_uid == nobody.pw_uid
    assert (agent.job_dir("31") / "spec.json").stat().st_uid == 0  # the agent's files stay its own
    with pytest.raises(AgentCallError) as err:  # the name must match the uid on this host
        agent.call("launch", job={"key": "32", "run": "true", "uid": nobody.pw_uid,
                                  "user": "root"})
    assert err.value.code == "refused"


def test_launch_answers_once_the_supervisor_detached(agent: AgentProc) -> None:
    """The answer does not wait for bash: a record may be `running` with `pid: null`, and the
    start shows in a later listing."""
    with agent.client() as c:
        answers = [c.call("launch", job={"key": f"50_{i}.1", "run": "sleep 300",
                                         "uid": os.getuid()})["job"] for i in range(20)]
    assert all(a["state"] == "running" for a in answers)
    assert any(a["pid"] is None for a in answers), "every launch waited for its bash to start"
    for a in answers:
        rec = wait_for(lambda: (lambda r: r if r["pid"] else None)(agent.job(a["key"])),
                       what=f"job {a['key']} to start")
        assert alive(rec["pid"]) and rec["started_at"] > 0


def test_long_poll_wakes_on_launch_start_end_and_forget(slow_rescan_agent: AgentProc) -> None:
    agent = slow_rescan_agent
    empty = agent.call("jobs")["version"]
    polled: List[Dict[str, Any]] = []
    watcher = threading.Thread(target=lambda: polled.append(long_poll(agent, empty)))
    watcher.start()
    launch(agent, "51", "while [ ! -e go ]; do sleep 0.02; done; exit 4")
    watcher.join()
    assert polled and [j["key"] for j in polled[0]["jobs"]] == ["51"]
    version = polled[0]["version"]
    while not agent.job("51")["pid"]:  # each change (here: bash started) wakes the poll
        version = long_poll(agent, version)["version"]
    version = agent.call("jobs")["version"]  # started; it ends only once `go` exists
    (agent.job_dir("51") / "work" / "go").touch()
    ended = long_poll(agent, version)
    assert [(j["state"], j["exit_code"]) for j in ended["jobs"]] == [("exited", 4)]
    agent.call("forget", key="51")
    assert long_poll(agent, ended["version"])["jobs"] == []


def test_supervisors_wake_the_long_poll_of_a_restarted_agent(slow_rescan_agent: AgentProc) -> None:
    agent = slow_rescan_agent
    launch(agent, "52", "while [ ! -e go ]; do sleep 0.02; done")
    wait_for(lambda: agent.job("52")["pid"], what="job 52 to start")
    old_server = fork_server(agent)
    agent.kill9()
    wait_for(lambda: not alive(old_server.pid), what="the fork server to exit with its agent")
    agent.start()
    version = agent.call("jobs")["version"]
    (agent.job_dir("52") / "work" / "go").touch()
    ended = long_poll(agent, version)
    assert [(j["state"], j["exit_code"]) for j in ended["jobs"]] == [("exited", 0)]


def test_a_killed_fork_server_is_replaced_and_its_jobs_keep_running(agent: AgentProc) -> None:
    launch(agent, "53", "sleep 300")
    pid = wait_for(lambda: agent.job("53")["pid"], what="job 53 to start")
    server = fork_server(agent)
    server.kill()
    server.wait(timeout=60)
    launch(agent, "54", "echo second")
    assert agent.wait_exited("54")["exit_code"] == 0
    assert fork_server(agent).pid != server.pid
    assert alive(pid) and agent.job("53")["state"] == "running"


def test_cancel_gives_the_jobs_processes_the_rest_of_the_grace_after_bash_dies(agent: AgentProc) -> None:
    # bash dies of SIGTERM at once; the trainer behind it needs a moment to save its checkpoint.
    trainer = "trap 'sleep 1; echo saved > saved.txt; exit 0' TERM; echo up > ready; while :; do sleep 0.05; done"
    launch(agent, "15", f"bash -c {shlex.quote(trainer)}\n")
    work = agent.job_dir("15") / "work"
    wait_file(work / "ready")
    agent.call("cancel", key="15", grace=20)
    done = agent.wait_exited("15")
    assert done["reason"] == "cancelled"
    assert (work / "saved.txt").read_text() == "saved\n"  # it ran to the end of its trap, not SIGKILLed


def test_an_ended_job_says_whether_it_left_a_checkpoint(agent: AgentProc) -> None:
    launch(agent, "31.a0.r0", 'echo step=7 > "$HYBRIDCTL_CHECKPOINT_DIR/ckpt.txt"')
    launch(agent, "32.a0.r0", "true")
    sleeper = launch(agent, "33.a0.r0", 'touch "$HYBRIDCTL_CHECKPOINT_DIR/x"; sleep 600')
    assert agent.wait_exited("31.a0.r0")["has_checkpoint"] is True
    assert agent.wait_exited("32.a0.r0")["has_checkpoint"] is False
    assert "has_checkpoint" not in agent.job(sleeper["key"])  # only an ended job's record says
    wait_for((Path(agent.call("hello")["checkpoint_root"]) / "33" / "x").exists, what="the sleeper's checkpoint file")
    agent.call("cancel", key="33.a0.r0", grace=0)
    assert agent.wait_exited("33.a0.r0")["has_checkpoint"] is True
