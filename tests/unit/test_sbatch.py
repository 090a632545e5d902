"""Slurm batch scripts read into hybridctl specs (core/sbatch.py), over a corpus of real public
scripts (tests/data/sbatch/INDEX.md), and the SLURM_* variables such a job gets (core/jobenv.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridctl.core.errors import SpecError
from hybridctl.core.jobenv import RankPlace, slurm_env
from hybridctl.core.retry import Cause, Charge, decide
from hybridctl.core.sbatch import SlurmSite, export_env, is_sbatch, parse_sbatch, parse_signal, parse_time
from hybridctl.core.spec import load_yaml, parse_spec

CORPUS = Path(__file__).resolve().parents[1] / "data" / "sbatch"
ENV = {"PATH": "/opt/conda/bin:/usr/bin", "PWD": "/home/ana/proj", "SSH_AUTH_SOCK": "/tmp/x", "DISPLAY": ":0",
       "SHLVL": "2", "HF_TOKEN": "hf_abc", "WANDB_PROJECT": "p", "SLURM_JOB_ID": "7", "HOME": "/home/ana"}


def read(name: str, **kw: object) -> tuple[object, list[str], dict[str, str]]:
    text = (CORPUS / name).read_text()
    r = parse_sbatch(text, source=name, submit_dir="/home/ana/proj", environ=ENV, **kw)  # type: ignore[arg-type]
    spec, _ = parse_spec(r.data, name)
    return spec, r.warnings, r.directives


# name -> (nodes, gpus per node, gpu type, cpus per node, memory MiB, time limit s, tasks per node)
ACCEPTED = {
    "vit_clouds_torchrun.sbatch": (1, 2, None, 1, 0, 1800, 1),
    "pytorch_examples_multinode.sbatch": (4, 1, None, 4, 0, None, 1),
    "reactome_array_requeue.sbatch": (1, 1, "A4000", 4, 64 * 1024, 3 * 3600, 1),
    "m3_project_chdir.sbatch": (1, 1, None, 4, 16 * 1024, None, 4),
    "nugraph_train.sbatch": (1, 1, None, 8, 8 * 64 * 1024, 12 * 3600, 1),
    "muss_single_gpu.sbatch": (1, 1, None, 1, 1000, 600, 1),
    "ml_bees_ddp_signal.sbatch": (1, 2, None, 32, 220 * 1024, 48 * 3600, 2),
    "masterarbeit_lightning.sbatch": (1, 0, None, 10, 0, 24 * 3600, 1),
    "axlearn_exclusive.sbatch": (1, 0, None, 1, 0, None, 1),
    "pita_lightning_requeue.sbatch": (1, 4, "a100l", 24, 384 * 1024, 3 * 3600, 4),
    "diffcount_mem_per_gpu.sbatch": (1, 1, None, 16, 32 * 1024, 24 * 3600, 1),
}
REFUSED = {
    "ct_nvae_signal_requeue.sbatch": "--constraint",
    "ml_bees_exclude.sbatch": "--exclude",
    "ubinet_constraint.sbatch": "--constraint",
    "ndt3_multinode_cluster.sbatch": "--clusters",
    "siamese_ged_array.sbatch": "--gres",  # GPU type '1080ti' is not a GPU model name hybridctl accepts
}


def test_the_corpus_is_covered_and_every_file_is_a_batch_script() -> None:
    files = {p.name for p in CORPUS.glob("*.sbatch")}
    assert len(files) >= 10
    assert files == set(ACCEPTED) | set(REFUSED)
    index = (CORPUS / "INDEX.md").read_text()
    for name in files:
        assert is_sbatch((CORPUS / name).read_text()), name
        assert f"| {name} |" in index, f"{name} has no source line in INDEX.md"


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_each_accepted_script_maps_to_the_resources_it_asks_for(name: str) -> None:
    spec, _, _ = read(name)
    nodes, gpus, gpu_type, cpus, mem, limit, per_node = ACCEPTED[name]
    assert spec.num_nodes == nodes  # type: ignore[attr-defined]
    r = spec.resources  # type: ignore[attr-defined]
    assert (r.gpus, r.gpu_type, r.cpus, r.memory_mb) == (gpus, gpu_type, cpus, mem)
    assert spec.time_limit == limit  # type: ignore[attr-defined]
    assert spec.slurm["ntasks_per_node"] == per_node  # type: ignore[attr-defined]
    assert spec.workdir == ("/home/grupo06/" if name == "m3_project_chdir.sbatch" else "/home/ana/proj")  # type: ignore[attr-defined]
    assert spec.run.endswith((CORPUS / name).read_text())  # type: ignore[attr-defined]  # the script, unchanged


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_each_refused_script_names_the_directive(name: str) -> None:
    with pytest.raises(SpecError) as exc:
        read(name)
    assert REFUSED[name] in exc.value.message
    assert name in exc.value.message


def test_names_arrays_signals_and_requeue_come_through() -> None:
    spec, _, _ = read("reactome_array_requeue.sbatch")
    assert (spec.array.first, spec.array.last) == (1, 64)  # type: ignore[attr-defined]
    assert spec.slurm["requeue"] is True  # type: ignore[attr-defined]
    spec, warnings, _ = read("pita_lightning_requeue.sbatch")
    assert spec.name == "h100_rdem"  # type: ignore[attr-defined]
    assert dict(spec.slurm).items() >= {"signal": "USR1", "signal_before": 120, "signal_batch": False, "requeue": True}.items()  # type: ignore[attr-defined]
    assert any("--open-mode" in w for w in warnings) and any("short-unkillable" in w for w in warnings)
    spec, _, _ = read("masterarbeit_lightning.sbatch")
    assert spec.name == "ZNN" and "requeue" not in spec.slurm  # type: ignore[attr-defined]


def test_the_submitters_environment_is_exported_less_what_belongs_to_that_shell() -> None:
    spec, _, _ = read("muss_single_gpu.sbatch")
    assert spec.envs == {"PATH": "/opt/conda/bin:/usr/bin", "WANDB_PROJECT": "p"}  # type: ignore[attr-defined]
    assert spec.secrets == {"HF_TOKEN": "hf_abc"}  # type: ignore[attr-defined]  # never shown
    assert export_env("NONE", ENV) == ({}, {})
    assert export_env("NONE,A=1", ENV) == ({"A": "1"}, {})
    assert export_env("WANDB_PROJECT,X=2", ENV) == ({"WANDB_PROJECT": "p", "X": "2"}, {})
    assert export_env("ALL,PWD=/x", ENV)[0]["PWD"] == "/x"  # named explicitly: kept


def test_partition_and_qos_are_mapped_through_config() -> None:
    site = SlurmSite(partitions={"general": "A100"}, qos={"normal": 50})
    spec, warnings, _ = read("nugraph_train.sbatch", site=site)
    assert spec.resources.gpu_type == "A100" and spec.priority == 50  # type: ignore[attr-defined]
    assert not any("partition" in w or "qos" in w for w in warnings)


@pytest.mark.parametrize("value, seconds", [
    ("30", 1800), ("00:30:00", 1800), ("0-3", 3 * 3600), ("1-00:00:00", 86400), ("6-00:00:00", 6 * 86400),
    ("3:00:00", 3 * 3600), ("12:0:0", 12 * 3600), ("1440", 86400), ("5:30", 330), ("2-12:30", 2 * 86400 + 12 * 3600 + 1800),
    ("UNLIMITED", None),
])  # fmt: skip
def test_slurm_time_formats(value: str, seconds: int | None) -> None:
    assert parse_time(value) == seconds


def test_a_bad_time_names_the_directive() -> None:
    with pytest.raises(SpecError, match="--time"):
        parse_time("soon")


@pytest.mark.parametrize("value, parsed", [
    ("USR1@90", ("USR1", 90, False)), ("SIGUSR1@90", ("USR1", 90, False)), ("B:USR1@60", ("USR1", 60, True)),
    ("B:SIGTERM@300", ("TERM", 300, True)), ("USR2", ("USR2", 60, False)), ("10@30", ("USR1", 30, False)),
])  # fmt: skip
def test_signal_forms(value: str, parsed: tuple[str, int, bool]) -> None:
    assert parse_signal(value) == parsed


def script(*lines: str, body: str = "echo hi\n") -> str:
    return "#!/bin/bash\n" + "".join(f"#SBATCH {line}\n" for line in lines) + body


def parse(text: str) -> object:
    r = parse_sbatch(text, source="job.sh", submit_dir="/d", environ={})
    return parse_spec(r.data, "job.sh")[0]


@pytest.mark.parametrize("lines, nodes, gpus, gpu_type, cpus, mem", [
    (["--gres=gpu:a100:2", "-c 8", "--mem=64G"], 1, 2, "a100", 8, 65536),
    (["--gpus-per-node=h100:4", "--ntasks-per-node=4", "--cpus-per-task=6", "--mem-per-cpu=2G"], 1, 4, "h100", 24, 24 * 2048),
    (["-N 2", "--gpus=8", "--mem-per-gpu=10G"], 2, 4, None, 1, 40960),
    (["--nodes=2", "--ntasks=8", "--gpus-per-task=1", "--cpus-per-gpu=4"], 2, 4, None, 16, 0),
    (["--mem=1000"], 1, 0, None, 1, 1000),
    (["--gres=gpu"], 1, 1, None, 1, 0),
])  # fmt: skip
def test_resource_forms(lines: list[str], nodes: int, gpus: int, gpu_type: str | None, cpus: float, mem: int) -> None:
    spec = parse(script(*lines))
    r = spec.resources  # type: ignore[attr-defined]
    assert (spec.num_nodes, r.gpus, r.gpu_type, r.cpus, r.memory_mb) == (nodes, gpus, gpu_type, cpus, mem)  # type: ignore[attr-defined]


@pytest.mark.parametrize("line, named", [
    ("--array=1,,5", "--array"), ("--dependency=afterany:12?afterok:13", "'?'"), ("--dependency=aftercorr:12", "aftercorr"),
    ("--dependency=after:12+5", "+MINUTES"),
    ("--nodelist=gpu01", "--nodelist"), ("-w gpu01", "--nodelist"), ("--gres=fpga:1", "--gres"),
    ("--ntasks=3 --nodes=2", "--ntasks"), ("--reservation=r1", "--reservation"), ("--signal=R:USR1@10", "--signal"),
    ("--made-up=1", "--made-up"),
])  # fmt: skip
def test_what_hybridctl_cannot_do_is_refused_by_name(line: str, named: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse(script(line))
    assert named in exc.value.message and "job.sh" in exc.value.message


def test_dependency_afterok_and_array_throttle() -> None:
    spec = parse(script("--dependency=afterok:12:13", "--array=0-9%2"))
    assert spec.depends_on == (12, 13)  # type: ignore[attr-defined]
    assert spec.array.throttle == 2  # type: ignore[attr-defined]


def test_directives_after_the_first_command_are_not_read_as_slurm_does() -> None:
    text = "#!/bin/bash\n#SBATCH --time=10\necho start\n#SBATCH --gres=gpu:8\n"
    spec = parse(text)
    assert spec.resources.gpus == 0 and spec.time_limit == 600  # type: ignore[attr-defined]
    assert not is_sbatch("echo hi\n#SBATCH -t 1\n") and not is_sbatch("#!/bin/bash\necho hi\n")


def test_output_patterns_are_expanded_inside_the_job_and_script_arguments_are_set() -> None:
    r = parse_sbatch(script("-o logs/%x_%A_%a.out", "-e err-%j.%u.txt"), source="job.sh", submit_dir="/d",
                     environ={}, args=["a b", "c"])
    run = r.data["run"]
    assert 'tee -a "logs/${SLURM_JOB_NAME}_${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out"' in run
    assert 'tee -a "err-${SLURM_JOB_ID}.${USER}.txt" >&2' in run
    assert "set -- 'a b' c\n" in run


def test_the_spec_round_trips_through_yaml_as_dry_run_prints_it() -> None:
    import yaml

    r = parse_sbatch((CORPUS / "pita_lightning_requeue.sbatch").read_text(), source="x", submit_dir="/d", environ={})
    again = load_yaml(yaml.safe_dump(r.data), "printed.yaml")
    assert parse_spec(again, "printed.yaml")[0] == parse_spec(r.data, "x")[0]


def test_a_hand_written_slurm_section_is_checked() -> None:
    with pytest.raises(SpecError, match="slurm.signal"):
        parse_spec({"run": "x", "slurm": {"signal": "NOPE"}})
    with pytest.raises(SpecError, match="slurm.bogus"):
        parse_spec({"run": "x", "slurm": {"bogus": 1}})


def place(rank: int = 0, ips: tuple[str, ...] = ("10.0.0.1", "10.0.0.2"), array: bool = False, task: int = 0) -> RankPlace:
    return RankPlace(job_id=42, task=task, attempt=1, rank=rank, array=array, name="train", user="ana",
                     submitted_at=0.0, gpus_per_node=4, node_ips=ips, cluster_name="n1", site="local")


def test_slurm_variables_of_a_two_node_job() -> None:
    spec = parse(script("-J train", "-N 2", "--ntasks-per-node=4", "--gres=gpu:4", "-c 6", "--mem=100G"))
    env = slurm_env(place(rank=1), spec, gpu_indices=(4, 5, 6, 7))  # type: ignore[arg-type]
    assert env["SLURM_JOB_ID"] == "42" and env["SLURM_JOB_NAME"] == "train"
    assert (env["SLURM_NNODES"], env["SLURM_NODEID"], env["SLURM_PROCID"], env["SLURM_LOCALID"]) == ("2", "1", "4", "0")
    assert (env["SLURM_NTASKS"], env["SLURM_NTASKS_PER_NODE"], env["SLURM_CPUS_PER_TASK"]) == ("8", "4", "6")
    assert env["SLURM_JOB_NODELIST"] == "10.0.0.1,10.0.0.2" == env["SLURM_NODELIST"]
    assert (env["SLURM_GPUS_ON_NODE"], env["SLURM_JOB_GPUS"]) == ("4", "4,5,6,7")
    assert env["SLURM_MEM_PER_NODE"] == str(100 * 1024) and env["SLURM_SUBMIT_DIR"] == "/d"
    assert "SLURM_ARRAY_TASK_ID" not in env


def test_slurm_variables_of_an_array_task_and_none_for_other_jobs() -> None:
    spec = parse(script("--array=1-64%4"))
    env = slurm_env(place(ips=("n1",), array=True, task=7), spec)  # type: ignore[arg-type]
    assert (env["SLURM_ARRAY_JOB_ID"], env["SLURM_ARRAY_TASK_ID"], env["SLURM_ARRAY_TASK_COUNT"]) == ("42", "7", "64")
    assert (env["SLURM_ARRAY_TASK_MIN"], env["SLURM_ARRAY_TASK_MAX"]) == ("1", "64")
    plain, _ = parse_spec({"run": "x"})
    assert slurm_env(place(), plain) == {}


def test_a_requeue_the_job_asks_for_is_a_recovery_never_a_restart() -> None:
    d = decide(Cause.REQUEUE, restarts_used=0, max_restarts=0, recoveries_used=3, max_recoveries=100)
    assert d.requeue and d.charge is Charge.RECOVERY
    d = decide(Cause.REQUEUE, restarts_used=0, max_restarts=0, recoveries_used=100, max_recoveries=100)
    assert not d.requeue and "100" in d.note


def test_the_controller_launches_a_slurm_job_with_its_variables_and_requeues_it_when_it_asks(tmp_path: Path) -> None:
    """In process (control/lifecycle.py with the store and fakes of tests/unit/control)."""
    from hybridctl.core.model import JobStatus
    from tests.unit.control.parts import build

    parts = build(tmp_path)
    try:
        slurm = {"ntasks_per_node": 2, "cpus_per_task": 3, "signal": "USR1", "signal_before": 90, "requeue": True,
                 "submit_dir": "/home/ana/proj"}
        job, node = parts.place(name="train", slurm=slurm)
        (rank,) = parts.lifecycle.active_ranks(node)
        payload = parts.lifecycle.launch_payload(rank, node)
        assert payload["slurm"] == slurm
        env = payload["envs"]
        assert (env["SLURM_JOB_ID"], env["SLURM_NTASKS"], env["SLURM_CPUS_PER_TASK"]) == (str(job), "2", "3")
        assert env["SLURM_JOB_GPUS"] == ",".join(map(str, payload["gpus"])) and env["SLURM_SUBMIT_DIR"] == "/home/ana/proj"
        parts.lifecycle.mark_running(job, 0)
        parts.lifecycle.rank_finished(rank.key, None, "requeue: the job asked (scontrol requeue)", JobStatus.FAILED,
                                      node=node)
        assert parts.state(job) is JobStatus.PENDING
        usage = parts.store.retry_usage(job, 0)
        assert (usage.restarts, usage.recoveries) == (0, 1)
        plain, node = parts.place()
        (rank,) = [r for r in parts.lifecycle.active_ranks(node) if r.job_id == plain]
        assert not any(k.startswith("SLURM_") for k in parts.lifecycle.launch_payload(rank, node)["envs"])
    finally:
        parts.store.close()
