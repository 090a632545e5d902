"""A tiny pure-Python wheel made on the spot, so environment builds are tested offline: uv installs
it from a --find-links directory with no index and no network."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(dest: Path, name: str = "hctiny", version: str = "1.0", body: str = "",
               requires: tuple = ()) -> Path:
    """`<dest>/<name>-<version>-py3-none-any.whl` holding module `<name>` whose VERSION is
    `version` (plus `body`), depending on `requires` (Requires-Dist lines)."""
    dest.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n{body}".encode(),
        f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hybridctl-tests\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
    }
    record = [_record_line(p, d) for p, d in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    out = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out


class WheelIndex:
    """A PEP 503 simple index of the wheels in a directory, served over HTTP on 127.0.0.1 from a
    thread (a real server: pip and uv talk to it as to PyPI). `requests` lists the paths asked."""

    def __init__(self, directory: Path) -> None:
        import http.server
        import re
        import threading

        self.directory = directory
        self.requests: list = []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                index.requests.append(self.path)
                parts = [p for p in self.path.split("?")[0].split("/") if p]
                body, ctype = None, "text/html"
                if parts[:1] == ["simple"] and len(parts) == 2:
                    want = re.sub(r"[-_.]+", "-", parts[1]).lower()
                    links = [w.name for w in sorted(index.directory.glob("*.whl"))
                             if re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() == want]
                    if links:
                        body = "".join(f'<a href="/files/{n}">{n}</a>\n' for n in links).encode()
                elif parts[:1] == ["files"] and len(parts) == 2 and (index.directory / parts[1]).is_file():
                    body, ctype = (index.directory / parts[1]).read_bytes(), "application/octet-stream"
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
