"""SkyPilot task forms hybridctl reads: accelerator candidates (sets, lists, any_of, ordered, the
`gpus` alias), pipelines and job groups, keys accepted with a warning, the default market, and a
git workdir cloned on the submitting side; and the scheduler's choice among candidates."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hybridctl.core.errors import SpecError
from hybridctl.core.fit import candidates, never_fits
from hybridctl.core.model import ClusterView, GpuSlot, NodeView, PendingTask, Policy, Resources, spec_from_dict
from hybridctl.core.schedule import plan
from hybridctl.core.spec import apply_flags, load_tasks, load_yaml, parse_spec


def res_of(text: str, **kw: Any) -> Resources:
    return parse_spec(load_yaml(text, "t.yaml"), "t.yaml", **kw)[0].resources


def cands(r: Resources) -> list[tuple[str | None, int]]:
    return [(c.gpu_type, c.gpus) for c in candidates(r)]


@pytest.mark.parametrize(
    ("accel", "expected", "ordered"),
    [
        ("{L4:8, A10g:8}", [("L4", 8), ("A10g", 8)], False),
        ("[A100:8, H100:8]", [("A100", 8), ("H100", 8)], True),
        ("{A100-80GB:8}", [("A100-80GB", 8)], False),
        ("{L4, A10G}", [("L4", 1), ("A10G", 1)], False),
        ("{A100: 2, H100: 1}", [("A100", 2), ("H100", 1)], False),
        ("\"{'V100:1', 'T4:4'}\"", [("V100", 1), ("T4", 4)], False),  # the set written as one string
        ("\"['V100:1', 'T4:4']\"", [("V100", 1), ("T4", 4)], True),
        ("A100:1.0", [("A100", 1)], False),
        ("{A100: 2.0}", [("A100", 2)], False),
        ("A100", [("A100", 1)], False),
        ("4", [(None, 4)], False),
    ],
)
def test_accelerator_forms(accel: str, expected: list[tuple[str | None, int]], ordered: bool) -> None:
    r = res_of(f"run: x\nresources:\n  accelerators: {accel}\n")
    assert cands(r) == expected
    assert r.ordered == ordered
    assert (r.gpu_type, r.gpus) == expected[0]
    assert r.alternatives == (tuple(expected) if len(expected) > 1 else ())


def test_gpus_is_an_alias_of_accelerators() -> None:
    assert cands(res_of("run: x\nresources:\n  gpus: H100:8\n")) == [("H100", 8)]
    with pytest.raises(SpecError, match="give accelerators or gpus"):
        res_of("run: x\nresources:\n  gpus: H100:8\n  accelerators: H100:8\n")


def test_a_gpu_request_only_inside_ordered_is_not_a_zero_gpu_job() -> None:
    text = "run: x\nresources:\n  ordered:\n    - infra: aws\n      accelerators: A10g\n    - accelerators: L4:2\n"
    r = res_of(text)
    assert cands(r) == [("A10g", 1), ("L4", 2)] and r.ordered


def test_any_of_entries_take_the_top_level_accelerators_and_their_own() -> None:
    text = ("run: x\nresources:\n  accelerators: A100:8\n  any_of:\n    - infra: aws\n"
            "    - accelerators: {H100:8, H200:8}\n")
    r = res_of(text)
    assert cands(r) == [("A100", 8), ("H100", 8), ("H200", 8)] and not r.ordered


def test_any_of_use_spot_allows_spot_when_any_entry_does() -> None:
    text = "run: x\nresources:\n  accelerators: A100:1\n  any_of:\n    - use_spot: true\n    - use_spot: false\n"
    assert res_of(text, default_use_spot=False).use_spot is True
    assert res_of("run: x\n", default_use_spot=False).use_spot is False
    assert res_of("run: x\n", default_use_spot=True).use_spot is True
    assert res_of("run: x\nresources:\n  use_spot: false\n", default_use_spot=True).use_spot is False


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ("accelerators: T4:0.5", "resources.accelerators: fractional GPUs (T4:0.5) are not supported"),
        ("accelerators: {T4: 0.5}", "fractional GPUs (T4: 0.5) are not supported"),
        ("accelerators: tpu-v2-8", "resources.accelerators: TPUs (tpu-v2-8) are not supported"),
        ("any_of:\n    - cpus: 4\n    - cpus: 8", "resources.any_of[0].cpus: a cpus per candidate in resources.any_of"),
        ("any_of: []\n", "resources.any_of: [] is not valid"),
        ("any_of:\n    - accelerators: A100\n  ordered:\n    - accelerators: H100", "give any_of or ordered"),
        ("ordered:\n    - acelerators: A100", "resources.ordered[0].acelerators: unknown key; did you mean 'accelerators'?"),
        ("accelerators: '{A100:8'", "resources.accelerators: '{A100:8' is not valid"),
    ],
)
def test_refusals_name_the_feature_or_the_field(resources: str, message: str) -> None:
    with pytest.raises(SpecError, match=None) as err:
        res_of(f"run: x\nresources:\n  {resources}\n")
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_candidates_survive_serialisation_and_show_in_describe() -> None:
    spec, _ = parse_spec({"run": "x", "resources": {"accelerators": ["A100:8", "H100:8"]}})
    assert spec_from_dict(spec.to_dict()) == spec
    assert spec.resources.describe().startswith("[A100:8, H100:8] GPU")
    anyof, _ = parse_spec({"run": "x", "resources": {"accelerators": {"L4:8": None, "A10g:8": None}}})
    assert anyof.resources.describe().startswith("{L4:8, A10g:8} GPU")
    plain, _ = parse_spec({"run": "x", "resources": {"accelerators": "A100:2"}})
    assert "alternatives" not in plain.to_dict()["resources"]  # old readers see the same dict


def test_gpus_flag_with_file_candidates() -> None:
    data = {"run": "x", "resources": {"accelerators": "{L4:8, A10g:8}"}}
    spec, _ = parse_spec(apply_flags(data, gpus="2"))
    assert cands(spec.resources) == [("L4", 2), ("A10g", 2)]
    spec, _ = parse_spec(apply_flags(data, gpu_type="H100"))
    assert cands(spec.resources) == [("H100", 8)]


def test_skypilot_keys_are_accepted_with_what_hybridctl_does() -> None:
    data = {"run": "x", "volume_mounts": [], "service": {"readiness_probe": "/"}, "_metadata": {"a": 1},
            "resources": {"image_id": "ami-0123456789abcdef0", "spot_recovery": "FAILOVER", "_requires_fuse": True}}
    spec, warnings = parse_spec(data, "t.yaml")
    (line,) = warnings
    assert "volume_mounts (not mounted" in line and "`sky serve up`" in line
    assert "resources.image_id (no machine image is booted" in line
    assert "resources.spot_recovery" in line and "_metadata" in line


def test_envs_and_secrets_null_must_come_from_the_command_line() -> None:
    data = {"run": "x", "envs": {"MODEL": None}, "secrets": {"HF_TOKEN": None}}
    with pytest.raises(SpecError, match="envs.MODEL: is null"):
        parse_spec(data)
    spec, _ = parse_spec(apply_flags(data, envs=["MODEL=m"], secrets=["HF_TOKEN=t"]))
    assert spec.envs == {"MODEL": "m"} and spec.secrets == {"HF_TOKEN": "t"}


def test_a_git_workdir_reaching_the_controller_is_refused_with_the_way() -> None:
    with pytest.raises(SpecError, match=r"a git workdir \(\{url, ref\}\) must be cloned by the submitting client"):
        parse_spec({"run": "x", "workdir": {"url": "https://example.org/r.git", "ref": "main"}})


# ---- multi-document files -------------------------------------------------------------------------

PIPELINE = """name: pipe
---
name: train
run: python train.py
---
run: python eval.py
"""


def test_a_pipeline_is_its_tasks_in_order() -> None:
    tasks = load_tasks(PIPELINE, "p.yaml")
    assert [t["name"] for t in tasks] == ["train", "pipe"]
    assert [t["run"] for t in tasks] == ["python train.py", "python eval.py"]
    assert load_tasks("name: p\nexecution: serial\n---\nrun: a\n---\nrun: b\n", "p")[1]["run"] == "b"
    assert len(load_tasks("run: a\n---\nrun: b\n", "p")) == 2  # no header: every document is a task
    assert len(load_tasks("run: a\n---\n", "p")) == 1  # an empty trailing document


def test_load_yaml_refuses_a_pipeline_by_name_not_as_a_syntax_error() -> None:
    with pytest.raises(SpecError, match="is a SkyPilot pipeline of 2 tasks") as err:
        load_yaml(PIPELINE, "p.yaml")
    assert "YAML" not in str(err.value).split(";")[0].replace("YAML documents", "")


@pytest.mark.parametrize(
    "text",
    ["name: g\nexecution: parallel\n---\nrun: a\n---\nrun: b\n",
     "name: g\nprimary_tasks: [a]\nexecution: parallel\n---\nname: a\nrun: a\n---\nrun: b\n"],
)
def test_job_groups_are_refused_by_name(text: str) -> None:
    with pytest.raises(SpecError, match=r"SkyPilot job groups .* are not supported") as err:
        load_tasks(text, "g.yaml")
    assert err.value.exit_code == 2


# ---- the scheduler and submit-time checks -----------------------------------------------------------


def gnode(name: str, model: str, n: int = 8, busy: int = 0) -> NodeView:
    slots = tuple(GpuSlot(i, model, free=i >= busy) for i in range(n))
    return NodeView(name, slots, 64, 64, 512 * 1024, 512 * 1024)


def ptask(job: int, r: Resources) -> PendingTask:
    return PendingTask(job, 0, "alice", "lab", 0, float(job), r)


def test_plan_takes_the_first_candidate_that_fits_and_records_it() -> None:
    ordered = Resources(gpus=8, gpu_type="A100", alternatives=(("A100", 8), ("H100", 8)), ordered=True)
    view = ClusterView(nodes=(gnode("a", "NVIDIA A100-SXM4-80GB", busy=4), gnode("h", "NVIDIA H100")))
    d = plan(view, [ptask(1, ordered)], Policy())
    (p,) = d.placements
    assert (p.node, p.gpu_type, len(p.gpus)) == ("h", "H100", 8)
    free = ClusterView(nodes=(gnode("a", "NVIDIA A100-SXM4-80GB"), gnode("h", "NVIDIA H100")))
    (p,) = plan(free, [ptask(1, ordered)], Policy()).placements
    assert (p.node, p.gpu_type) == ("a", "A100")  # in order of preference
    # A single-type job records nothing: its type is its spec's.
    (p,) = plan(free, [ptask(1, Resources(gpus=2, gpu_type="H100"))], Policy()).placements
    assert p.gpu_type is None


def test_plan_with_no_candidate_free_waits_with_the_first_ones_reason() -> None:
    anyof = Resources(gpus=8, gpu_type="L4", alternatives=(("L4", 8), ("A10G", 8)))
    view = ClusterView(nodes=(gnode("l", "NVIDIA L4", busy=1), gnode("g", "NVIDIA A10G", busy=1)))
    d = plan(view, [ptask(1, anyof)], Policy())
    assert not d.placements and "8 free L4 GPUs" in d.waiting[0].reason


def test_never_fits_accepts_a_job_if_any_candidate_fits() -> None:
    nodes = [gnode("h", "NVIDIA H100")]
    r = Resources(gpus=8, gpu_type="A100", alternatives=(("A100", 8), ("H100", 8)), ordered=True)
    assert never_fits(nodes, r, 1) is None
    nope = Resources(gpus=8, gpu_type="A100", alternatives=(("A100", 8), ("L4", 8)))
    msg = never_fits(nodes, nope, 1)
    assert msg is not None and msg.startswith("none of the GPU candidates {A100:8, L4:8} fits; no node can ever hold")


# ---- git workdir ------------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> tuple[str, str, str]:
    """A local repository with two commits on main and a tag on the first: (url, first, second)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    src = tmp_path / "src"
    src.mkdir()

    def git(*argv: str) -> str:
        env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@x", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
        return subprocess.run(["git", "-C", str(src), *argv], check=True, capture_output=True, text=True,
                              env=env).stdout.strip()

    git("init", "-q", "-b", "main")
    (src / "train.py").write_text("print('v1')\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "v1")
    first = git("rev-parse", "HEAD")
    git("tag", "v1")
    git("checkout", "-q", "-b", "dev")
    (src / "train.py").write_text("print('v2')\n")
    git("commit", "-q", "-am", "v2")
    second = git("rev-parse", "HEAD")
    git("checkout", "-q", "main")
    return f"file://{src}", first, second


def test_git_workdir_is_cloned_at_its_ref_into_the_cache(repo: tuple[str, str, str], tmp_path: Path) -> None:
    from hybridctl.gitworkdir import clone, prepare

    url, first, second = repo
    cache = tmp_path / "cache"
    at_tag = clone(url, "v1", cache=cache)
    assert Path(at_tag).name == first and (Path(at_tag) / "train.py").read_text() == "print('v1')\n"
    at_branch = clone(url, "dev", cache=cache)  # a branch that is not the default one
    assert (Path(at_branch) / "train.py").read_text() == "print('v2')\n"
    assert clone(url, second[:10], cache=cache) == at_branch  # the same commit: the same clone
    assert Path(clone(url, None, cache=cache)).name == first  # no ref: the default branch
    leftovers = [p.name for p in Path(at_tag).parent.iterdir() if p.name.startswith(".clone-")]
    assert leftovers == []
    with pytest.raises(SpecError, match=r"workdir.ref: 'nope' is not in the repository"):
        clone(url, "nope", cache=cache)
    with pytest.raises(SpecError, match="workdir.url: .* cannot be cloned"):
        clone(f"file://{tmp_path}/missing", "main", cache=cache)
    assert prepare("run: x\n", "t.yaml") is None


def test_prepare_reads_the_file_and_refuses_options_as_urls(
    repo: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybridctl.gitworkdir import prepare

    url, first, _ = repo
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = prepare(f"run: python train.py\nworkdir:\n  url: {url}\n  ref: v1\n", "t.yaml")
    assert path == str(tmp_path / "xdg" / "hybridctl" / "git" / Path(path).parent.name / first)
    with pytest.raises(SpecError, match="workdir.url: '--upload-pack=x' is not valid"):
        prepare("run: x\nworkdir:\n  url: --upload-pack=x\n", "t.yaml")
    with pytest.raises(SpecError, match="workdir.ref: '-x' is not valid"):
        prepare(f"run: x\nworkdir:\n  url: {url}\n  ref: -x\n", "t.yaml")


@pytest.mark.parametrize(
    ("data", "message"),
    [({"run": "x", "secrets": ["hf"]}, "secrets: SkyPilot managed secrets (a list of secret names) are not supported"),
     ({"run": "x", "managed_secrets": ["hf"]}, "managed_secrets: SkyPilot managed secrets"),
     ({"run": "x", "pool": {"workers": 2}}, "pool: SkyPilot pools"),
     ({"setup": "pip install x", "resources": {"cpus": 2}}, "run: is missing: a SkyPilot task without run:")],
)
def test_skypilot_features_hybridctl_does_not_do_are_named(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert str(err.value).startswith(message)
    assert "unknown key" not in str(err.value)


def test_a_files_relative_workdir_is_relative_to_where_submit_was_typed() -> None:
    from hybridctl.core.spec import resolve_paths

    homes = {"": "/home/me"}.get
    data = {"workdir": "src", "checkpoint_dir": "ckpt"}
    out = resolve_paths(data, base_dir="/jobs", cwd="/home/me/proj", home=homes, source="t.yaml")
    assert out == {"workdir": "/home/me/proj/src", "checkpoint_dir": "/jobs/ckpt"}
    assert resolve_paths({"workdir": "~/x"}, base_dir="/jobs", cwd="/w", home=homes)["workdir"] == "/home/me/x"
    assert resolve_paths({"workdir": "."}, base_dir="/jobs", cwd="/w", home=homes)["workdir"] == "/w"
    assert resolve_paths({"workdir": "src"}, base_dir="/jobs", home=homes)["workdir"] == "/jobs/src"  # no cwd sent


def _schema() -> dict[str, Any]:
    import json

    return json.loads((Path(__file__).resolve().parents[1] / "data" / "skypilot" / "schema_keys.json").read_text())


SAMPLES: dict[str, Any] = {
    "name": "n", "run": "x", "setup": "s", "event_callback": "echo", "workdir": "/w", "num_nodes": 2,
    "api_server_access": True, "volume_mounts": [], "managed_secrets": ["s"], "envs": {"A": "1"},
    "secrets": {"T": "v"}, "accelerators": "A100:1", "gpus": "A100:1", "cpus": 2, "memory": "8G",
    "use_spot": True, "any_of": [{"infra": "aws"}], "ordered": [{"infra": "aws"}], "ports": 8080,
    "job_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": 1, "recover_on_exit_codes": [3]},
}


@pytest.mark.parametrize("key", _schema()["task"])
def test_no_task_key_of_skypilots_schema_is_an_unknown_key(key: str) -> None:
    data = {"run": "x", key: SAMPLES.get(key, {})}
    try:
        parse_spec(data, "t.yaml")
    except SpecError as exc:
        assert "unknown key" not in str(exc) and "not supported" in str(exc), exc


@pytest.mark.parametrize("key", _schema()["resources"])
def test_no_resources_key_of_skypilots_schema_is_an_unknown_key(key: str) -> None:
    data = {"run": "x", "resources": {key: SAMPLES.get(key, "x")}}
    spec, warnings = parse_spec(data, "t.yaml")  # accepted: acted on, or warned about
    acted_on = {"accelerators", "gpus", "cpus", "memory", "use_spot", "any_of", "ordered", "job_recovery"}
    if key in acted_on:
        assert not any(f"resources.{key} " in w for w in warnings)
    else:
        assert any(f"resources.{key} (" in w for w in warnings), warnings
