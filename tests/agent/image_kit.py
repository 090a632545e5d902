"""The image for image-job tests (tests/agent/test_container.py, tests/integration/test_image_job.py):
a tar holding a static busybox, an /etc/passwd that calls the test uid `root`, and a tiny
setuid-root program that prints a file (its x86-64 machine code below), imported with `podman
import` and pushed to Debian's `docker-registry` on 127.0.0.1 (its own config and storage in a
temp dir). The image is removed by the names given here."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import pwd
import shutil
import socket
import struct
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Dict, Iterator, Tuple

from tests.conftest import free_port, require
from tests.waiting import wait_for

NOBODY = pwd.getpwnam("nobody")
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "id", "cat", "sleep", "env", "whoami", "touch", "echo", "ls", "pwd")

# A setuid attacker that keeps its privileges (busybox drops them): open(argv[1]), read 256 bytes,
# write them to stdout, exit 0; exit 3 when the open fails. x86-64 Linux syscalls, no libc.
READFILE_CODE = bytes.fromhex(
    "488b7c2410" "31f6" "b802000000" "0f05" "85c0" "782a"  # rdi=argv[1]; open(rdi, 0); js fail
    "89c7" "488db42400feffff" "ba00010000" "31c0" "0f05"  # read(fd, rsp-512, 256)
    "89c2" "bf01000000" "b801000000" "0f05"  # write(1, buf, n)
    "31ff" "b83c000000" "0f05"  # exit(0)
    "bf03000000" "b83c000000" "0f05")  # fail: exit(3)


def tiny_elf(code: bytes) -> bytes:
    """A static x86-64 ELF executable of one loadable segment holding `code`."""
    base, start = 0x400000, 64 + 56
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 0x3E, 1, base + start,
                       64, 0, 0, 64, 56, 1, 0, 0, 0)
    size = start + len(code)
    return ehdr + struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000) + code


def is_static(path: str) -> bool:
    """An ELF without a program interpreter (PT_INTERP)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def podman(*args: str, check: bool = True, env: Dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=120,
                          env={**os.environ, **(env or {})})


def image_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, mode: int, data: bytes | None = None, link: str | None = None) -> None:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 0
            info.mode = mode
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for d in ("bin", "etc", "tmp", "root"):
            add(d, 0o1777 if d == "tmp" else 0o700 if d == "root" else 0o755)
        add("bin/busybox", 0o755, Path(BUSYBOX).read_bytes())
        for applet in APPLETS:
            add(f"bin/{applet}", 0o777, link="busybox")
        add("bin/readfile", 0o4755, tiny_elf(READFILE_CODE))  # setuid root
        # The attack: the job's uid is called root here.
        add("etc/passwd", 0o644, f"root:x:0:0:root:/root:/bin/sh\nroot:x:{NOBODY.pw_uid}:{NOBODY.pw_gid}:"
                                 "root:/root:/bin/sh\n".encode())
        add("etc/group", 0o644, f"root:x:0:\nroot:x:{NOBODY.pw_gid}:\n".encode())
    return buf.getvalue()


@contextlib.contextmanager
def local_registry(d: Path) -> Iterator[Tuple[str, str]]:
    """The test image pushed to a docker-registry on 127.0.0.1 (config and storage in `d`):
    (its reference, a registries.conf that trusts that registry). Removed at the end."""
    require(shutil.which("podman") is not None, "podman is not installed (apt-get install podman)")
    require(shutil.which("runc") is not None, "runc is not installed (apt-get install runc)")
    require(shutil.which("docker-registry") is not None,
            "docker-registry is not installed (apt-get install docker-registry)")
    require(os.path.exists(BUSYBOX) and is_static(BUSYBOX),
            f"{BUSYBOX} is not a static busybox (apt-get install busybox-static)")
    require(platform.machine() == "x86_64", "the setuid test program is x86-64 machine code")
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = d / "config.yml"
    cfg.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n"
                   f"http:\n  addr: 127.0.0.1:{port}\n")
    conf = d / "registries.conf"
    conf.write_text(f'unqualified-search-registries = []\n[[registry]]\nlocation = "127.0.0.1:{port}"\n'
                    "insecure = true\n")
    log = open(d / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    tag = uuid.uuid4().hex[:12]
    local = f"localhost/hybridctl-test-build:{tag}"
    ref = f"127.0.0.1:{port}/hctest/busybox:{tag}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (d / "registry.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_for(up, what="docker-registry to listen")
        (d / "image.tar").write_bytes(image_tar())
        podman("import", "--quiet", str(d / "image.tar"), local)
        podman("push", "--quiet", "--tls-verify=false", local, ref)
        podman("rmi", "--force", local)
        yield ref, str(conf)
    finally:
        podman("rmi", "--force", "--ignore", local, ref, check=False)
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


