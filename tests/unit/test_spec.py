"""The job spec: YAML and flags into a JobSpec, each value's grammar, and the error messages
(which must name the file, the field, the bad value and what is accepted)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from hybridctl.core.errors import SpecError
from hybridctl.core.model import ArraySpec, JobSpec, Resources, spec_from_dict
from hybridctl.core.spec import (
    apply_flags,
    load_yaml,
    parse_accelerators,
    parse_array,
    parse_duration,
    parse_env,
    parse_memory,
    parse_spec,
    resolve_paths,
)
from hybridctl.textfile import NotText, decode

REPO = Path(__file__).resolve().parents[2]

FULL_YAML = """\
name: llama-finetune
workdir: /home/alice/llama
num_nodes: 2
resources:
  accelerators: A100:8
  cpus: 32+
  memory: 256G
  use_spot: false
  infra: aws/us-east-1
  disk_size: 512
envs:
  HF_HOME: /data/hf
  EPOCHS: 3
  DEBUG: true
  LR: 0.5
file_mounts:
  /data: s3://bucket/data
setup: |
  pip install -r requirements.txt
run: |
  torchrun --nnodes=$WORLD_SIZE train.py
priority: 50
time_limit: 1-12:00:00
max_restarts: 3
checkpoint_dir: /home/alice/ckpt
placement: Cloud
array: 0-15:4%2
depends_on: [12, 13]
"""


def error(fn: Any, *args: Any, **kwargs: Any) -> str:
    """The message of the SpecError that fn(*args, **kwargs) raises."""
    with pytest.raises(SpecError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_full_skypilot_yaml_round_trip() -> None:
    spec, warnings = parse_spec(load_yaml(FULL_YAML, "job.yaml"), "job.yaml")
    assert spec == JobSpec(
        run="torchrun --nnodes=$WORLD_SIZE train.py\n",
        name="llama-finetune",
        resources=Resources(
            gpus=8, gpu_type="A100", cpus=32.0, memory_mb=256 * 1024, use_spot=False
        ),
        num_nodes=2,
        envs={"HF_HOME": "/data/hf", "EPOCHS": "3", "DEBUG": "true", "LR": "0.5"},
        setup="pip install -r requirements.txt\n",
        file_mounts={"/data": "s3://bucket/data"},
        workdir="/home/alice/llama",
        priority=50,
        time_limit=36 * 3600,
        max_restarts=3,
        checkpoint_dir="/home/alice/ckpt",
        placement="cloud",
        array=ArraySpec(0, 15, 4, 2),
        depends_on=(12, 13),
    )
    assert warnings == [
        "job.yaml: ignoring SkyPilot keys hybridctl does not act on: "
        "resources.infra (hybridctl picks the node (on-prem, else a cloud offer from its own catalog)); "
        "resources.disk_size (the node's own disks and network are used)"
    ]
    assert spec_from_dict(spec.to_dict()) == spec


def test_minimal_spec_takes_the_model_defaults() -> None:
    spec, warnings = parse_spec({"run": "echo hi", "workdir": None, "resources": None})
    assert spec == JobSpec(run="echo hi") and warnings == []


@pytest.mark.parametrize(
    ("data", "flags", "attr", "expected"),
    [
        ({"run": "a"}, {"run": ["python", "train.py", "--name", "my run"]}, "run",
         "python train.py --name 'my run'"),
        ({"run": "a"}, {"run": ["python a.py | tee log"]}, "run", "python a.py | tee log"),
        ({"run": "a"}, {"run": []}, "run", "a"),
        ({"run": "a", "resources": {"accelerators": "A100:2"}}, {"gpus": "4"}, "resources",
         Resources(gpus=4, gpu_type="A100")),
        ({"run": "a", "resources": {"accelerators": "A100:2"}}, {"gpus": "H100:1"}, "resources",
         Resources(gpus=1, gpu_type="H100")),
        ({"run": "a", "resources": {"accelerators": "A100:2"}}, {"gpu_type": "H100"}, "resources",
         Resources(gpus=2, gpu_type="H100")),
        ({"run": "a"}, {"gpu_type": "L4"}, "resources", Resources(gpus=1, gpu_type="L4")),
        ({"run": "a"}, {"gpus": "2", "gpu_type": "A100"}, "resources", Resources(gpus=2, gpu_type="A100")),
        ({"run": "a", "resources": {"memory": 8, "cpus": 2}}, {"memory": "32G", "cpus": "4"},
         "resources", Resources(cpus=4.0, memory_mb=32 * 1024)),
        ({"run": "a", "envs": {"A": "1", "B": None}}, {"envs": ["B=2", "C=x=y"]}, "envs",
         {"A": "1", "B": "2", "C": "x=y"}),
        ({"run": "a", "priority": 5}, {"priority": "-7"}, "priority", -7),
        ({"run": "a", "time_limit": "1h"}, {"time_limit": "90"}, "time_limit", 90 * 60),
        ({"run": "a", "time_limit": "1h"}, {"time_limit": "unlimited"}, "time_limit", None),
        ({"run": "a"}, {"array": "1-100%10"}, "array", ArraySpec(1, 100, 1, 10)),
        ({"run": "a"}, {"num_nodes": "4"}, "num_nodes", 4),
        ({"run": "a"}, {"placement": "onprem"}, "placement", "onprem"),
        ({"run": "a"}, {"max_restarts": 3}, "max_restarts", 3),
        ({"run": "a", "recover_on_exit_codes": [1]}, {"recover_on_exit_codes": "75, 143,75"},
         "recover_on_exit_codes", (75, 143)),
        ({"run": "a", "depends_on": [1]}, {"depends_on": "afterok:12:13"}, "depends_on", (12, 13)),
        ({"run": "a"}, {"depends_on": "12,13"}, "depends_on", (12, 13)),
        ({"run": "a", "name": "file"}, {"name": "flag"}, "name", "flag"),
        ({"run": "a"}, {"workdir": "/w"}, "workdir", "/w"),
    ],
)  # fmt: skip
def test_flags_override_the_file(
    data: dict[str, Any], flags: dict[str, Any], attr: str, expected: Any
) -> None:
    before = repr(data)
    spec, _ = parse_spec(apply_flags(data, **flags))
    assert getattr(spec, attr) == expected
    assert repr(data) == before  # the caller's mapping is left alone


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        ({"gpus": "-1"}, ["--gpus", "'-1'", "TYPE:COUNT"]),
        ({"gpus": "A100:2", "gpu_type": "H100"}, ["--gpu-type", "'H100'", "contradicts --gpus"]),
        ({"gpu_type": "A100:2"}, ["--gpu-type", "'A100:2'", "GPU model"]),
        ({"memory": "lots"}, ["--memory", "'lots'", "'32G'"]),
        ({"cpus": "0"}, ["--cpus", "'0'", "above 0"]),
        ({"priority": "high"}, ["--priority", "'high'", "-1000 to 1000"]),
        ({"num_nodes": "0"}, ["--nodes", "'0'", "from 1"]),
        ({"depends_on": "afterbad:3"}, ["--dependency", "'afterbad:3'", "afterok"]),
        ({"envs": ["NOEQUALS"]}, ["--env", "'NOEQUALS'", "NAME=VALUE"]),
        ({"placement": "mars"}, ["--placement", "'mars'", "onprem, cloud, any"]),
    ],
)
def test_bad_flags_are_named_as_flags(flags: dict[str, Any], fragments: list[str]) -> None:
    message = error(apply_flags, {}, **flags)
    assert all(f in message for f in fragments), message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("A100:2", (2, "A100")), ("2", (2, None)), (2, (2, None)), ("A100", (1, "A100")),
     ({"A100": 2}, (2, "A100")), ({"V100": None}, (1, "V100")), ("H100-80GB:8", (8, "H100-80GB")),
     (" L4 : 1 ", (1, "L4")), ("0", (0, None)), (4.0, (4, None))],
)  # fmt: skip
def test_parse_accelerators(value: Any, expected: tuple[int, str | None]) -> None:
    assert parse_accelerators(value) == expected


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("A100:x", "TYPE:COUNT"), ("-1", "TYPE:COUNT"), (-1, "at least 0"), ("A100:2:3", "TYPE:COUNT"),
     (True, "TYPE:COUNT"), (0.5, "whole number"), ("", "TYPE:COUNT"), ("A100:5000", "at most 1024"),
     ({"A100": 1, "V100": 1}, "one GPU type"), (["A100:1", "V100:1"], "one GPU type")],
)  # fmt: skip
def test_parse_accelerators_refuses(value: Any, accepted: str) -> None:
    message = error(parse_accelerators, value, field="resources.accelerators", source="job.yaml")
    assert message.startswith(f"job.yaml: resources.accelerators: {value!r}"), message
    assert accepted in message


def test_accelerators_message_in_full() -> None:
    assert error(parse_spec, {"run": "x", "resources": {"accelerators": "A100:x"}}, "job.yaml") == (
        "job.yaml: resources.accelerators: 'A100:x' is not valid; expected TYPE:COUNT ('A100:8'), a set of"
        " candidates '{L4:8, A10G:8}' (any of them), or a list ['A100:8', 'H100:8'] (in order of preference);"
        " COUNT a whole number"
    )


@pytest.mark.parametrize(
    ("value", "mib"),
    [("32G", 32768), ("32GB", 32768), ("32GiB", 32768), ("32g", 32768), ("512M", 512),
     ("1.5T", 1536 * 1024), (32, 32768), (0.5, 512), ("32+", 32768), ("16GB+", 16384),
     ("1K", 1), ("0", 0)],
)  # fmt: skip
def test_parse_memory(value: Any, mib: int) -> None:
    assert parse_memory(value) == mib


@pytest.mark.parametrize(
    "value", ["lots", "32B", "-1G", "G", True, None, -4, "1e3G", "9" * 30 + "T"]
)
def test_parse_memory_refuses(value: Any) -> None:
    message = error(parse_memory, value, field="resources.memory", source="job.yaml")
    assert f"job.yaml: resources.memory: {value!r} is not valid" in message
    assert "'32G'" in message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1.5h", 5400),
     ("90", 5400), (90, 5400), ("1:30:00", 5400), ("10:30", 630), ("2-00:00:00", 172800),
     ("1-12", 129600), ("1-00:30", 86400 + 1800), (" 2H ", 7200)],
)  # fmt: skip
def test_parse_duration(value: Any, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("soon", "'2h'"), ("0", "above 0"), (0, "above 0"), ("-5m", "'2h'"), ("1:60:00", "'2h'"),
     ("1-24:00:00", "'2h'"), ("1:2:3:4", "'2h'"), (True, "'2h'"), (1.5, "'2h'"), ("400d", "366 days")],
)  # fmt: skip
def test_parse_duration_refuses(value: Any, accepted: str) -> None:
    message = error(parse_duration, value, field="time_limit", source="job.yaml")
    assert message.startswith(f"job.yaml: time_limit: {value!r} is not valid"), message
    assert accepted in message and "bare number is minutes" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1-100", ArraySpec(1, 100)), ("1-100%10", ArraySpec(1, 100, 1, 10)),
     ("0-15:4", ArraySpec(0, 15, 4)), ("7", ArraySpec(7, 7)), (7, ArraySpec(7, 7)),
     ("0-99999", ArraySpec(0, 99999))],
)  # fmt: skip
def test_parse_array(value: Any, expected: ArraySpec) -> None:
    assert parse_array(value) == expected


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("5-1", "FIRST (5) is above LAST (1)"), ("1-10%0", "MAX_RUNNING must be at least 1"),
     ("0-15:0", "STEP"), ("1,,5", "a list of those"), ("a-b", "FIRST-LAST"), ("-1-5", "FIRST-LAST"),
     ("0-100000", "at most 100000 tasks"), ("1-5000000", "up to 4000000"), (True, "FIRST-LAST")],
)  # fmt: skip
def test_parse_array_refuses(value: Any, accepted: str) -> None:
    message = error(parse_array, value, source="job.yaml")
    assert message.startswith(f"job.yaml: array: {value!r} is not valid"), message
    assert accepted in message


@pytest.mark.parametrize(
    ("items", "expected"),
    [(["A=1", "B=", "C=x=y", "_d2=ok"], {"A": "1", "B": "", "C": "x=y", "_d2": "ok"}),
     ({"N": 3, "F": 1.5, "T": True, "S": "s"}, {"N": "3", "F": "1.5", "T": "true", "S": "s"}),
     ([], {})],
)  # fmt: skip
def test_parse_env(items: Any, expected: dict[str, str]) -> None:
    assert parse_env(items) == expected


@pytest.mark.parametrize(
    ("items", "fragments"),
    [(["1X=1"], ["--env", "'1X'", "[A-Za-z_][A-Za-z0-9_]*"]),
     (["MY-VAR=1"], ["'MY-VAR'", "[A-Za-z_]"]),
     (["NOVALUE"], ["'NOVALUE'", "NAME=VALUE"]),
     (["HYBRIDCTL_JOB_ID=3"], ["'HYBRIDCTL_JOB_ID'", "reserved"]),
     (["CUDA_VISIBLE_DEVICES=0"], ["'CUDA_VISIBLE_DEVICES'", "reserved"]),
     ("A=1", ["'A=1'", "NAME=VALUE"]),
     (["A=x\0y"], ["NUL"])],
)  # fmt: skip
def test_parse_env_refuses(items: Any, fragments: list[str]) -> None:
    message = error(parse_env, items)
    assert all(f in message for f in fragments), message


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"run": " \n "}, ["job.yaml: run: is empty; give the command to run", "after `--`"]),
        ({"name": "x"}, ["job.yaml: run: is missing", "`run:`"]),
        ({"run": ["python", "a.py"]}, ["run: ['python', 'a.py'] is not valid", "a string"]),
        ({"run": "x", "priority": True}, ["priority: True is not valid", "whole number from -1000 to 1000"]),
        ({"run": "x", "priority": 1001}, ["priority: 1001 is not valid", "-1000 to 1000"]),
        ({"run": "x", "num_nodes": True}, ["num_nodes: True", "from 1"]),
        ({"run": "x", "num_nodes": 0}, ["num_nodes: 0", "from 1"]),
        ({"run": "x", "max_restarts": 101}, ["max_restarts: 101", "0 to 100"]),
        ({"run": "x", "max_restarts": 2.5}, ["max_restarts: 2.5", "0 to 100"]),
        ({"run": "x", "recover_on_exit_codes": [256]}, ["recover_on_exit_codes: 256", "at most 255", "0 to 255"]),
        ({"run": "x", "recover_on_exit_codes": "oom"}, ["recover_on_exit_codes: 'oom'", "e.g. [75, 143]"]),
        ({"run": "x", "resources": {"job_recovery": {"max_restart": 1}}},
         ["resources.job_recovery.max_restart: unknown key", "max_restarts_on_errors"]),
        ({"run": "x", "resources": {"accelerators": -2}}, ["resources.accelerators: -2", "at least 0"]),
        ({"run": "x", "resources": {"memory": "lots"}}, ["resources.memory: 'lots'", "'32G'"]),
        ({"run": "x", "resources": {"cpus": 0}}, ["resources.cpus: 0", "above 0"]),
        ({"run": "x", "resources": {"cpus": True}}, ["resources.cpus: True", "above 0"]),
        ({"run": "x", "resources": {"use_spot": "yes"}}, ["resources.use_spot: 'yes'", "true or false"]),
        ({"run": "x", "resources": "A100:2"}, ["resources: it is a str, not a mapping", "accelerators: A100:2"]),
        ({"run": "x", "envs": {"HF_TOKEN": None}}, ["envs.HF_TOKEN: is null", "--env HF_TOKEN=VALUE"]),
        ({"run": "x", "envs": {"CUDA_VISIBLE_DEVICES": "0"}}, ["envs.CUDA_VISIBLE_DEVICES", "reserved"]),
        ({"run": "x", "envs": {"BAD NAME": "0"}}, ["envs: 'BAD NAME'", "[A-Za-z_]"]),
        ({"run": "x", "envs": {"L": [1]}}, ["envs.L: [1]", "a string, a number or true/false"]),
        ({"run": "x", "envs": ["A=1"]}, ["envs: it is a list, not a mapping", "HF_HOME"]),
        ({"run": "x", "workdir": ""}, ["workdir: '' is not valid", "non-empty string"]),
        ({"run": "x", "checkpoint_dir": 3}, ["checkpoint_dir: 3", "a string"]),
        ({"run": "x", "placement": "mars"}, ["placement: 'mars'", "onprem, cloud, any"]),
        ({"run": "x", "name": "a\nb"}, ["name: 'a\\nb'", "one line"]),
        ({"run": "x", "time_limit": "soon"}, ["time_limit: 'soon'", "'2h'"]),
        ({"run": "x", "array": "5-1"}, ["array: '5-1'", "FIRST (5) is above LAST (1)"]),
        ({"run": "x", "depends_on": [0]}, ["depends_on: 0", "at least 1"]),
        ({"run": "x", "depends_on": "aftercorr:4"}, ["depends_on: 'aftercorr:4'", "aftercorr"]),
        ({"run": "x", "depends_on": ["x"]}, ["depends_on: 'x'", "afterok:12:13"]),
        ({"run": "x", 3: "y"}, ["job.yaml: 3: is not a key"]),
        (["run", "x"], ["job.yaml: the top level is a list, not a mapping"]),
    ],
)  # fmt: skip
def test_parse_spec_refuses(data: Any, fragments: list[str]) -> None:
    message = error(parse_spec, data, "job.yaml")
    assert all(f in message for f in fragments), message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"run": "x", "resources": {"acelerators": 1}},
         "job.yaml: resources.acelerators: unknown key; did you mean 'accelerators'?"),
        ({"rn": "x"}, "job.yaml: rn: unknown key; did you mean 'run'?"),
        ({"Run": "x"}, "job.yaml: Run: unknown key; did you mean 'run'?"),
        ({"run": "x", "priorty": 1}, "job.yaml: priorty: unknown key; did you mean 'priority'?"),
        ({"run": "x", "gpus": 2}, "job.yaml: gpus: unknown key; did you mean 'resources.accelerators'?"),
        ({"run": "x", "file_mount": {}}, "job.yaml: file_mount: unknown key; did you mean 'file_mounts'?"),
        ({"run": "x", "resources": {"gpu": 1}},
         "job.yaml: resources.gpu: unknown key; did you mean 'accelerators'?"),
    ],
)  # fmt: skip
def test_unknown_key_suggests(data: dict[str, Any], message: str) -> None:
    assert error(parse_spec, data, "job.yaml") == message


def test_unknown_key_without_a_close_match_lists_the_keys() -> None:
    message = error(parse_spec, {"run": "x", "resources": {"zzzz": 1}}, "job.yaml")
    assert message == (
        "job.yaml: resources.zzzz: unknown key; accepted keys here: accelerators, any_of, cpus, gpus, job_recovery, memory, ordered, spot_recovery, use_spot"
    )


def test_skypilot_keys_give_one_warning() -> None:
    data = {"run": "x", "file_mounts": {}, "volumes": {}, "resources": {"ports": 8080, "image_id": "x"}}
    assert parse_spec(data, "job.yaml")[1] == [
        "job.yaml: ignoring SkyPilot keys hybridctl does not act on: "
        "volumes (not mounted: the job sees its node's own filesystem); "
        "resources.ports (not opened: the job's ports are reachable as far as its node's network allows); "
        "resources.image_id (no machine image is booted; only a docker:IMAGE is used (the job runs in it under podman))"
    ]
    assert parse_spec(data)[1][0].startswith("ignoring SkyPilot keys")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\nrun: echo\n  bad: indent\n", "job.yaml: line 3, column 6: YAML syntax error: "),
        ("run: [echo\n", "job.yaml: line 2, column 1: YAML syntax error: "),
        ("run: a\nname: b\nrun: c\n", "job.yaml: line 3, column 1: YAML error: duplicate key 'run' (first on line 1)"),
        ("run: !!python/object:os.system x\n", "job.yaml: line 1, column 6: YAML error: could not determine"),
        ("", "job.yaml: the file is empty; expected at least 'run: COMMAND'"),
        ("# only a comment\n", "job.yaml: the file is empty"),
        ("- run: x\n", "job.yaml: the top level is a list, not a mapping"),
        ("just text\n", "job.yaml: the top level is a str, not a mapping"),
        ("run: \x07\n", "job.yaml: YAML error: unacceptable character"),
    ],
)  # fmt: skip
def test_load_yaml_errors_name_the_line(text: str, expected: str) -> None:
    assert error(load_yaml, text, "job.yaml").startswith(expected)


def test_load_yaml_keeps_merge_keys() -> None:
    text = "base: &b {cpus: 2}\nresources:\n  <<: *b\n  cpus: 4\n"
    assert load_yaml(text, "job.yaml")["resources"] == {"cpus": 4}


def test_load_yaml_avoids_yaml_1_1_surprises() -> None:
    # Unquoted 1:30:00 is 5400 in YAML 1.1 (base 60), and env values 0123 / 1.10 / on would
    # become 83 / 1.1 / True; the spec keeps what the user wrote.
    text = "run: x\ntime_limit: 1:30:00\nenvs: {A: 0123, B: 1.10, C: on, D: 7, E: null}\n"
    data = load_yaml(text, "job.yaml")
    assert data["envs"] == {"A": "0123", "B": "1.10", "C": "on", "D": "7", "E": None}
    data["envs"].pop("E")
    spec, _ = parse_spec(data, "job.yaml")
    assert spec.time_limit == 5400 and spec.envs["B"] == "1.10"
    assert load_yaml("n: 5\nf: 1.5\nb: yes\n", "job.yaml") == {"n": 5, "f": 1.5, "b": True}


def test_spec_error_long_values_are_shortened() -> None:
    message = str(SpecError("run", "x" * 500, "expected a string"))
    assert len(message) < 120 and "..." in message


def _run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def test_importing_spec_does_not_import_yaml() -> None:
    out = _run_python(
        """
        import sys
        import hybridctl.core.spec as spec
        print('yaml' in sys.modules)
        spec.parse_spec(spec.apply_flags({}, gpus='2', run=['echo', 'hi']))
        print('yaml' in sys.modules)
        spec.load_yaml('run: echo hi', 'job.yaml')
        print('yaml' in sys.modules)
        """
    )
    assert out.split() == ["False", "False", "True"]


def test_skypilot_job_recovery_maps_to_max_restarts_and_exit_codes() -> None:
    data = {"run": "x", "resources": {"job_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": 3,
                                                        "recover_on_exit_codes": [33, 34]}}}
    spec, warnings = parse_spec(data, "task.yaml")
    assert (spec.max_restarts, spec.recover_on_exit_codes) == (3, (33, 34))
    assert warnings == ["task.yaml: ignoring SkyPilot keys hybridctl does not act on: resources.job_recovery.strategy"
                        " (recovery is hybridctl's own: preemptions always requeue)"]
    assert spec_from_dict(spec.to_dict()) == spec
    own, _ = parse_spec({**data, "max_restarts": 1, "recover_on_exit_codes": []})  # hybridctl's keys win
    assert (own.max_restarts, own.recover_on_exit_codes) == (1, ())


HOMES = {"": "/home/me", "bob": "/srv/bob"}


@pytest.mark.parametrize(
    ("given", "base_dir", "expected"),
    [
        ({"workdir": "~/src/resnet"}, "/jobs", {"workdir": "/home/me/src/resnet"}),  # the README's
        ({"workdir": "~"}, None, {"workdir": "/home/me"}),
        ({"workdir": "~/"}, None, {"workdir": "/home/me"}),
        ({"workdir": "~bob/data/../x"}, None, {"workdir": "/srv/bob/x"}),
        ({"workdir": "src", "checkpoint_dir": "./ckpt"}, "/jobs/a",
         {"workdir": "/jobs/a/src", "checkpoint_dir": "/jobs/a/ckpt"}),
        ({"checkpoint_dir": "../ckpt"}, "/jobs/a", {"checkpoint_dir": "/jobs/ckpt"}),
        ({"workdir": "/abs/./kept"}, None, {"workdir": "/abs/./kept"}),  # absolute: as written
        ({"workdir": 5, "checkpoint_dir": ""}, None, {"workdir": 5, "checkpoint_dir": ""}),  # parse_spec's to refuse
        ({"run": "~/x.sh", "setup": "cd rel"}, None, {"run": "~/x.sh", "setup": "cd rel"}),  # scripts, not paths
    ],
)
def test_paths_are_resolved_as_the_submitter_means_them(given: dict, base_dir: str | None, expected: dict) -> None:
    assert resolve_paths(given, base_dir=base_dir, home=HOMES.get, source="job.yaml") == expected


@pytest.mark.parametrize(
    ("given", "base_dir", "flags", "message"),
    [
        ({"workdir": "~carol/x"}, "/jobs", False,
         "job.yaml: workdir: '~carol/x' cannot be resolved: user 'carol' has no home directory on this host; "
         "give an absolute path"),
        ({"checkpoint_dir": "ckpt"}, None, False,
         "job.yaml: checkpoint_dir: 'ckpt' is a relative path, and no directory came with it to resolve it "
         "against; give an absolute path, or one starting with ~"),
        ({"workdir": "w"}, "relative/base", True, "--workdir: 'w' is a relative path"),
    ],
)
def test_a_path_that_cannot_be_resolved_names_the_field(given: dict, base_dir: str | None, flags: bool,
                                                        message: str) -> None:
    with pytest.raises(SpecError) as err:
        resolve_paths(given, base_dir=base_dir, home=HOMES.get, source="job.yaml", flags=flags)
    assert err.value.message.startswith(message)


def test_a_submitter_without_a_home_gets_an_error_not_a_guess() -> None:
    with pytest.raises(SpecError, match="'~/x' cannot be resolved: you have no home directory"):
        resolve_paths({"workdir": "~/x"}, base_dir="/j", home=lambda name: None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"name: caf\xe9\nrun: x\n", "job.yaml: not UTF-8 text: byte 0xe9 at offset 9 (line 1); save it as UTF-8"),
        (b"run: echo hi\n# \xff\n", "job.yaml: not UTF-8 text: byte 0xff at offset 15 (line 2); save it as UTF-8"),
        ("run: x\n".encode("utf-16"), "byte 0xff at offset 0 (line 1); it looks like UTF-16; save it as UTF-8"),
        (b"\xef\xbb\xbfrun: \xc3(\n", "byte 0xc3 at offset 8 (line 1)"),  # the offset counts the BOM
    ],
)
def test_a_job_file_that_is_not_utf8_names_the_first_bad_byte(raw: bytes, message: str) -> None:
    with pytest.raises(NotText) as err:
        decode(raw, "job.yaml")
    assert err.value.exit_code == 2
    assert message in err.value.message


def test_utf8_text_decodes_and_a_byte_order_mark_is_dropped() -> None:
    assert decode("name: café\n".encode(), "f") == "name: café\n"
    assert decode(b"\xef\xbb\xbfrun: x\n", "f") == "run: x\n"
