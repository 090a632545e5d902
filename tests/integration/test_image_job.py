"""An image job end to end: a SkyPilot task with `image_id: docker:IMAGE` submitted to the real
controller, placed on a real agent (over real sshd) whose hello offers podman, pulled from a
docker-registry on 127.0.0.1 and run under rootful podman as the submitting user, its output
read back with `hybridctl logs`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.agent.image_kit import local_registry, podman
from tests.integration.world_lab import ended, lab

pytestmark = [pytest.mark.needs_sshd,
              pytest.mark.skipif(os.geteuid() != 0, reason="image jobs need a root agent (rootful podman)")]


def test_an_image_job_runs_in_its_image_on_a_node_with_podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with local_registry(tmp_path / "registry") as (ref, conf):
        monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", conf)  # the agent's podman trusts the local registry
        job = tmp_path / "task.yaml"
        job.write_text(f"resources:\n  image_id: docker:{ref}\n"
                       "envs:\n  GREETING: hello from the image\n"
                       "run: |\n  id -u\n  echo \"$GREETING\"\n  cat /etc/passwd | cut -d: -f1 | head -1\n")
        bad = tmp_path / "bad.yaml"
        bad.write_text('resources:\n  image_id: "docker:--privileged"\nrun: id\n')
        with lab(tmp_path, {}) as (ctl, node):
            res = ctl.cli("submit", str(bad))
            assert res.returncode == 2 and res.stdout == "", res
            assert "resources.image_id: 'docker:--privileged' is not valid; expected docker:[registry[:port]/]name" \
                in res.stderr, res.stderr
            hello = ctl.cli_json("nodes")[0]
            jid = ctl.cli("submit", str(job), check=True).stdout.strip()
            t = ended(ctl, jid)
            err = ctl.cli("logs", jid, "--stderr").stdout
            assert t["state"] == "SUCCEEDED", (t, err, hello)
            # uid 0 is the submitter here (root); the busybox image's own passwd is what the job sees
            assert ctl.cli("logs", jid, check=True).stdout.split("\n")[:3] == ["0", "hello from the image", "root"]
            from hybridctl_agent.container import container_name  # on sys.path through test_job_world

            mine = container_name(str(node.state_dir), "")  # hybridctl-<this agent>-
            names = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
            assert not [n for n in names if n.startswith(mine)]  # --rm, and removed by name: nothing left
        # The lab kills its agent with SIGKILL: its empty cgroups (podman's hierarchies too) stay; drop them.
        from hybridctl_agent.binds import remove_leftovers
        from hybridctl_agent.containment import agent_parent

        remove_leftovers(agent_parent("/hybridctl", str(node.state_dir)))
