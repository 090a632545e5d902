"""A login shell and SFTP on a machine, for installing the agent there (`cloud/bootstrap.py`).

asyncssh stays behind this module like behind `link.py`: its exceptions come out as `RemoteError`
(or `OSError` / `asyncio.TimeoutError`, which callers catch alongside), so nothing outside `ssh/`
imports asyncssh."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from hybridctl.core.errors import HybridctlError
from hybridctl.ssh.sftp import is_ssh_error


class RemoteError(HybridctlError):
    """An SSH connection, command or SFTP step failed; the text is asyncssh's."""


def _translate(exc: BaseException) -> BaseException:
    if is_ssh_error(exc):
        return RemoteError(str(exc) or type(exc).__name__)
    return exc


class Sftp:
    def __init__(self, client: Any) -> None:
        self._client = client

    async def makedirs(self, path: str) -> None:
        try:
            await self._client.makedirs(path, exist_ok=True)
        except Exception as exc:
            raise _translate(exc) from exc

    async def put(self, local: str, remote: str) -> None:
        try:
            await self._client.put(local, remote)
        except Exception as exc:
            raise _translate(exc) from exc

    async def write_text(self, remote: str, text: str) -> None:
        try:
            async with self._client.open(remote, "w") as out:
                await out.write(text)
        except Exception as exc:
            raise _translate(exc) from exc


class Result:
    def __init__(self, exit_status: int | None, stdout: str, stderr: str) -> None:
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class Shell:
    """One SSH connection: run scripts, open SFTP. Close with `async with` or `close()`."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._noise: tuple[str, str] | None = None

    async def run(self, script: str, timeout: float) -> Result:
        """Run `script` with the user's shell. What the shell's own startup files print on every
        command (a .bashrc whose `pyenv` is missing, a banner) is taken off the front of stdout
        and stderr, so a step's output and error are the script's alone."""
        try:
            if self._noise is None:
                quiet = await self._conn.run(":", timeout=timeout)
                self._noise = (str(quiet.stdout or ""), str(quiet.stderr or ""))
            res = await self._conn.run(script, timeout=timeout)
        except Exception as exc:
            raise _translate(exc) from exc
        out, err = str(res.stdout or ""), str(res.stderr or "")
        return Result(res.exit_status, out.removeprefix(self._noise[0]), err.removeprefix(self._noise[1]))

    @asynccontextmanager
    async def sftp(self) -> AsyncIterator[Sftp]:
        try:
            async with self._conn.start_sftp_client() as client:
                yield Sftp(client)
        except Exception as exc:
            raise _translate(exc) from exc

    def close(self) -> None:
        self._conn.close()

    async def __aenter__(self) -> "Shell":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._conn.close()
        try:
            await self._conn.wait_closed()
        except Exception:  # closing a dead connection: nothing left to report
            pass


async def open_shell(host: str, port: int, user: str | None, known_hosts: Path, identity: Path | None,
                     connect_timeout: float = 30) -> Shell:
    """Connect with host keys checked against `known_hosts` (pin them first)."""
    import asyncssh

    options: dict[str, Any] = {"port": port, "known_hosts": str(known_hosts), "connect_timeout": connect_timeout}
    if user:
        options["username"] = user
    if identity:
        options["client_keys"] = [str(identity)]
    try:
        return Shell(await asyncssh.connect(host, **options))
    except asyncssh.Error as exc:
        raise RemoteError(str(exc) or type(exc).__name__) from exc
