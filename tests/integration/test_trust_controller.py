"""The controller as a service shared by every local user: one user can neither read another's
secrets nor stop the controller for everyone. Real controller processes; the other user is
`nobody`, reached by dropping root's uid in a child process after its imports."""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import require
from tests.integration.harness import SMALL_FLEET, ControllerProc, make_controller
from tests.integration.other_user import AsUser, Result
from tests.waiting import wait_for

# Runs as root, imports what it needs, then drops to the other uid (the interpreter may live in a
# 0700 directory, so a fresh process as `nobody` could not even start Python). Prints one JSON line.
# The flood, as another uid: idle connections until refused, then one malformed request of each
# kind on connections it already holds. Reports what it saw as one JSON line, then keeps its
# connections open until its stdin closes.
FLOOD = textwrap.dedent(
    """
    import json, os, socket, sys
    uid, gid, path, conns, big = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    os.setgroups([]); os.setgid(gid); os.setuid(uid)
    held, accepted, refusal = [], 0, None
    for _ in range(conns):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(10); s.connect(path)
        f = s.makefile("rwb")
        try:
            f.write(b'{"op": "ping"}\\n'); f.flush()
        except OSError:
            pass  # refused: the controller may hang up before the request is sent; its reason is there to read
        line = f.readline()
        if b'"ok": true' in line:
            accepted += 1; held.append((s, f))
        else:
            refusal = line.decode()
            try:
                f.close()
            except OSError:
                pass  # the ping it could not send is still buffered: closing tries again, to a closed socket
            s.close(); break
    bad = {"oversized": b"x" * big + b"\\n", "deep": b"[" * 100000 + b"]" * 100000 + b"\\n",
           "utf8": b'{"op": "ping\\xff\\xfe"}\\n', "huge_int": b'{"op": "events", "args": {"limit": 1' + b"0" * 5000 + b'}}\\n',
           "not_json": b"hello\\n", "nan": b'{"op": "events", "args": {"limit": NaN}}\\n'}
    replies = {}
    for (s, f), (name, data) in zip(held, bad.items()):
        try:
            f.write(data); f.flush()
        except OSError:
            pass  # the oversized line: the controller may hang up before it is all sent
        replies[name] = f.readline().decode()
    print(json.dumps({"accepted": accepted, "refusal": refusal, "replies": replies}), flush=True)
    sys.stdin.read()
    """
)


def nobody() -> pwd.struct_passwd:
    require(os.geteuid() == 0, "needs root to run a client as another uid")
    return pwd.getpwnam("nobody")


@pytest.fixture
def as_nobody(as_user: AsUser) -> Callable[..., Result]:
    """`as_nobody(controller, *args)`: the CLI as nobody (tests/integration/other_user.py)."""
    who = nobody()
    return lambda c, *args: as_user(c.env, who.pw_uid, who.pw_gid, *args)


def call(c: ControllerProc, op: str, **args: Any) -> Any:
    from hybridctl.control.client import Client

    with Client(c.socket, timeout=30) as cl:
        return cl.call(op, **args)


# ---- confidentiality ---------------------------------------------------------------------------


def test_another_user_sees_neither_the_env_values_nor_the_command_of_my_job(
    controller: ControllerProc, as_nobody: Callable[..., Result]
) -> None:
    job = controller.cli("submit", "--env", "API_TOKEN=hunter2-secret", "--name", "train", "--",
                         "curl -H 'Authorization: topsecret-cmd' x", check=True).stdout.strip()
    mine = controller.cli_json("show", job)
    assert mine["spec"]["envs"] == {"API_TOKEN": "hunter2-secret"} and "topsecret-cmd" in mine["spec"]["run"]
    for args in (("show", job, "--json"), ("show", job), ("queue", "--all", "--json")):
        res = as_nobody(controller, *args)
        assert res.code == 0, (args, res)
        assert "hunter2" not in res.out and "topsecret" not in res.out, (args, res.out)
    theirs = json.loads(as_nobody(controller, "show", job, "--json").out)
    assert theirs["spec"]["envs"] == {"API_TOKEN": "<hidden>"}
    assert "topsecret" not in theirs["spec"]["run"] and theirs["redacted"] == ["envs", "run", "setup"]
    assert theirs["spec"]["resources"] == mine["spec"]["resources"] and theirs["name"] == "train"


