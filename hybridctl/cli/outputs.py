"""`hybridctl outputs JOB [--to [DIR]] [--force] [--json]`: what a cloud job wrote to
$HYBRIDCTL_OUTPUT_DIR, listed, or downloaded from the controller into a directory of yours.

The controller keeps those copies in its private home: they come over its socket (owner-checked,
one chunk per request) and are written here with the rights of whoever runs this command, never
the controller's. Stdlib only at import time: `cli/main.py` registers this on every run, `submit`
included. (`cli/output.py`, singular, is how the CLI prints tables.)"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

CHUNK = 1 << 20
"""Bytes asked for per request (the controller's most: control/outputs.py MAX_CHUNK)."""
PROGRESS_FROM = 16 << 20
"""Downloads at least this large show their progress on stderr."""
PART = ".hybridctl-part"
"""Suffix of a file still being downloaded (renamed into place when whole)."""

EPILOG = """\
examples:
  hybridctl outputs 42                      # list what job 42 left in $HYBRIDCTL_OUTPUT_DIR
  hybridctl outputs 42 --to                 # download it all into ./42-outputs
  hybridctl outputs 42_7 --to results/t7    # one array task, into results/t7
  hybridctl outputs 42 --attempt 0 --json   # an earlier run of a requeued job, as JSON

Jobs that ran on cloud nodes get $HYBRIDCTL_OUTPUT_DIR; when the job ends the controller copies it
back (up to cloud.output_cap_mb; links the job left there are not copied), and only the job's owner
and admins may read it. Files are written with your own rights, each under a temporary name until
whole; files already there are never replaced unless you pass --force. A multi-node job's ranks
land in rank0/, rank1/, ... unless you pick one with --rank.
"""


def add_parser(sub: Any) -> None:
    """Register `outputs` on the main parser's subparsers."""
    p = sub.add_parser("outputs", help="list or download what a cloud job wrote to $HYBRIDCTL_OUTPUT_DIR",
                       description="List the files a job left in $HYBRIDCTL_OUTPUT_DIR (the controller keeps them\n"
                       "after the job ends), or download them with --to.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", metavar="JOB", help="a job id (42) or an array task (42_7)")
    p.add_argument("--to", nargs="?", const="", metavar="DIR",
                   help="download into DIR (created if missing; default ./JOB-outputs) instead of listing")
    p.add_argument("--force", action="store_true", help="with --to: replace files that are already there")
    # --rank and --attempt stay text here: cli/main.check_args reads them, naming the flag when wrong
    p.add_argument("--rank", metavar="N", help="one node of a multi-node job (default: every rank)")
    p.add_argument("--attempt", metavar="N",
                   help="an earlier run of a requeued job (0 = the first; default: the latest that left outputs)")
    p.add_argument("--json", action="store_true",
                   help="print {job, attempt, state, files: {path: bytes}, total} (with --to: and where)")


def cmd_outputs(args: argparse.Namespace) -> int:
    from hybridctl import paths
    from hybridctl.control.client import Client
    from hybridctl.core.errors import ExitCode, HybridctlError

    if args.force and args.to is None:
        print("hybridctl: --force only applies to a download: add --to [DIR]", file=sys.stderr)
        return ExitCode.USAGE
    with Client(paths.socket_path()) as c:
        found = listing(c, args.job, args.attempt, args.rank)
        for line in _warnings(found):
            print(f"hybridctl: {line}", file=sys.stderr)
        if args.to is None:
            _show(args, found)
            return 0
        dest = Path(args.to or f"{args.job}-outputs")
        try:
            written = download(c, found, dest, force=args.force)
        except FileExistsError as exc:  # a file of the same name is there (checked before fetching)
            print(f"hybridctl: {exc}", file=sys.stderr)
            return ExitCode.USAGE
        except OSError as exc:  # our side: the destination (no space, not writable, ...)
            raise HybridctlError(f"cannot write the outputs of job {found['job']} into {dest}: {exc}") from exc
    if args.json:
        from hybridctl.cli.output import emit_json

        emit_json({**_public(found), "to": str(dest)})
    elif written:
        print(dest)
    if written:
        print(f"hybridctl: job {found['job']} (attempt {found['attempt']}): {written} files, "
              f"{size_text(found['total'])} in {dest}", file=sys.stderr)
    return 0


# ---- listing --------------------------------------------------------------------------------------


def listing(c: Any, job: str, attempt: int | None, rank: int | None) -> dict[str, Any]:
    """The controller's answer for the job, with `files` ({local path: size}) and `sources`
    ({local path: (rank, path on the controller)}) merged over every rank that left outputs.
    A multi-node job's files get a `rank<N>/` prefix unless one rank was asked for."""
    first = c.call("outputs", job=job, attempt=attempt, rank=rank or 0)
    per_rank = {first["rank"]: first}
    prefixed = rank is None and first["num_nodes"] > 1
    if prefixed:
        for r in first["ranks"]:
            if r not in per_rank:  # the same attempt for every rank, as the first answer chose
                per_rank[r] = c.call("outputs", job=job, attempt=first["attempt"], rank=r)
    files: dict[str, int] = {}
    sources: dict[str, tuple[int, str]] = {}
    for r, res in sorted(per_rank.items()):
        for path, size in sorted(res["files"].items()):
            local = f"rank{r}/{path}" if prefixed else path
            files[local] = size
            sources[local] = (r, path)
    return {**first, "files": files, "sources": sources, "total": sum(files.values()),
            "skipped": sum(res.get("skipped", 0) for res in per_rank.values()),
            "truncated": any(res.get("truncated") for res in per_rank.values())}


def _warnings(found: dict[str, Any]) -> Iterator[str]:
    if found.get("note"):
        yield found["note"]
    if found.get("skipped"):
        yield (f"{found['skipped']} entries of job {found['job']}'s outputs are left out: links, devices and "
               "other non-regular files (and directories nested too deep) are never copied")
    if found.get("truncated"):
        yield f"job {found['job']} has more output files than one listing holds: only the first are shown"


def _public(found: dict[str, Any]) -> dict[str, Any]:
    return {k: found[k] for k in ("job", "attempt", "state", "files", "total", "attempts") if k in found} | (
        {"note": found["note"]} if found.get("note") else {})


def _show(args: argparse.Namespace, found: dict[str, Any]) -> None:
    from hybridctl.cli import output as o

    if args.json:
        o.emit_json(_public(found))
        return
    if not found["files"]:
        return
    rows = [[path, size_text(size)] for path, size in found["files"].items()]
    print(o.table(["PATH", "SIZE"], rows))
    print(f"hybridctl: {len(rows)} files, {size_text(found['total'])} (attempt {found['attempt']}); "
          f"download them with: hybridctl outputs {found['job']} --to", file=sys.stderr)


def size_text(n: int) -> str:
    """1023 B, 1.5 KiB, 12.0 MiB, 2.0 GiB."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024  # type: ignore[assignment]
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


# ---- downloading ----------------------------------------------------------------------------------


def _parts(path: str) -> list[str]:
    """The components of a path the controller listed; it only lists relative, normalised paths,
    and this side checks again before joining one to a directory of the user's."""
    names = path.split("/")
    if not path or path.startswith("/") or "\0" in path or any(n in ("", ".", "..") for n in names):
        from hybridctl.core.errors import HybridctlError

        raise HybridctlError(f"the controller listed {path!r}, which is not a path inside a directory; "
                             "nothing was written for it (report this to your admin)")
    return names


def download(c: Any, found: dict[str, Any], dest: Path, *, force: bool) -> int:
    """Fetch every listed file into `dest` (made if missing); return how many. Each file is
    written under a temporary name and renamed into place when whole. Without `force`, a file
    already there is a FileExistsError, raised before anything is fetched (and, should one appear
    meanwhile, when its download would replace it)."""
    if not found["files"]:
        return 0
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"--to: {str(dest)!r} exists and is not a directory; name a directory")
    plan = [(local, _parts(local), size) for local, size in found["files"].items()]
    if not force:
        there = [local for local, names, _ in plan if os.path.lexists(dest.joinpath(*names))]
        if there:
            shown = ", ".join(there[:5]) + (f" and {len(there) - 5} more" if len(there) > 5 else "")
            raise FileExistsError(f"--to: {str(dest)!r} already has {shown}; pass --force to replace them, "
                                  "or choose another --to")
    progress = Progress(found["total"], str(found["job"])) if found["total"] >= PROGRESS_FROM else None
    for local, names, size in plan:
        rank, path = found["sources"][local]
        tmp = f".{names[-1]}{PART}"
        while "/".join([*names[:-1], tmp]) in found["files"]:  # a listed file has that name: not ours to use
            tmp = f".{tmp}"
        _fetch(c, found, rank, path, dest.joinpath(*names), tmp, size, force, progress)
    if progress is not None:
        progress.done()
    return len(plan)


