"""Byte-range reads of a job's stdout/stderr logs for the `logs` op. Reads never follow a
symlink and stop at a UTF-8 character boundary, so consecutive reads join up exactly."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Dict

MAX_READ = 4 * 1024 * 1024
"""Largest chunk one `logs` request returns, whatever `max_bytes` asks."""


def _utf8_cut(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 \
            else 4 if byte >> 3 == 0b11110 else 1
        return n if back >= need else n - back
    return n


def read_range(path: Path, offset: int, max_bytes: int, ended: bool) -> Dict[str, Any]:
    """Read up to `max_bytes` from `offset` (negative: that many bytes before the end).

    Returns `data` (text, invalid UTF-8 replaced), `offset` (where the next read starts) and
    `eof` (the job has ended and nothing is left to read).
    """
    max_bytes = max(0, min(max_bytes, MAX_READ))
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {"data": "", "offset": max(offset, 0), "eof": ended}
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(f"{path.name} is not a plain log file")
        size = st.st_size
        start = max(0, size + offset) if offset < 0 else min(offset, size)
        fh.seek(start)
        data = fh.read(max_bytes)
    if offset < 0:  # skip a partial character at a start chosen from the end
        skip = 0
        while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
            skip += 1
        data, start = data[skip:], start + skip
    end_of_file = start + len(data) >= size
    if not (ended and end_of_file):  # a later read completes a split character
        cut = _utf8_cut(data)
        if cut > 0:  # (0 only when max_bytes is smaller than one character: return it raw)
            data = data[:cut]
    nxt = start + len(data)
    return {"data": data.decode("utf-8", errors="replace"), "offset": nxt,
            "eof": bool(ended and nxt >= size)}
