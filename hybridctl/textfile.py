"""Reading the text files users hand hybridctl (job files, the config): strict UTF-8, so a file in
another encoding is an error naming the file and its first bad byte (exit 2) instead of a
traceback, and never reaches the controller's parser as guessed text. Stdlib only: `hybridctl
submit` imports it."""

from __future__ import annotations

import os

from hybridctl.core.errors import HybridctlError


class NotText(HybridctlError):
    """A file that must be UTF-8 text is not."""

    exit_code = 2


def decode(raw: bytes, source: str) -> str:
    """The bytes of the file `source` as text. A UTF-8 byte-order mark is dropped; anything that
    is not UTF-8 raises NotText with the offset of the first bad byte (and its line)."""
    try:
        text = raw.decode("utf-8")  # not "utf-8-sig": its offsets would not count the mark
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        hint = "save it as UTF-8"
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = "it looks like UTF-16; save it as UTF-8"
        raise NotText(
            f"{source}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
            f"(line {line}); {hint}"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: str | os.PathLike[str], source: str | None = None) -> str:
    """Read `path` as UTF-8 text (see `decode`); errors name it as `source` (default: the path).
    OSError passes through: each caller words "cannot read" for its own file."""
    with open(path, "rb") as f:
        raw = f.read()
    return decode(raw, os.fspath(path) if source is None else source)
