"""Image jobs (`image_id: docker:IMAGE`) under rootful podman, driven by the job's supervisor.

The supervisor stays root and execs `podman run` in the job's cgroup instead of switching
to the job's user and exec'ing bash; the container then runs the same job.sh as that user:

- `--user uid:gid` plus `--group-add` for each supplementary group, `--security-opt
  no-new-privileges`, `--cap-drop all`: an image whose /etc/passwd says uid N is root, or a
  setuid-root binary in the image, gives the job no power it lacks on the host.
- `--network host`; only the job's GPUs (CDI names `nvidia.com/gpu=N` where NVIDIA's CDI spec
  exists, else the `/dev/nvidiaN` nodes plus nvidiactl and uvm).
- The job's variables go through a memfd `--env-file`, never argv (`ps` shows argv to everyone).
- `--cgroup-parent` is the job's cgroup, so its limits hold for the container and the
  supervisor's kill-all (which walks child cgroups) reaches every process.
- Host paths reach the container only through binds.bind_root (the job's user can reach them, no
  link on the way, no home); just before exec each still names the directory checked. Left: a
  swap in the ~0.1 s before runc's mount (runc cannot bind a `/proc/<pid>/fd/N` source). The
  agent makes no host mounts: podman's binds exist only in the container's mount namespace.
- Images are pulled once per node, under a per-image flock in `<state_dir>/images/` (images.py).
- Out of memory: on a cgroup v1 node the kernel counts an OOM kill in podman's libpod-<id>
  cgroup, not the job's, and runc removes that cgroup when the container ends. conmon, which
  watches it, marks the kill with an `oom` file in its working directory (podman's), so podman
  runs in `<jobdir>/conmon/` (root's, 0700: conmon follows a link there); podman 4.3 looks for
  the mark elsewhere and its OOMKilled stays false, so `Launch.oom_killed` reads the mark first
  (believed only for a job that died by SIGKILL), then `podman inspect` (10 s at most). No `--rm`: the container stays until `Launch.cleanup` removes it.

Stdlib only: the supervisor (`python -S`) imports this module.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import stat
import subprocess
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from hybridctl_agent import jobfiles as jf
from hybridctl_agent.binds import BindRefused, bind_root, cache_links, cgroup_parent, remove_leftovers
from hybridctl_agent.images import ContainerError, image_ref, podman_env, pull

IN_SCRIPT = "/hybridctl/job.sh"
"""Where the job script is bound in the container (read-only)."""
_ENTRY = 'if command -v bash >/dev/null 2>&1; then exec bash "$0"; else exec sh "$0"; fi'
"""The container's command (fixed text, never the user's): bash where the image has it, else sh."""
NVIDIA_EXTRA = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
_NPROC_CAP = 32768
"""podman lowers its own (conmon's) RLIMIT_NPROC to this; runc cannot raise the container's above."""
CONMON_DIR = "conmon"
"""`<jobdir>/conmon/`: podman's (so conmon's) working directory, root's and 0700."""
OOM_MARK = "oom"
"""What conmon creates in its working directory when the kernel OOM-kills in the container."""


def container_name(state_dir: str, key: str) -> str:
    """`hybridctl-<agent id>-<key>`: unique per agent (as its cgroups are) and per job."""
    digest = hashlib.sha1(os.path.abspath(state_dir).encode()).hexdigest()[:10]
    return f"hybridctl-{digest}-{key}"


# ---- the run ------------------------------------------------------------------------------------


def env_file(env: Mapping[str, str]) -> int:
    """A memfd holding `NAME=value` lines (podman's --env-file); the caller makes it inheritable.
    PATH is left to the image. A value with a newline cannot be carried: refused, by name."""
    lines = []
    for name, value in env.items():
        if name == "PATH":
            continue
        if "\n" in value or "\r" in value:
            raise ContainerError(f"envs.{name} holds a line break, which podman's env-file cannot carry")
        lines.append(f"{name}={value}\n")
    fd = os.memfd_create("hybridctl-env")
    os.write(fd, "".join(lines).encode())
    return fd


def _cdi() -> bool:
    for d in CDI_DIRS:
        try:
            for name in os.listdir(d):
                with open(os.path.join(d, name), "rb") as fh:
                    if b"nvidia.com" in fh.read(1 << 20):
                        return True
        except OSError:
            continue
    return False