def test_state_files_are_private_after_a_job_ran(tmp_path: Path, as_nobody: Callable[..., Result]) -> None:
    """Database, WAL, pulled logs and checkpoint copies: owner-only, in an owner-only home; the
    log that `hybridctl logs` refuses to show another user cannot be read with `cat` either."""
    from tests.integration.nodes import solo_node

    who = nobody()
    fleet = {"poll_interval": 0.5, "checkpoint_sync_interval": 1.0}
    with solo_node(tmp_path, fleet) as ctl:
        script = 'echo step-1 > "$HYBRIDCTL_CHECKPOINT_DIR/state"; echo done-secret-output'
        job = ctl.cli("submit", "--gpus", "1", "--", script, check=True).stdout.strip()
        wait_for(lambda: ctl.cli_json("show", job)["tasks"][0]["state"] == "SUCCEEDED", 60, what="job done")
        log = wait_for(lambda: next(iter((ctl.home / "logs").glob(f"{job}.*.stdout")), None), 30, what="pulled log")
        ckpt = wait_for(lambda: next(iter((ctl.home / "checkpoints").rglob("state")), None), 30, what="checkpoint")
        assert as_nobody(ctl, "logs", job).code == 3
        modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (ctl.home, ctl.home / "hybridctl.db",
                                                           ctl.home / "hybridctl.db-wal", ctl.home / "logs", log,
                                                           ckpt.parent, ckpt)}
        assert {str(p): m for p, m in modes.items() if m & 0o077} == {}
        peek = subprocess.run(
            [sys.executable, "-c", "import os, sys; os.setgroups([]); os.setgid(int(sys.argv[2])); "
             "os.setuid(int(sys.argv[1]))\ntry:\n print(open(sys.argv[3]).read())\nexcept OSError as e:\n print(e.errno)",
             str(who.pw_uid), str(who.pw_gid), str(log)], capture_output=True, text=True, timeout=30)
        assert "done-secret-output" not in peek.stdout and peek.stdout.strip() == "13", peek


def test_an_existing_open_home_is_tightened_at_start(start_controller: Callable[..., ControllerProc],
                                                     tmp_path: Path) -> None:
    home = tmp_path / "c0" / "home"
    (home / "logs").mkdir(parents=True)
    os.chmod(home, 0o755)
    os.chmod(home / "logs", 0o755)
    c = start_controller()
    assert c.home == home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700 and stat.S_IMODE((home / "logs").stat().st_mode) == 0o700


