"""The job spec's `environment:` and `setup_every_attempt:` keys (core/environment.py, spec.py)."""

from __future__ import annotations

import pytest

from hybridctl.core.errors import SpecError
from hybridctl.core.model import spec_from_dict
from hybridctl.core.spec import parse_spec, resolve_paths


def _resolve(data: dict) -> dict:
    return resolve_paths(data, base_dir="/jobs/a", home=lambda name: f"/home/{name or 'me'}", source="job.yaml")


@pytest.mark.parametrize("given, expected", [
    ({"requirements": "requirements.txt"}, {"requirements": "/jobs/a/requirements.txt"}),
    ({"uv_lock": "~/p/uv.lock", "python": "3.12"}, {"uv_lock": "/home/me/p/uv.lock", "python": "3.12"}),
    ({"pyproject": "/abs/pyproject.toml"}, {"pyproject": "/abs/pyproject.toml"}),
])
def test_an_environment_names_one_file_resolved_like_workdir(given: dict, expected: dict) -> None:
    spec, warnings = parse_spec(_resolve({"run": "python t.py", "environment": given}), "job.yaml")
    assert spec.environment == expected and warnings == []
    assert spec_from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("given, words", [
    ({"requirements": "a", "uv_lock": "b"}, "environment: names requirements, uv_lock: only one"),
    ({"python": "3.12"}, "environment: names no defining file"),
    ({"requirements": "a", "pip": "x"}, "environment.pip: unknown key"),
    ({"requirements": "a", "python": 3.10}, "environment.python: 3.1 is not valid; quote it"),
    ({"requirements": "a", "python": "3; rm -rf"}, "environment.python"),
    ({"requirements": 5}, "environment.requirements: 5 is not valid; expected a file path"),
    ("requirements.txt", "environment: 'requirements.txt' is not valid; give one of"),
])
def test_a_bad_environment_names_the_field_and_what_is_accepted(given: object, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"run": "x", "environment": given}, "job.yaml")
    assert err.value.exit_code == 2 and words in str(err.value), str(err.value)


def test_setup_every_attempt_is_a_boolean_off_by_default() -> None:
    assert parse_spec({"run": "x", "setup": "pip install ."})[0].setup_every_attempt is False
    spec = parse_spec({"run": "x", "setup": "s", "setup_every_attempt": True})[0]
    assert spec.setup_every_attempt and spec_from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match="setup_every_attempt: 'yes' is not valid; expected true or false"):
        parse_spec({"run": "x", "setup_every_attempt": "yes"}, "job.yaml")


# ---- file_mounts (core/mounts.py) -----------------------------------------------------------------


def test_file_mounts_local_and_s3_are_acted_on_local_paths_resolved_like_workdir() -> None:
    data = _resolve({"run": "x", "file_mounts": {
        "/data/a": "data/a.bin", "~/ds": "s3://lab/ds/", "rel": {"source": "~/w", "mode": "COPY"},
        "/m": {"source": "s3://lab/m", "mode": "MOUNT"}}})
    spec, warnings = parse_spec(data, "job.yaml")
    assert spec.file_mounts == {"/data/a": "/jobs/a/data/a.bin", "~/ds": "s3://lab/ds/",
                                "rel": "/home/me/w", "/m": "s3://lab/m"}
    assert warnings == ["job.yaml: file_mounts./m: mode MOUNT is served as COPY (a cached copy on the node)"]
    assert spec_from_dict(spec.to_dict()) == spec


def test_file_mounts_hybridctl_cannot_make_are_accepted_with_a_warning_naming_them() -> None:
    spec, warnings = parse_spec({"run": "x", "file_mounts": {
        "/g": "gs://b/x", "/st": {"name": "new-bucket", "store": "s3"}, "/ok": "s3://b/k"}}, "job.yaml")
    assert spec.file_mounts == {"/ok": "s3://b/k"}
    assert warnings == ["job.yaml: file_mounts./g: gs:// is not fetched (local paths and s3:// are): not mounted",
                        "job.yaml: file_mounts./st: a storage object without one `source` path is not created or"
                        " mounted: not mounted"]


@pytest.mark.parametrize("given, words", [
    (["a"], "file_mounts: ['a'] is not valid; a mapping of node paths"),
    ({"s3://x": "/a"}, "file_mounts.s3://x: is not a destination path"),
])
def test_bad_file_mounts_name_the_field(given: object, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"run": "x", "file_mounts": given}, "job.yaml")
    assert words in str(err.value), str(err.value)


# ---- image_id (core/environment.image_refusal) -----------------------------------------------------


def test_a_docker_image_id_is_kept_and_used_and_a_machine_image_is_warned_about() -> None:
    spec, warnings = parse_spec({"run": "x", "resources": {"image_id": "docker:nvcr.io/nvidia/pytorch:24.01"}}, "j.yaml")
    assert spec.image == "docker:nvcr.io/nvidia/pytorch:24.01" and spec_from_dict(spec.to_dict()) == spec
    assert not any("image_id" in w for w in warnings)  # it runs in that image: nothing is ignored
    spec, warnings = parse_spec({"run": "x", "resources": {"image_id": "ami-123"}})
    assert spec.image is None and "resources.image_id" in warnings[0] and "no machine image is booted" in warnings[0]


@pytest.mark.parametrize("runtimes, cloud, refused", [
    ({}, (), False),  # no node heard from yet: nothing to judge by
    ({"n1": {"uv": "/usr/bin/uv"}, "n2": {}}, (), True),
    # apptainer is advertised but the agent runs images with podman only: such a job would wait forever
    ({"n1": {"uv": "/usr/bin/uv"}, "n2": {"apptainer": "/usr/bin/apptainer"}}, (), True),
    ({"n1": {"podman": "/usr/bin/podman"}}, (), False),
    ({"n1": {"uv": "/usr/bin/uv"}, "n2": {}}, ("podman",), False),  # it can burst to a node that has it
])
def test_an_image_job_is_refused_only_where_no_node_can_run_it(runtimes: dict, cloud: tuple, refused: bool) -> None:
    from hybridctl.core.environment import image_refusal

    why = image_refusal("docker:x", runtimes, cloud)
    assert (why is not None) == refused
    if refused:
        assert why.startswith("image_id docker:x needs podman on a node, and none of the 2 node(s) has it")
        assert "list it in cloud.runtimes" in why
