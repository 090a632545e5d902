"""Turning a machine into a fleet node over SSH: pin its host key, copy the agent over SFTP (with,
optionally, an offline wheel bundle of its dependencies), start it under systemd or detached, and
wait for its socket. The autoscaler uses it for fresh cloud instances (`install_agent`),
`hybridctl node add --install` for servers (`install_over_ssh`); re-running it upgrades in place.

Layout on the node, under one directory (default /opt/hybridctl-agent as root, else
~/.hybridctl): pkg/ (the agent package), deps/ (psutil and nvidia-ml-py, when the node's Python
lacks them), wheels/ (the copied bundle), state/, agent.sock, and agent.log + agent.pid when it
runs without systemd. A directory on PYTHONPATH rather than a venv: many servers' Pythons lack the
venv module (Debian's python3-venv), and the agent needs nothing but psutil and nvidia-ml-py."""

from __future__ import annotations

import asyncio
import logging
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from hybridctl.cloud.base import Instance
from hybridctl.core.errors import HybridctlError, SpecError
from hybridctl.ssh.shell import RemoteError, Shell, open_shell

log = logging.getLogger("hybridctl.bootstrap")

SERVICE = "hybridctl-agent"
DEPENDENCIES = ("psutil", "nvidia-ml-py")
# Words that go into a systemd unit unquoted: no spaces, quotes, '%' specifiers, '$' or '\'.
UNIT_WORD = re.compile(r"[A-Za-z0-9_./+@:,=-]+")


class BootstrapFailed(HybridctlError):
    """A machine could not be made into a node."""


def known_host_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def forget_host(known_hosts: Path, host: str, port: int) -> None:
    """Drop pinned keys for host:port: a new instance may reuse an address (or a loopback port)
    with a new key, and it was just launched by us."""
    if not known_hosts.exists():
        return
    name = known_host_name(host, port)
    lines = known_hosts.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if ln.split(" ", 1)[0] != name]
    if len(kept) != len(lines):
        known_hosts.write_text("".join(kept))


def pin(known_hosts: Path, host: str, port: int, host_key: str) -> None:
    """Pin `host_key` (learnt out of band from the provider) for host:port, replacing old pins."""
    forget_host(known_hosts, host, port)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with open(known_hosts, "a") as f:
        f.write(f"{known_host_name(host, port)} {host_key.strip()}\n")


async def pin_first_contact(known_hosts: Path, host: str, port: int) -> str:
    """Accept-new for a host we just launched: fetch its key over SSH and pin it."""
    from hybridctl.ssh.link import pin_host_key

    forget_host(known_hosts, host, port)
    return await pin_host_key(host, port, known_hosts)


def agent_package() -> Path:
    """The `hybridctl_agent` package directory on the controller (what gets copied)."""
    import hybridctl_agent

    return Path(hybridctl_agent.__file__).resolve().parent


@dataclass(frozen=True)
class AgentInstall:
    """What to install on one node, and how to run it."""

    name: str
    """The agent's node name (`--name`)."""
    python: str = "python3"
    """The node's Python 3.9+ (a name on its PATH or a path)."""
    remote_dir: str = ""
    """'' = /opt/hybridctl-agent as root, else ~/.hybridctl."""
    systemd: bool = False
    """Install and (re)start a systemd unit (system unit as root, `systemctl --user` otherwise);
    False: start the agent detached (setsid nohup)."""
    wheels: Path | None = None
    """A local directory of .whl files: psutil and nvidia-ml-py are installed from it, offline."""
    orphan_timeout: float = 0.0
    """> 0: the agent powers the machine off after this long without the controller (cloud)."""
    cancel_deadline: bool = False
    """Cancel the power-off deadline a cloud provider's user data scheduled."""
    wait: float = 30.0
    """Seconds to wait for the agent's socket."""


@dataclass
class Installed:
    socket: str
    remote_dir: str
    service: str
    """How it runs: 'systemd', 'systemd --user' or 'nohup'."""
    steps: list[str] = field(default_factory=list)
    """One line per step done, for the admin."""