def test_the_shipped_unit_keeps_state_private() -> None:
    unit = (Path(__file__).resolve().parents[2] / "config" / "hybridctl.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["StateDirectoryMode"] == "0700" and settings["UMask"] == "0077"
    assert "HYBRIDCTL_SOCKET=/run/hybridctl/controller.sock" in unit


def test_the_shipped_unit_lets_the_controller_write_where_it_writes_by_default() -> None:
    """ProtectSystem=strict makes /var read-only but for the unit's state directories: the state
    and the default simulated cloud (beside it) must both be among them."""
    from hybridctl import config
    from hybridctl.cloud.providers import simulated_root

    unit = (Path(__file__).resolve().parents[2] / "config" / "hybridctl.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    env = dict(line.split("=", 1)[1].split("=", 1) for line in unit.splitlines() if line.startswith("Environment="))
    assert settings["ProtectSystem"] == "strict"
    writable = [Path("/var/lib") / d for d in settings["StateDirectory"].split()]
    assert writable == [Path(p) for p in settings["ReadWritePaths"].split()]
    s = config.Settings(home=env["HYBRIDCTL_HOME"])
    assert s.home_path in writable and simulated_root(s) in writable


def test_key_files_are_never_readable_by_others_not_even_for_a_moment(tmp_path: Path) -> None:
    """Watch every chmod and file creation: the private key must be 0600 from its creation."""
    from hybridctl.sim.keys import client_key

    seen: list[tuple[str, int]] = []
    target = str(tmp_path / "keys" / "id_ed25519")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in ("os.chmod", "open") and args and str(args[0]) == target and os.path.exists(target):
            seen.append((event, stat.S_IMODE(os.stat(target).st_mode)))

    old = os.umask(0o022)
    sys.addaudithook(hook)
    try:
        path = client_key(tmp_path / "keys")
    finally:
        os.umask(old)
        target = ""  # the hook stays installed for the process: make it inert
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [s for s in seen if s[1] & 0o077] == []


# ---- the controller stays up for everyone -----------------------------------------------------

LIMITED = {**SMALL_FLEET, "limits": {"max_connections_per_uid": 40, "max_request_bytes": 65536,
                                     "bad_request_log_per_minute": 20}}


def test_a_flood_from_one_user_leaves_the_controller_answering_others(
        start_controller: Callable[..., ControllerProc]) -> None:
    who = nobody()
    c = start_controller(LIMITED)
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(who.pw_uid), str(who.pw_gid), str(c.socket),
                              "200", str(8 * 1024 * 1024)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout is not None
        report = json.loads(flood.stdout.readline())
        print(f"\nflood: {report['accepted']} idle connections accepted before refusal")
        assert report["accepted"] == 40, report
        assert f"too many connections from uid {who.pw_uid} (limit 40" in report["refusal"]
        for name, line in report["replies"].items():
            reply = json.loads(line)
            assert reply["ok"] is False and "\n" not in reply["error"], (name, reply)
        assert "limits.max_request_bytes" in report["replies"]["oversized"]
        # While nobody still holds its connections, root is served at once.
        started = time.monotonic()
        rows = call(c, "queue", all=True)
        assert time.monotonic() - started < 2.0 and rows == []
        assert c.cli("queue", timeout=10).returncode == 0
    finally:
        flood.communicate(timeout=30)
    text = c.log.read_text()
    assert "Traceback" not in text
    bad = [line for line in text.splitlines() if f"uid {who.pw_uid}" in line and "bad request" in line]
    assert len(bad) == 6, bad  # one line per malformed request (within the per-minute allowance)


def test_bad_request_logging_is_rate_limited_per_uid(start_controller: Callable[..., ControllerProc]) -> None:
    c = start_controller({**SMALL_FLEET, "limits": {"bad_request_log_per_minute": 5}})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(c.socket))
        f = s.makefile("rwb")
        for _ in range(300):
            f.write(b"[[[[[[[[\n")
        f.flush()
        replies = [json.loads(f.readline()) for _ in range(300)]
    assert all(not r["ok"] and r["error"].startswith("malformed request") for r in replies)
    assert call(c, "ping")["user"] == "root"
    lines = [line for line in c.log.read_text().splitlines() if "bad request" in line]
    assert 5 <= len(lines) <= 6, lines  # five, then at most one "… more suppressed" line


def test_idle_connections_are_closed_but_clients_reconnect_transparently(
        start_controller: Callable[..., ControllerProc]) -> None:
    from hybridctl.control.client import Client

    c = start_controller({**SMALL_FLEET, "limits": {"idle_timeout": 1.0}})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(c.socket))
        s.sendall(b'{"op": "pi')  # half a request, then nothing: a slowloris
        started = time.monotonic()
        data = s.makefile("rb").read()
        assert 0.5 < time.monotonic() - started < 5.0
        assert b"idle" in data and data.endswith(b"\n")
    with Client(c.socket, timeout=10) as cl:  # a long-lived client (the TUI's action lane) outlives it
        assert cl.call("ping")["user"] == "root"
        wait_for(lambda: cl._sock is not None and _closed_by_peer(cl._sock), 10, what="the idle close")
        assert cl.call("ping")["user"] == "root"


def _closed_by_peer(s: socket.socket) -> bool:
    import select

    return bool(select.select([s], [], [], 0)[0])


def test_submit_limits_are_refused_with_exit_2_naming_the_key(start_controller: Callable[..., ControllerProc]) -> None:
    c = start_controller({**SMALL_FLEET, "limits": {"max_array_tasks": 10, "max_pending_tasks_per_user": 15}})
    for node in ("gpu01", "gpu02"):  # nothing starts: every task stays PENDING
        c.cli("node", "drain", node, check=True)
    big = c.cli("submit", "--array", "1-11", "--gpus", "1", "--", "true")
    assert big.returncode == 2 and "limits.max_array_tasks" in big.stderr and "11 tasks" in big.stderr, big.stderr
    assert c.cli("submit", "--array", "1-10", "--gpus", "1", "--", "true").returncode == 0
    more = c.cli("submit", "--array", "1-6", "--gpus", "1", "--", "true")
    assert more.returncode == 2 and "limits.max_pending_tasks_per_user" in more.stderr, more.stderr
    assert c.cli("submit", "--array", "1-5", "--gpus", "1", "--", "true").returncode == 0


def test_defaults_are_slurm_like() -> None:
    from hybridctl.config import Settings

    lim = Settings().limits
    assert (lim.max_array_tasks, lim.max_pending_tasks_per_user, lim.max_connections_per_uid) == (1001, 10000, 64)


