"""control/mounts.need_of: what a job needs on its node, from what the controller read before."""

from __future__ import annotations

from hybridctl.control import mounts
from tests.unit.locality_kit import memo  # noqa: F401 - autouse


def test_a_job_needs_its_env_and_the_local_data_read_before(memo: dict) -> None:
    memo[("/p/requirements.txt", 1000)] = ("m1", {"": ["a" * 64, 12]})
    memo[("/p/data", 1000)] = ("m2", {"x": ["b" * 64, 5], "y/z": ["c" * 64, 7]})
    spec = {"environment": {"requirements": "/p/requirements.txt"},
            "file_mounts": {"/d": "/p/data", "/s": "s3://b/k", "/u": "/p/unread"}}
    digest = mounts.env_digest("requirements", None, {"requirements.txt": "a" * 64})
    need = mounts.need_of(spec, 1000, env_bytes={digest: 300})
    # /p/unread was never read: named by its path (held where a job naming it was last placed)
    assert need.items == {f"env:{digest}": 300, f"obj:{'b' * 64}": 5, f"obj:{'c' * 64}": 7,
                          "src:1000:/p/unread": mounts.UNREAD_BYTES}
    # another user's reads say nothing for this one
    assert mounts.need_of(spec, 1001).items == {f"src:1001:{p}": mounts.UNREAD_BYTES for p in ("/p/data", "/p/unread")}