def agent_unit(python: str, remote_dir: str, name: str, system: bool) -> str:
    """The systemd unit `install_over_ssh` writes (system unit, or a `systemctl --user` one).

    Follows agents/systemd/*.service: KillMode=process, so restarting the agent (an upgrade)
    never kills running jobs."""
    for what, value in (("--python", python), ("--install-dir", remote_dir), ("NAME", name)):
        if not UNIT_WORD.fullmatch(value):
            raise SpecError(what, value, "it goes into a systemd unit: use a path without spaces, quotes, "
                            "'%', '$' or '\\' (or --no-systemd)")
    limits = ["LimitNOFILE=1048576", "LimitMEMLOCK=infinity", "RestrictRealtime=yes"] if system else []
    return "\n".join([
        "# Written by `hybridctl node add --install`; running it again rewrites this file.",
        "[Unit]",
        "Description=hybridctl node agent" + ("" if system else " (rootless: jobs run as this user)"),
        *(["After=network-online.target nvidia-persistenced.service", "Wants=network-online.target"] if system else []),
        "",
        "[Service]",
        "Type=simple",
        f"Environment=PYTHONPATH={remote_dir}/pkg:{remote_dir}/deps",
        f"ExecStart={python} -m hybridctl_agent.cli serve --socket {remote_dir}/agent.sock "
        f"--state-dir {remote_dir}/state --name {name}",
        "Restart=on-failure",
        "RestartSec=2s",
        "# Stopping or restarting the agent must not kill running jobs (they live under their own",
        "# supervisors in this unit's cgroup; the restarted agent adopts them).",
        "KillMode=process",
        "TimeoutStopSec=30s",
        "TasksMax=infinity",
        *limits,
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if system else 'default.target'}",
        "",
    ])


class _Node:
    """One SSH connection; every remote command runs as one step whose failure names it."""

    def __init__(self, conn: Shell, label: str, timeout: float) -> None:
        self.conn = conn
        self.label = label
        self.timeout = timeout

    def failed(self, step: str, detail: str, hint: str) -> BootstrapFailed:
        return BootstrapFailed(f"{self.label}: {step} failed: {detail.strip()[-800:]}" + (f"; {hint}" if hint else ""))

    async def run(self, step: str, script: str, hint: str) -> str:
        try:
            res = await self.conn.run(script, timeout=self.timeout)
        except (OSError, RemoteError, asyncio.TimeoutError) as exc:
            raise self.failed(step, str(exc) or type(exc).__name__, hint) from exc
        if res.exit_status != 0:
            raise self.failed(step, str(res.stderr or res.stdout) or f"exit status {res.exit_status}", hint)
        return str(res.stdout)


async def install_over_ssh(host: str, port: int, user: str | None, known_hosts: Path, identity: Path | None,
                           spec: AgentInstall, label: str = "", timeout: float = 300.0) -> Installed:
    """Copy the agent (and spec.wheels) to the node, install its dependencies, (re)start it and
    wait until its socket exists. Host keys are checked against `known_hosts` (pin them first)."""
    label = label or spec.name
    try:
        conn = await open_shell(host, port, user, known_hosts, identity)
    except (OSError, RemoteError, asyncio.TimeoutError) as exc:
        raise BootstrapFailed(f"{label}: connect failed: cannot reach {host}:{port} over SSH ({exc}); "
                              "check --host, --port, --user, --identity and the pinned host key") from exc
    async with conn:
        return await _install(_Node(conn, label, timeout), spec)