def test_every_limits_key_is_documented_in_the_example() -> None:
    import dataclasses

    import yaml

    from hybridctl import config

    example = Path(__file__).resolve().parents[2] / "config" / "hybridctl.example.yaml"
    documented = yaml.safe_load(example.read_text())["limits"]
    assert documented == dataclasses.asdict(config.LimitsConfig())


def test_clients_find_the_system_controller_when_they_have_none_of_their_own(
        tmp_path: Path, monkeypatch: Any) -> None:
    from hybridctl import paths

    system = tmp_path / "run" / "controller.sock"
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", system)
    monkeypatch.delenv("HYBRIDCTL_SOCKET", raising=False)
    monkeypatch.delenv("HYBRIDCTL_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "alice"))
    own = tmp_path / "alice" / ".local" / "state" / "hybridctl" / "hybridctl.sock"
    assert paths.socket_path() == own  # neither exists: the error names the user's own
    system.parent.mkdir(parents=True)
    system.touch()
    assert paths.socket_path() == system
    own.parent.mkdir(parents=True)
    own.touch()
    assert paths.socket_path() == own
    monkeypatch.setenv("HYBRIDCTL_SOCKET", "/elsewhere.sock")
    assert paths.socket_path() == Path("/elsewhere.sock")


def test_a_100k_task_array_is_taken_whole_while_another_client_is_served(
        start_controller: Callable[..., ControllerProc]) -> None:
    """A 100,000-task array is accepted in one piece while another client keeps pinging on its own
    connection, and that client is still answered afterwards (not dropped or stuck behind it). The
    scheduling pass that follows is held off (min_interval). How long the other client waits is a
    speed question, measured against a 100-task baseline by bench/huge_array.py, not asserted
    here; the worst ping is printed."""
    cfg = {**SMALL_FLEET, "scheduler": {"tick_seconds": 600.0, "min_interval": 600.0},
           "limits": {"max_array_tasks": 100000, "max_pending_tasks_per_user": 100000}}
    c = start_controller(cfg)
    from hybridctl.core.spec import apply_flags

    lat: list[float] = []
    stop = threading.Event()

    def ping() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(c.socket))
            f = s.makefile("rwb")
            while not stop.is_set():
                t = time.perf_counter()
                f.write(b'{"op": "ping"}\n')
                f.flush()
                if b'"user"' not in f.readline():
                    return  # dropped, or answered with an error: no more pings count
                lat.append(time.perf_counter() - t)
                time.sleep(0.005)

    th = threading.Thread(target=ping)
    th.start()
    try:
        wait_for(lambda: len(lat) > 5, 10, what="pings")
        started = time.perf_counter()
        res = call(c, "submit", spec=apply_flags({}, gpus="1", array="1-100000", run=["true"]), source="bench")
        took = time.perf_counter() - started
        before = len(lat)
        wait_for(lambda: len(lat) >= before + 5, 30, what="pings after the submit")
    finally:
        stop.set()
        th.join(timeout=30)
    worst = max(lat)
    print(f"\n100k-task array: submit {took:.2f} s; worst ping of another client {worst * 1000:.0f} ms "
          f"over {len(lat)} pings")
    assert res["id"] and len(call(c, "show", job=str(res["id"]))["tasks"]) == 100000


# ---- the socket ---------------------------------------------------------------------------------


def test_a_second_controller_on_the_same_socket_is_refused(tmp_path: Path, controller: ControllerProc) -> None:
    other = make_controller(tmp_path / "other", SMALL_FLEET)
    other.socket = controller.socket
    res = subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "server"], env=other.env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 1 and "another controller is already listening on" in res.stderr, res.stderr
    assert str(controller.socket) in res.stderr and "Traceback" not in res.stderr
    assert controller.socket.exists() and call(controller, "ping")["user"] == "root"


def test_a_controller_leaves_a_socket_it_no_longer_owns(tmp_path: Path, controller: ControllerProc) -> None:
    controller.socket.unlink()  # e.g. an admin removed it; a second controller then took the path
    second = make_controller(tmp_path / "second", SMALL_FLEET)
    second.socket = controller.socket
    second.start()
    try:
        controller.stop()
        assert controller.socket.exists() and call(second, "ping")["user"] == "root"
    finally:
        second.stop()
    assert not controller.socket.exists()


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    c = make_controller(tmp_path / "c", SMALL_FLEET)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(c.socket))
    stale.close()  # the file stays, nobody listens: what a killed controller leaves
    c.start()
    try:
        assert call(c, "ping")["user"] == "root"
    finally:
        c.stop()
