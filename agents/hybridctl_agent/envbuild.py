"""The environment build process: `python -S -m hybridctl_agent.envbuild`, one per launch that
names an environment (envs.py decides which env and where). It takes the env's lock, and unless
the env is marked ready runs each uv step as the job's user, then marks it ready (agent-owned
marker). Reads one request (JSON) on stdin, writes one answer on stdout."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping

def _steps(req: Mapping[str, Any]) -> List[tuple]:
    """(name, argv, capture) of each uv step. `capture`: stdout becomes the requirements file."""
    uv, env_dir, bdir = req["uv"], req["env_dir"], req["build_dir"]
    index: List[str] = []
    if req.get("wheelhouse"):
        index = ["--offline", "--no-index", "--find-links", req["wheelhouse"]]
    venv = [uv, "venv", "--clear", "--no-config", "--quiet"]
    if req.get("python"):
        venv += ["--python", req["python"]]
    steps: List[tuple] = [("uv venv", venv + [env_dir], False)]
    reqs = os.path.join(bdir, "requirements.txt")
    if req["kind"] == "pyproject":
        reqs = os.path.join(bdir, "pyproject.toml")
    if req["kind"] == "uv_lock":
        steps.append(("uv export", [uv, "export", "--frozen", "--no-hashes", "--no-config",
                                    "--format", "requirements-txt", "--no-emit-project",
                                    "--project", bdir] + (["--offline"] if index else []), True))
        reqs = os.path.join(bdir, "locked-requirements.txt")
    steps.append(("uv pip install", [uv, "pip", "install", "--no-config",
                                     "--python", os.path.join(env_dir, "bin", "python"),
                                     "-r", reqs] + index, False))
    return steps


def _user_env(req: Mapping[str, Any]) -> Dict[str, str]:
    env = {"PATH": req["job_path"], "HOME": req["home"], "LANG": "C.UTF-8",
           "UV_CACHE_DIR": os.path.join(req["user_dir"], ".uv-cache"), "UV_NO_PROGRESS": "1"}
    if req.get("wheelhouse"):
        env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def build(req: Mapping[str, Any]) -> Dict[str, Any]:
    """Build (or find ready) one env under its lock; every uv step runs as the job's user."""
    from hybridctl_agent.fdio import ensure_target

    uid, gid = int(req["uid"]), int(req["gid"])
    root = Path(req["root"])
    lock_path = root / "locks" / f"u{uid}-{req['digest']}.lock"
    marker = root / "ready" / f"u{uid}-{req['digest']}.json"
    log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600)
    if req["as_root"]:
        os.fchown(log, uid, gid)

    def note(text: str) -> None:
        os.write(log, f"hybridctl: {text}\n".encode())

    lock = os.open(str(lock_path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        waited = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of this env: wait for it
        waited = time.monotonic() - waited
        if marker.exists() and os.path.isfile(os.path.join(req["env_dir"], "bin", "python")):
            os.utime(marker)  # last use, for eviction
            note(f"environment {req['digest'][:12]} is ready on this node: reused"
                 + (f" (waited {waited:.1f} s for its build)" if waited > 0.5 else ""))
            return {"ok": True, "built": False}
        os.close(ensure_target(str(root), f"u{uid}", uid, gid))  # theirs, 0700, never a link
        note(f"building environment {req['digest'][:12]} with uv")
        started = time.monotonic()
        for name, argv, capture in _steps(req):
            note(f"step {name}: {' '.join(argv)}")
            extra: Dict[str, Any] = {}
            if req["as_root"]:
                extra = {"user": uid, "group": gid, "extra_groups": list(req["groups"])}
            out = subprocess.PIPE if capture else log
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                                  env=_user_env(req), cwd=req["build_dir"], **extra)
            if proc.returncode != 0:
                note(f"step {name} failed with exit code {proc.returncode}")
                return {"ok": False, "step": name, "exit_code": proc.returncode}
            if capture:  # written by us into the agent-owned build directory
                with open(os.path.join(req["build_dir"], "locked-requirements.txt"), "wb") as fh:
                    fh.write(proc.stdout)
        seconds = round(time.monotonic() - started, 2)
        size = _du(req["env_dir"])
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"uid": uid, "hash": req["digest"], "kind": req["kind"],
                                   "python": req["python"], "bytes": size,
                                   "build_s": seconds, "built_at": time.time()}))
        os.rename(tmp, marker)
        note(f"environment {req['digest'][:12]} built in {seconds:.1f} s ({size >> 20} MiB)")
        return {"ok": True, "built": True, "build_s": seconds}
    finally:
        os.close(lock)  # releases the flock
        os.close(log)


def _du(path: str) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                continue
    return total


def main() -> int:
    """`python -S -m hybridctl_agent.envs`: one build request (JSON) on stdin, the answer on stdout."""
    req = json.loads(sys.stdin.read())
    try:
        answer = build(req)
    except OSError as exc:
        answer = {"ok": False, "step": "prepare the environment's directories",
                  "error": f"{exc.strerror or exc}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