def gpu_args(gpus: Sequence[int], cdi: Optional[bool] = None) -> List[str]:
    """Only the job's GPUs: CDI names where NVIDIA's spec is installed, else the device nodes
    that exist (a simulated GPU has none)."""
    if not gpus:
        return []
    if _cdi() if cdi is None else cdi:
        return [a for g in gpus for a in ("--device", f"nvidia.com/gpu={g}")]
    nodes = [f"/dev/nvidia{g}" for g in gpus] + list(NVIDIA_EXTRA)
    return [a for n in nodes if os.path.exists(n) for a in ("--device", n)]


def _ulimits() -> List[str]:
    """The job's rlimits as on the host (podman's defaults are higher than runc may set here)."""
    out = []
    for name, which, cap in (("nofile", resource.RLIMIT_NOFILE, None),
                             ("nproc", resource.RLIMIT_NPROC, _NPROC_CAP)):
        soft, hard = resource.getrlimit(which)
        vals = [-1 if v == resource.RLIM_INFINITY else v for v in (soft, hard)]
        if cap is not None:
            vals = [cap if v < 0 or v > cap else v for v in vals]
        out += ["--ulimit", f"{name}={vals[0]}:{vals[1]}"]
    return out


def groups_of(user: str, gid: int) -> List[int]:
    try:
        return sorted(set(os.getgrouplist(user, gid)))
    except (OSError, KeyError):
        return [gid]


def build_argv(*, podman: str, ref: str, name: str, uid: int, gid: int, groups: Sequence[int],
               gpus: Sequence[int], env_path: str, parent: Optional[str], script: str,
               binds: Sequence[Tuple[str, str, bool]], workdir: str, runtime: Optional[str],
               cdi: Optional[bool] = None) -> List[str]:
    """The `podman run` argv, one list item per argument (never a shell string). `binds`:
    (source, target, read-only) with sources already checked by `bind_root`."""
    # cgroupfs: --cgroup-parent names a cgroup path (the job's), not a systemd slice
    # no --rm: the supervisor reads the container's OOM state before it removes it (Launch)
    argv = [podman, *(["--cgroup-manager", "cgroupfs"] if parent else []), "run", "--name", name,
            "--label", "hybridctl.job=1",
            "--user", f"{uid}:{gid}"]
    for g in groups:
        if g != gid:
            argv += ["--group-add", str(g)]
    argv += ["--security-opt", "no-new-privileges", "--cap-drop", "all", "--network", "host",
             "--env-file", env_path, "--pull", "missing", "--workdir", workdir, *_ulimits()]
    if runtime:
        argv += ["--runtime", runtime]
    if parent:
        argv += ["--cgroup-parent", parent]
    argv += gpu_args(gpus, cdi)
    argv += ["-v", f"{script}:{IN_SCRIPT}:ro"]
    for src, dst, ro in binds:
        argv += ["-v", f"{src}:{dst}:{'ro' if ro else 'rw'}"]
    argv += ["--", ref, "/bin/sh", "-c", _ENTRY, IN_SCRIPT]
    return argv


