"""`hybridctl-agent` command line: `serve` (the daemon), `bridge` (stdin/stdout <-> the socket, for
SSH exec channels) and `status` (a quick look at a running agent). Errors become one line on
stderr and a non-zero exit; stdout carries only data."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import threading
from typing import Any, Dict, List, Optional

from hybridctl_agent import __version__, config
from hybridctl_agent.client import AgentCallError, AgentClient


def _socket_default(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    cfg_path = getattr(args, "config", None)
    try:
        return config.load(cfg_path).socket
    except config.ConfigError:
        return config.default_paths(os.geteuid() == 0)["socket"]


def serve(args: argparse.Namespace) -> int:
    from hybridctl_agent.daemon import Agent
    from hybridctl_agent.server import ServerError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    # The agent sets the mode of everything private it creates (spec.json 0600, staging 0700, its
    # socket); the directories a job's user must traverse (the state dir, jobs/, checkpoints/) need
    # o+x whatever umask started us (a controller's 077 is inherited by simulated machines).
    os.umask(0o022)
    try:
        cfg = config.load(args.config, {
            "socket": args.socket, "state_dir": args.state_dir, "name": args.name,
            "interval": args.interval, "history": args.history, "gpu_source": args.gpu_source,
            "orphan_timeout": args.orphan_timeout, "orphan_command": args.orphan_command,
            "simulate": config.parse_simulate(args.simulate_gpus) if args.simulate_gpus else None,
        })
        return asyncio.run(Agent(cfg).run())
    except (config.ConfigError, ServerError) as exc:
        print(f"hybridctl-agent: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"hybridctl-agent: {exc}; run as root or choose paths you own "
              "(--socket, --state-dir)", file=sys.stderr)
        return 2


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def bridge(args: argparse.Namespace) -> int:
    """Copy stdin to the agent socket and the socket to stdout until the agent hangs up."""
    path = _socket_default(args)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        print(f"hybridctl-agent bridge: cannot connect to {path}: {exc.strerror or exc}; "
              "is the agent running?", file=sys.stderr)
        return 1

    def upstream() -> None:
        try:
            while True:
                data = os.read(0, 65536)
                if not data:
                    break
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the agent side closed; the main loop sees it too

    threading.Thread(target=upstream, name="stdin", daemon=True).start()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return 0
            _write_all(1, data)
    except OSError as exc:  # stdout closed (SSH channel gone) or the socket broke
        print(f"hybridctl-agent bridge: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()


def _print_status(info: Dict[str, Any]) -> None:
    h = info["hello"]
    print(f"node {h['node']}  agent {h['agent_version']}  uid {h['uid']}"
          f"{' (rootless)' if h['rootless'] else ''}  gpus: {h['gpu_source']}"
          f"{' (' + h['gpu_error'] + ')' if h['gpu_error'] else ''}")
    samples = info["sample"]["samples"]
    if samples:
        host = samples[-1]["host"]
        print(f"cpu {host['cpu_percent']}%  load {host['load1']}  "
              f"mem {host['memory_used_mb']}/{host['memory_total_mb']} MiB")
        for g in samples[-1]["gpus"]:
            health = "ok" if g["healthy"] else f"UNHEALTHY: {g['health_reason']}"
            print(f"  gpu {g['index']} {g['name']}: util {g['util_gpu']}%  "
                  f"mem {g['mem_used_mb']}/{g['mem_total_mb']} MiB  {g['temp_c']}C  {health}")
    for j in info["jobs"]["jobs"]:
        print(f"  job {j['key']}: {j['state']} pid {j['pid']} gpus {j['gpus']} "
              f"exit {j['exit_code']} {j['reason'] or ''}".rstrip())


def status(args: argparse.Namespace) -> int:
    path = _socket_default(args)
    try:
        with AgentClient(path, timeout=10) as client:
            info = {"hello": client.call("hello"), "sample": client.call("sample"),
                    "jobs": client.call("jobs")}
    except (OSError, AgentCallError) as exc:
        print(f"hybridctl-agent status: cannot query the agent at {path}: {exc}",
              file=sys.stderr)
        return 1
    if args.json:
        for part in info.values():
            part.pop("id", None)
            part.pop("ok", None)
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_status(info)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridctl-agent", description="hybridctl node agent: GPU "
                                "telemetry and job execution over a local Unix socket.")
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the agent in the foreground")
    s.add_argument("--config", help="YAML or JSON config file")
    s.add_argument("--socket", help="Unix socket to listen on")
    s.add_argument("--state-dir", help="where job directories live")
    s.add_argument("--name", help="node name (default: hostname)")
    s.add_argument("--simulate-gpus", metavar="N[:MODEL[:MEM_GB]]",
                   help="simulate N GPUs instead of NVML, e.g. 4:A100")
    s.add_argument("--gpu-source", choices=config.GPU_SOURCES, help="where GPUs come from")
    s.add_argument("--interval", type=float, help="seconds between samples (default 1)")
    s.add_argument("--history", type=float, help="seconds of samples kept (default 600)")
    s.add_argument("--orphan-timeout", type=float, metavar="S",
                   help="cloud nodes: exit (after --orphan-command) when no request came for S seconds")
    s.add_argument("--orphan-command", metavar="CMD", help="shell command run on orphan timeout")
    s.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    s.set_defaults(func=serve)
    b = sub.add_parser("bridge", help="connect stdin/stdout to the agent socket (SSH exec)")
    b.add_argument("--socket", help="the agent's socket")
    b.add_argument("--config", help=argparse.SUPPRESS)
    b.set_defaults(func=bridge)
    st = sub.add_parser("status", help="show a running agent's GPUs and jobs")
    st.add_argument("--socket", help="the agent's socket")
    st.add_argument("--config", help=argparse.SUPPRESS)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=status)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
