"""`resources.image_id: docker:IMAGE` is checked at submit against the image reference grammar
(core/spec.parse_image): anything podman could read as an option, or that is no image, is exit 2."""

from __future__ import annotations

import pytest

from hybridctl.core.errors import SpecError
from hybridctl.core.spec import parse_spec


@pytest.mark.parametrize("image", [
    "docker:busybox", "docker:ubuntu:22.04", "docker:nvcr.io/nvidia/pytorch:24.05-py3",
    "docker:127.0.0.1:5000/lab/train:v1", "docker:my-registry.local/a/b__c/d:latest",
    "docker:busybox@sha256:" + "a" * 64,
])
def test_image_references_are_accepted(image: str) -> None:
    assert parse_spec({"run": "x", "resources": {"image_id": image}}, "j.yaml")[0].image == image


@pytest.mark.parametrize("image", [
    "docker:--privileged", "docker:", "docker:-v/:/host", "docker:busybox --privileged", "docker:a;rm -rf /",
    "docker:Busybox", "docker:busybox:", "docker:busybox:-x", "docker:x/../y", "docker:" + "a" * 600,
])
def test_anything_else_after_docker_is_refused_with_exit_2(image: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"run": "x", "resources": {"image_id": image}}, "j.yaml")
    assert err.value.exit_code == 2
    text = str(err.value)
    assert text.startswith("j.yaml: resources.image_id: ") and "is not valid" in text
    assert "expected docker:[registry[:port]/]name[:tag]" in text


def test_a_machine_image_id_is_still_only_warned_about() -> None:
    spec, warnings = parse_spec({"run": "x", "resources": {"image_id": "ami-0abc --privileged"}}, "j.yaml")
    assert spec.image is None and "resources.image_id" in warnings[0]