class Launch:
    """What the supervisor's child execs: argv, environment, and the fds it must keep open."""

    def __init__(self, argv: List[str], env: Dict[str, str], env_fd: int, keep: List[int],
                 name: str, parent: Optional[str], podman: str, run_dir: Optional[str] = None) -> None:
        self.argv, self.env, self.env_fd, self.keep = argv, env, env_fd, keep
        self.name, self.parent, self.podman = name, parent, podman
        self.run_dir = run_dir
        """podman's working directory (`CONMON_DIR`), where conmon marks an OOM kill."""
        self.paths: List[str] = []
        """The bound host paths, in the order of `keep`."""

    def exec(self) -> None:
        """In the supervisor's child, as root: check the bound paths, enter `run_dir`, exec podman."""
        why = self.same_dirs()
        if why:
            raise ContainerError(why)
        if self.run_dir:
            os.fchdir(os.open(self.run_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
        os.set_inheritable(self.env_fd, True)
        os.execve(self.argv[0], self.argv, self.env)

    def oom_killed(self, code: Optional[int], sig: Optional[int]) -> bool:
        """Whether the kernel's OOM killer struck in the container, given how podman run ended
        (`code` or `sig`): conmon's mark in `run_dir`, trusted only when the job died by SIGKILL
        (exit 137 or signal 9: a job that ends otherwise was not the OOM killer's, whatever a
        killed helper left), else podman's own `State.OOMKilled` (podman versions that read the
        mark where conmon puts it). Once the job has ended and before `cleanup`, which removes
        both."""
        killed = code == 128 + signal.SIGKILL or sig == signal.SIGKILL
        if killed and self.run_dir and os.path.lexists(os.path.join(self.run_dir, OOM_MARK)):
            return True
        try:
            done = subprocess.run([self.podman, "container", "inspect", "--format", "{{.State.OOMKilled}}",
                                   "--", self.name], env=podman_env(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0 and done.stdout.strip() == b"true"

    def same_dirs(self) -> Optional[str]:
        """None if every bound path still names the directory that was checked, else which not."""
        for fd, path in zip(self.keep, self.paths):
            try:
                a, b = os.fstat(fd), os.stat(path)
            except OSError as exc:
                return f"{path}: {exc.strerror}"
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                return f"{path} was replaced after it was checked"
        return None

    def close(self) -> None:
        """Close our fds (once: a number closed twice may be another file's by then)."""
        fds, self.keep, self.env_fd = [self.env_fd, *self.keep], [], -1
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def cleanup(self) -> None:
        """After the job (and `oom_killed`), on every path: remove its container, the cgroups
        podman left under the job's, and `run_dir`."""
        remove_container(self.podman, self.name)
        if self.parent:
            remove_leftovers(self.parent)
        if self.run_dir:
            remove_run_dir(self.run_dir)
        self.close()


def make_run_dir(jobdir: str) -> str:
    """`<jobdir>/conmon/`, empty, a directory of ours with mode 0700 (the job's user cannot put a
    link where conmon, as root, creates its mark). ContainerError if it cannot be made so."""
    path = os.path.join(jobdir, CONMON_DIR)
    try:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            remove_run_dir(path)  # left by an earlier try of this job
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise OSError(0, "not a private directory of the agent's")
    except OSError as exc:
        raise ContainerError(f"cannot make podman's working directory {path}: {exc.strerror or exc}") from None
    return path


def remove_run_dir(path: str) -> None:
    """Remove `make_run_dir`'s directory and conmon's mark in it; a missing one is fine, a link
    in its place is not followed (and stays)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.unlink(OOM_MARK, dir_fd=fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        pass


def prepare(spec: Mapping[str, Any], jobdir: Any, cg: Any, open_log: Callable[[str], int]) -> Launch:
    """Everything the supervisor needs to exec podman for this job (see the module docstring):
    pull the image (its words to the job's stderr log, opened with `open_log`), check the binds,
    write the env memfd; `cg` (the job's cgroup, or None) then also counts its child cgroups.
    Raises ContainerError."""
    log_fd = open_log(jf.STDERR)
    try:
        launch = _prepare(spec, str(jobdir), cg.paths if cg is not None else None, log_fd)
    except BindRefused as exc:
        raise ContainerError(str(exc)) from None
    finally:
        os.close(log_fd)
    if cg is not None:
        cg.nested = True
        if cg.mode == "cgroup-v2":  # untested here (hybrid v1 host): the job's processes in a leaf
            os.makedirs(os.path.join(cg.path, "client"), mode=0o755, exist_ok=True)
    return launch


def _prepare(spec: Mapping[str, Any], jobdir: str, cg_paths: Optional[Mapping[str, str]], log_fd: int) -> Launch:
    env = {str(k): str(v) for k, v in spec["env"].items()}
    if spec.get("gpus"):  # the container sees only its GPUs, numbered from 0 (HYBRIDCTL_GPUS: the node's)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(spec["gpus"])))
    script = os.path.join(jobdir, jf.SCRIPT)
    image = spec["image"]
    podman, ref = image["podman"], image_ref(image["ref"])
    run_as = spec.get("run_as")
    if not run_as:
        raise ContainerError("image jobs need an agent running as root (rootful podman)")
    uid, gid, user = run_as["uid"], run_as["gid"], run_as["user"]
    groups = groups_of(user, gid)
    state_dir = os.path.dirname(os.path.dirname(jobdir))
    pull(podman, ref, state_dir, log_fd)
    parent = cgroup_parent(cg_paths) if cg_paths else None
    keep: List[int] = []
    binds: List[Tuple[str, str, bool]] = []
    env_fd = -1
    try:
        cwd = spec.get("cwd") or os.path.join(jobdir, "work")
        # (path, checked): the job's and checkpoint directories sit in the agent's own (no link
        # can stand in for them); a workdir or output dir named from outside must pass bind_root.
        wanted = [(jobdir, False)]  # job.sh, logs, work/, the metrics file
        ckpt = env.get("HYBRIDCTL_CHECKPOINT_DIR")
        if ckpt:
            wanted.append((ckpt, False))
        if spec.get("cwd"):
            wanted.append((cwd, True))
        out = env.get("HYBRIDCTL_OUTPUT_DIR")  # a cloud node's output dir (or a job's own variable)
        for path, checked in wanted + ([(out, True)] if out and out not in (jobdir, ckpt, cwd) else []):
            try:
                fd = bind_root(path, uid, groups) if checked else \
                    os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except BindRefused as exc:
                if path != out:
                    raise
                os.write(log_fd, f"hybridctl: HYBRIDCTL_OUTPUT_DIR is not bound into the container: {exc}\n".encode())
                continue
            keep.append(fd)
            binds.append((path, path, False))
        links = cache_links(state_dir, uid)  # its file_mounts' objects (cache.grant), never objects/
        if links is not None:
            keep.append(links[1])
            binds.append((links[0], links[0], True))
        env_fd = env_file(env)
        run_dir = make_run_dir(jobdir)
        argv = build_argv(podman=podman, ref=ref, name=container_name(state_dir, os.path.basename(jobdir)),
                          uid=uid, gid=gid, groups=groups, gpus=spec.get("gpus") or (),
                          env_path=f"/proc/self/fd/{env_fd}", parent=parent, script=script,
                          binds=binds, workdir=cwd, runtime=image.get("runtime"))
    except BaseException:
        for fd in keep + ([env_fd] if env_fd >= 0 else []):
            os.close(fd)
        raise
    launch = Launch(argv, podman_env(), env_fd, keep, container_name(state_dir, os.path.basename(jobdir)),
                    parent, podman, run_dir)
    launch.paths = [src for src, _, _ in binds]
    return launch


def plan_image(value: Any, *, rootless: bool, job_path: str, cgroup_v1: bool) -> Dict[str, Any]:
    """The launch request's `image` (SkyPilot's `docker:IMAGE`) checked on this node: the
    supervisor's `spec["image"]`, {"ref", "podman", "runtime"}. runc where the node uses cgroup
    v1 (crun refuses hybrid hosts). ContainerError(bad_request?, message)."""
    import shutil

    if not isinstance(value, str):
        raise ContainerError(f"job.image must be a string (docker:IMAGE), got {value!r}")
    ref = image_ref(value)
    if rootless:
        raise ContainerError(f"image {ref}: image jobs need the agent to run as root (rootful podman); "
                             "this agent is rootless")
    podman = shutil.which("podman", path=job_path)
    if not podman:
        raise ContainerError(f"image {ref}: podman is not installed on this node (searched {job_path})")
    runc = shutil.which("runc", path=job_path + ":/usr/sbin:/sbin") if cgroup_v1 else None
    return {"ref": ref, "podman": podman, "runtime": runc}


def remove_container(podman: str, name: str, tries: int = 5) -> Optional[str]:
    """`podman rm --force` until the container is gone (a podman process killed with the job may
    leave it 'Stopping' for a moment); None once gone (or never made), else podman's last words."""
    env, last = podman_env(), None
    for i in range(tries):
        done = subprocess.run([podman, "rm", "--force", "--ignore", "--time", "0", "--", name], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if subprocess.run([podman, "container", "exists", "--", name], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 1:
            return None
        last = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        time.sleep(0.2 * (i + 1))
    return last


def forget(spec: Mapping[str, Any], jobdir: str, paths: Optional[Mapping[str, str]]) -> None:
    """What a dead supervisor's image job left (called once its cgroup was killed): its
    container, the cgroups podman made under the job's, and podman's working directory."""
    image = spec.get("image") or {}
    podman = image.get("podman")
    if podman:
        remove_container(podman, container_name(os.path.dirname(os.path.dirname(jobdir)), os.path.basename(jobdir)))
        remove_run_dir(os.path.join(jobdir, CONMON_DIR))
    if paths:
        try:
            remove_leftovers(cgroup_parent(paths))
        except (BindRefused, OSError):
            pass