async def _install(node: _Node, spec: AgentInstall) -> Installed:
    q = shlex.quote
    uid, home, python = (await node.run(
        "python",
        f"py=$(command -v {q(spec.python)}) || {{ echo {q(spec.python + ' not found on the PATH')} >&2; exit 1; }}\n"
        '"$py" -c "import sys; sys.exit(sys.version_info < (3, 9))" || { echo "$py is older than 3.9" >&2; exit 1; }\n'
        'printf "%s\\n%s\\n%s" "$(id -u)" "$HOME" "$py"',
        "install Python 3.9+ there, or name it with --python PATH")).split("\n", 2)
    root = uid == "0"
    base = spec.remote_dir or ("/opt/hybridctl-agent" if root else posixpath.join(home, ".hybridctl"))
    pkg, deps, wheels = (posixpath.join(base, d) for d in ("pkg", "deps", "wheels"))
    sock = posixpath.join(base, "agent.sock")
    done = Installed(sock, base, ("systemd" if root else "systemd --user") if spec.systemd else "nohup")

    def step(text: str) -> None:
        log.info("%s: %s", node.label, text)
        done.steps.append(text)

    step(f"python: {python}")
    unit = agent_unit(python, base, spec.name, root) if spec.systemd else ""
    ctl = "systemctl" if root else "systemctl --user"
    # systemctl --user needs the user's manager; over SSH, XDG_RUNTIME_DIR may be unset.
    user_env = [] if root else ['export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}"']
    if spec.systemd:  # checked before anything is written there
        check = ['[ -d /run/systemd/system ] || { echo "systemd is not running on this node" >&2; exit 1; }']
        hint = "add --no-systemd to start the agent without systemd (containers)"
        if not root:
            check += [
                *user_env,
                # Without lingering, the user's systemd (and the agent) stop at their last logout.
                "loginctl enable-linger 2>/dev/null || echo 'could not enable lingering: run `sudo loginctl "
                "enable-linger '\"$(id -un)\"'` there, or the agent stops when that user logs out'",
                "systemctl --user show-environment > /dev/null",
            ]
            hint = "the user's systemd must be reachable (`sudo loginctl enable-linger USER` there), or " + hint
        warning = (await node.run("systemd", "\n".join(check), hint)).strip()
        step(f"systemd: {ctl}" + (f" (warning: {warning})" if warning else ""))
    local_wheels = sorted(spec.wheels.glob("*.whl")) if spec.wheels else []
    try:
        async with node.conn.sftp() as sftp:
            await sftp.makedirs(posixpath.join(pkg, "hybridctl_agent"))
            files = sorted(agent_package().glob("*.py"))
            for f in files:
                await sftp.put(str(f), posixpath.join(pkg, "hybridctl_agent", f.name))
            if local_wheels:
                await sftp.makedirs(wheels)
                for f in local_wheels:
                    await sftp.put(str(f), posixpath.join(wheels, f.name))
            if unit:
                unit_dir = "/etc/systemd/system" if root else posixpath.join(home, ".config/systemd/user")
                await sftp.makedirs(unit_dir)
                await sftp.write_text(posixpath.join(unit_dir, f"{SERVICE}.service"), unit)
    except (OSError, RemoteError) as exc:
        raise node.failed("copy", f"SFTP: {exc}", f"the SSH user must be able to write {base} (pick another "
                          "--install-dir) and sshd needs an sftp Subsystem") from exc
    step(f"copy: the agent ({len(files)} files) to {pkg}" + (f", {len(local_wheels)} wheels to {wheels}"
                                                                if local_wheels else ""))

    pip = (f"{q(python)} -m pip install -q --disable-pip-version-check --target {q(deps)} --upgrade "
           + " ".join(DEPENDENCIES))
    if local_wheels:
        script = f"{pip} --no-index --find-links {q(wheels)}"
    else:  # the node's own Python may have them; else pip fetches them from its index
        script = f"PYTHONPATH={q(deps)} {q(python)} -c 'import psutil, pynvml' 2>/dev/null && echo present && exit 0\n"
        script += pip
    present = (await node.run("dependencies", script, f"{python} needs {' and '.join(DEPENDENCIES)}: give an "
                              "offline bundle with --wheels DIR (`pip download -d DIR psutil nvidia-ml-py` on a "
                              "machine with the node's OS and Python), or install them there")).strip() == "present"
    step(f"dependencies: {'already importable' if present else 'installed into ' + deps}")

    serve = [python, "-m", "hybridctl_agent.cli", "serve", "--socket", sock, "--state-dir",
             posixpath.join(base, "state"), "--name", spec.name]
    if spec.orphan_timeout > 0:
        serve += ["--orphan-timeout", str(spec.orphan_timeout), "--orphan-command", "sudo -n shutdown -h now"]
    # The provider's power-off deadline (user data): the node made it in time.
    lines = ["set -e", "sudo -n shutdown -c 2>/dev/null || true"] if spec.cancel_deadline else ["set -e"]
    if spec.systemd:
        lines += [
            *user_env,
            f"rm -f {q(sock)}",
            f"{ctl} daemon-reload",
            f"{ctl} enable -q {SERVICE}",
            f"{ctl} restart {SERVICE}",  # starts it, or restarts an older one (its jobs keep running)
        ]
        alive, diagnose = f"! {ctl} is-failed --quiet {SERVICE}", f"{ctl} status --no-pager -n 20 {SERVICE}"
        hint = f"see `journalctl{'' if root else ' --user'} -u {SERVICE}` on the node"
    else:
        lines += [
            f"mkdir -p {q(posixpath.join(base, 'state'))}",
            f"cd {q(base)}",
            # An agent started here before (a re-run upgrades): stop it; its jobs keep running.
            'pid=$(cat agent.pid 2>/dev/null || true)',
            'if [ -n "$pid" ] && grep -q hybridctl_agent "/proc/$pid/cmdline" 2>/dev/null; then',
            '  kill -TERM "$pid"',
            '  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done',
            "fi",
            f"rm -f {q(sock)}",
            # Its own session, and no fd of this channel: the exec must end while the agent runs.
            f"PYTHONPATH={q(pkg + ':' + deps)} setsid nohup {shlex.join(serve)} > agent.log 2>&1 < /dev/null &",
            "echo $! > agent.pid",
        ]
        alive = f'kill -0 "$(cat {q(posixpath.join(base, "agent.pid"))})" 2>/dev/null'
        diagnose = f"tail -n 20 {q(posixpath.join(base, 'agent.log'))}"
        hint = f"see {posixpath.join(base, 'agent.log')} on the node"
    await node.run("start", "\n".join(lines), hint)
    step(f"start: {done.service}" + (f" ({SERVICE}.service)" if spec.systemd else f" (pid file {base}/agent.pid)"))
    await node.run("wait", "\n".join([
        *(user_env if spec.systemd else []),
        f"for i in $(seq 1 {max(1, int(spec.wait * 10))}); do",
        f"  [ -S {q(sock)} ] && exit 0",
        f"  {alive} || break",
        "  sleep 0.1",
        "done",
        f"echo 'the agent did not open {sock} within {spec.wait:g}s:' >&2",
        f"{diagnose} >&2",
        "exit 1",
    ]), hint)
    step(f"wait: the agent listens on {sock}")
    return done


async def install_agent(inst: Instance, known_hosts: Path, identity: Path, orphan_timeout: float,
                        python: str = "python3", timeout: float = 300.0, remote_dir: str = "",
                        cancel_deadline: bool = True) -> str:
    """Copy the agent to `~/.hybridctl/pkg` (or `remote_dir`/pkg) on a cloud instance and start it
    detached; return its socket path. `cancel_deadline` cancels the power-off the provider's user
    data scheduled.

    The agent runs rootless (jobs run as the SSH user), needs only psutil and nvidia-ml-py
    (installed with pip into ~/.hybridctl/deps if missing). With `orphan_timeout` it powers the
    instance off by itself (`sudo shutdown -h now`) after that long without the controller."""
    spec = AgentInstall(name=inst.name or inst.id, python=python, remote_dir=remote_dir,
                        orphan_timeout=orphan_timeout, cancel_deadline=cancel_deadline)
    done = await install_over_ssh(inst.host, inst.port, inst.ssh_user or None, known_hosts, identity, spec,
                                  label=inst.id, timeout=timeout)
    return done.socket
