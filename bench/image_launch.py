"""What running a job in an image costs (issue 15, image jobs): a real `hybridctl-agent` (root,
rootful podman) launches `true` N times on the node's own OS and N times in a busybox image
(tests/agent/image_kit.py, pushed to a docker-registry on 127.0.0.1 and pulled once before the
timed runs), interleaved; reported: launch -> exit record, median and p95 of each, and the ratio.
The first image launch, which pulls, is timed on its own.

    .venv/bin/python bench/image_launch.py [--runs 10]

Needs root, podman, runc, docker-registry and busybox-static (as the tests do). Every container,
the image and the registry are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agents")]

from tests.agent.agent_harness import AgentProc  # noqa: E402
from tests.agent.image_kit import NOBODY, local_registry  # noqa: E402


def launch_to_exit(agent: AgentProc, key: str, image: str | None) -> float:
    job = {"key": key, "run": "true", "uid": NOBODY.pw_uid, "gid": NOBODY.pw_gid, "user": "nobody",
           **({"image": f"docker:{image}"} if image else {})}
    t = time.perf_counter()
    agent.call("launch", job=job)
    rec = agent.wait_exited(key, timeout=300)
    took = time.perf_counter() - t
    if rec["exit_code"] != 0:
        raise SystemExit(f"job {key} failed: {rec}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed launches of each kind")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("image jobs need a root agent (rootful podman): run as root")
    with tempfile.TemporaryDirectory(prefix="hct-bench-img-") as tmp, local_registry(Path(tmp) / "reg") as (ref, conf):
        base = Path(tmp) / "agent"
        base.mkdir(mode=0o711)  # the job's user (nobody) enters its job directory on the host too
        os.chmod(tmp, 0o711)
        agent = AgentProc(["--simulate-gpus", "1:A100"], env={"CONTAINERS_REGISTRIES_CONF": conf},
                          base=str(base)).start()
        try:
            first = launch_to_exit(agent, "pull", ref)
            host, image = [], []
            for i in range(args.runs):
                host.append(launch_to_exit(agent, f"h{i}", None))
                image.append(launch_to_exit(agent, f"i{i}", ref))
        finally:
            agent.cleanup()
    print(f"launch -> exit record of `true`, {args.runs} runs each, interleaved (one agent, podman + runc)")
    for name, xs in (("node's own OS", host), ("busybox image", image)):
        p95 = sorted(xs)[max(0, int(round(0.95 * len(xs))) - 1)]
        print(f"  {name:>14}: median {statistics.median(xs) * 1e3:7.0f} ms   p95 {p95 * 1e3:7.0f} ms")
    print(f"  image / own OS (medians): {statistics.median(image) / statistics.median(host):.1f}x")
    print(f"  first image launch, pulling it from 127.0.0.1: {first * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