def _fetch(c: Any, found: dict[str, Any], rank: int, path: str, final: Path, tmp_name: str, size: int,
           force: bool, progress: Progress | None) -> None:
    import base64

    from hybridctl.core.errors import HybridctlError

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(tmp_name)
    try:
        tmp.unlink()  # a leftover of a download cut short (unlink never follows a link)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            offset = 0
            while True:
                res = c.call("output_read", job=found["job"], path=path, offset=offset, max_bytes=CHUNK,
                             attempt=found["attempt"], rank=rank)
                data = base64.b64decode(res["data"])
                if res["size"] != size or (not data and offset < size):
                    raise HybridctlError(f"{path} of job {found['job']} changed on the controller while it was "
                                         f"downloaded ({size} bytes listed, {res['size']} now); run again")
                out.write(data)
                offset += len(data)
                if progress is not None:
                    progress.add(len(data))
                if res["eof"] or offset >= size:
                    break
        _place(tmp, final, force)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def _place(tmp: Path, final: Path, force: bool) -> None:
    """Rename the whole file into place; without `force` never over something already there
    (a hard link fails if the name exists; where links are not supported, check then rename)."""
    if force:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise FileExistsError(f"--to: {str(final)!r} appeared during the download; pass --force to replace "
                              "it, or choose another --to") from None
    except OSError:
        if os.path.lexists(final):
            raise FileExistsError(f"--to: {str(final)!r} appeared during the download; pass --force") from None
        os.replace(tmp, final)
        return
    tmp.unlink()


class Progress:
    """Bytes downloaded so far, on stderr: one line rewritten in place on a terminal, else a line
    every 5 s (a log file gets a record, not a flood)."""

    def __init__(self, total: int, job: str) -> None:
        self.total, self.job, self.got = total, job, 0
        self.tty = sys.stderr.isatty()
        self.every = 0.2 if self.tty else 5.0
        self.last = float("-inf")
        self._show(force=True)

    def add(self, n: int) -> None:
        self.got += n
        self._show()

    def done(self) -> None:
        self._show(force=True)
        if self.tty:
            sys.stderr.write("\n")

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        pct = 100 * self.got // max(1, self.total)
        text = f"job {self.job} outputs: {size_text(self.got)} of {size_text(self.total)} ({pct}%)"
        sys.stderr.write(f"\r{text}\033[K" if self.tty else f"hybridctl: {text}\n")
        sys.stderr.flush()
