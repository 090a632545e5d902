"""Image references and pulls for image jobs (container.py): the Docker reference grammar, the
admin's podman settings, and one pull per image per node. Stdlib only: the supervisor (`python
-S`) imports this module."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import time
from typing import Any, Dict

# The Docker reference grammar (distribution/reference), the same as hybridctl/core/spec.py's:
# [domain[:port]/]path-component(/path-component)*[:tag][@algo:hex]. No component starts with
# '-', so nothing here can be read by podman as an option.
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?/)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
REF_RE = re.compile(_DOMAIN + _PATH + r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?\Z")


class ContainerError(Exception):
    """The image job cannot start; the message says why (the job's launch_failed reason)."""


def valid_ref(ref: str) -> bool:
    return isinstance(ref, str) and 0 < len(ref) <= 512 and bool(REF_RE.match(ref))


def image_ref(value: str) -> str:
    """`docker:IMAGE` (or IMAGE) -> IMAGE, checked; ContainerError if it is no image reference."""
    ref = value[len("docker:"):] if value.startswith("docker:") else value
    if not valid_ref(ref):
        raise ContainerError(f"image_id {value!r} is not an image reference "
                             "(docker:[registry[:port]/]name[:tag][@sha256:...])")
    return ref


def admin_env(environ: Any) -> Dict[str, str]:
    """The admin's podman settings in `environ`: CONTAINERS_* (registries, storage) and
    REGISTRY_AUTH_FILE (a private registry's credentials)."""
    return {k: v for k, v in environ.items() if k.startswith("CONTAINERS_") or k == "REGISTRY_AUTH_FILE"}


def podman_env() -> Dict[str, str]:
    """podman's own environment: a plain PATH plus the admin's settings (`admin_env`)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    env.update(admin_env(os.environ))
    return env


def pull(podman: str, ref: str, state_dir: str, log_fd: int) -> None:
    """The image on this node, pulled once: under `<state_dir>/images/<hash>.lock`, a second job
    naming it waits for the first pull and then finds it; `<hash>.pulled` then skips even the
    lock (an image removed since is pulled again by `podman run --pull missing`). A failed pull
    names the image; podman's words go to the job's stderr log."""
    locks = os.path.join(state_dir, "images")
    base = os.path.join(locks, hashlib.sha256(ref.encode()).hexdigest()[:32])
    if os.path.exists(base + ".pulled"):
        return
    os.makedirs(locks, mode=0o700, exist_ok=True)
    lock = os.open(base + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = podman_env()
        if subprocess.run([podman, "image", "exists", "--", ref], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            os.close(os.open(base + ".pulled", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            return
        started = time.monotonic()
        done = subprocess.run([podman, "pull", "--quiet", "--", ref], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=3600)
        if done.returncode != 0:
            text = done.stderr.decode(errors="replace").strip()
            os.write(log_fd, f"hybridctl: podman pull {ref} failed:\n{text}\n".encode())
            last = text.splitlines()[-1] if text else f"exit status {done.returncode}"
            raise ContainerError(f"image_pull_failed: cannot pull image {ref}: {last[-500:]}")
        os.close(os.open(base + ".pulled", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        os.write(log_fd, f"hybridctl: pulled image {ref} onto this node in {time.monotonic() - started:.1f} s\n".encode())
    except subprocess.TimeoutExpired:
        raise ContainerError(f"image_pull_failed: pulling image {ref} took over an hour") from None
    finally:
        os.close(lock)
