"""`hybridctl simulate --format philly|pai|helios`: the public traces' own rows (their READMEs'
examples, tests/data/traces/, sources named there) become replay jobs; every assumption is a flag
printed in the summary; bad rows name file, line, column and value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridctl.cli.main import main
from hybridctl.config import ConfigError
from hybridctl.simulate import public
from hybridctl.simulate.public import Assumptions
from hybridctl.simulate.trace import TraceJob

DATA = Path(__file__).resolve().parents[1] / "data" / "traces"


def convert(name: str, fmt: str, **assume: object) -> public.Converted:
    return public.convert(fmt, (DATA / name).read_text(), name, Assumptions(**assume))  # type: ignore[arg-type]


def test_philly_readme_job_runs_its_last_attempt_on_its_gpus() -> None:
    c = convert("philly_readme.json", "philly")
    (j,) = c.jobs
    # Submitted 01:11:39; the last attempt ran 2017-10-07 01:13:30 -> 10-09 06:53:12 on 8 GPUs of m412.
    assert (j.user, j.group, j.submit, j.gpus, j.nodes, j.gpu_type) == ("ce2f4c", "ee9e8c", 0.0, 8, 1, None)
    assert j.duration == 2 * 86400 + 5 * 3600 + 39 * 60 + 42
    assert (j.time_limit, j.checkpoint) == (None, 0.0)


def test_helios_readme_rows() -> None:
    c = convert("helios_readme.csv", "helios", limit_factor=2.0)
    assert [(j.user, j.group, j.submit, j.gpus, j.nodes, j.duration, j.time_limit) for j in c.jobs] == [
        ("uXBbc", "vcJkd", 0.0, 1, 1, 36848.0, 73696.0), ("uVMrF", "vchbv", 26.0, 4, 1, 249.0, 498.0),
        ("uzqls", "vcpDC", 27.0, 1, 1, 675233.0, 1350466.0)]


def test_pai_2020_task_row_rounds_gpu_percent_up_to_whole_gpus() -> None:
    c = convert("pai2020_task_readme.csv", "pai")
    assert c.variant.startswith("Alibaba PAI 2020")
    (j,) = c.jobs
    assert (j.gpus, j.nodes, j.duration, j.gpu_type) == (1, 1, 38.0, None)  # 50 % of a GPU; MISC = any
    assert j.group == "lab"  # PAI records no group


def test_pai_2020_instances_pack_onto_8_gpu_nodes() -> None:
    text = "job_name,task_name,inst_num,status,start_time,end_time,plan_cpu,plan_mem,plan_gpu,gpu_type\n" \
           "j1,worker,4.0,Terminated,100.0,3700.0,800.0,50.0,400.0,V100\n" \
           "j2,ps,2.0,Terminated,100.0,3700.0,800.0,50.0,,\n"
    c = public.convert("pai", text, "t.csv", Assumptions(gpu_map=(("V100", "A100"),)))
    (j,) = c.jobs
    assert (j.gpus, j.nodes, j.gpu_type) == (8, 2, "A100") and c.skipped == {"without GPUs": 1}


def test_pai_2023_pods_sharing_gpu_types_and_skips() -> None:
    c = convert("pai2023_format.csv", "pai", gpu_map=(("V100M32", "A100"), ("*", "any")))
    assert c.skipped == {"without GPUs": 1, "never scheduled": 1}
    assert [(j.gpus, j.duration, j.gpu_type, j.submit) for j in c.jobs] == [
        (8, 7200.0, None, 0.0), (1, 3540.0, None, 1000.0), (1, 595.0, "A100", 2000.0)]
    keep = convert("pai2023_format.csv", "pai", gpu_map=(("*", "keep"),))
    assert keep.jobs[2].gpu_type == "V100M16"


def _job(i: int, submit: float, gpus: int = 1, duration: float = 3600.0) -> TraceJob:
    return TraceJob(i, "u", submit, gpus, None, duration)


def test_the_busiest_window_counts_work_inside_it_and_load_compresses_arrivals() -> None:
    day = 86400.0
    # Day 0: one pod running for months (counts only for the window); days 10-11: 50 x 8-GPU hours.
    jobs = [_job(1, 0.0, 1, 100 * day)] + [_job(i + 2, 10 * day + i * 1800, 8) for i in range(50)]
    lo, hi = public.busiest(jobs, 2.0)
    assert lo <= 10 * day < hi and hi - lo == 2 * day
    text = "job_id,user,vc,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue\n" + "".join(
        f"{i},u,vc,8,8,1,COMPLETED,2020-06-{10 + i // 48:02d} {(i % 48) // 2:02d}:{30 * (i % 2):02d}:00,,,3600,0\n"
        for i in range(96)) + "99,u,vc,1,1,1,COMPLETED,2020-06-01 00:00:00,,,8000000,0\n"
    c = public.convert("helios", text, "h.csv", Assumptions(window_days=1.0, load=2.0, checkpoint=600.0))
    assert len(c.jobs) == 48 and c.skipped == {"outside the window": 49}
    assert max(j.submit for j in c.jobs) == pytest.approx(23.5 * 3600 / 2)
    assert {j.checkpoint for j in c.jobs} == {600.0}


@pytest.mark.parametrize("fmt,name,text,names", [
    ("helios", "h.csv", "job_id,user,vc,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue\n"
     "1,u,vc,x,1,1,COMPLETED,2020-06-09 18:41:01,,,60,0\n", ["h.csv:2", "gpu_num", "'x'"]),
    ("helios", "h.csv", "job_id,user,vc,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue\n"
     "1,u,vc,1,1,1,COMPLETED,2020-06-09 18:41:01,,,nan,0\n", ["h.csv:2", "duration", "'nan'"]),
    ("helios", "h.csv", "job_id,user,vc,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue\n"
     "1,u,vc,1,1,1,COMPLETED,June 9,,,60,0\n", ["h.csv:2", "submit_time", "'June 9'"]),
    ("helios", "h.csv", "a,b\n1,2\n", ["h.csv:1", "header"]),
    ("pai", "p.csv", "# a comment\n" + ",".join(public.PAI_2023) + "\npod,1,1,inf,1000,,LS,Running,0,60,0\n",
     ["p.csv:3", "num_gpu", "'inf'"]),
    ("pai", "p.csv", ",".join(public.PAI_2023) + "\npod,1,1,1,1000,,LS,Running,0,1e300,0\n",
     ["p.csv:2", "deletion_time", "'1e300'"]),
    ("pai", "p.csv", "j,t,1.0,Terminated,100.0,50000000,600.0,29.2,50.0,MISC\n", ["p.csv:1", "end_time"]),
    ("philly", "p.json", '[{"submitted_time": "yesterday", "attempts": []}]', ["p.json:job 0", "submitted_time"]),
    ("philly", "p.json", '[{"submitted_time": "2017-10-07 01:11:39",\n "attempts": [{"start_time": "2017-10-07 01:12:09",'
     ' "end_time": "2017-10-07 01:13:23", "detail": "m47"}]}]', ["p.json:job 0", "attempts.detail", "'m47'"]),
    ("philly", "p.json", "[{\n\"a\": }]", ["p.json:2", "not JSON"]),
])
def test_a_bad_public_row_names_file_line_column_and_value(fmt, name, text, names) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as e:
        public.convert(fmt, text, name, Assumptions())
    for n in names:
        assert n in e.value.message, (n, e.value.message)


def test_cli_prints_every_assumption_and_replays(capsys) -> None:  # type: ignore[no-untyped-def]
    rc = main(["simulate", str(DATA / "helios_readme.csv"), "--format", "helios", "--limit-factor", "2",
               "--checkpoint", "1800", "--window-days", "1", "--load", "2", "--gpu-map", "*=A100",
               "--strategy", "on-prem only"])
    out = capsys.readouterr().out
    assert rc == 0
    for line in ("--gpu-map *=A100", "--limit-factor 2", "--checkpoint 1800", "--window-days 1", "--load 2",
                 "SenseTime Helios cluster_log: 3 rows, 3 jobs replayed"):
        assert line in out, (line, out)
    assert "| on-prem only |" in out
    rc = main(["simulate", str(DATA / "philly_readme.json"), "--format", "philly", "--strategy", "on-prem only",
               "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["jobs"] == 1 and doc["source"]["assumptions"]["limit_factor"] is None
    assert doc["results"][0]["unfinished"] == 0


@pytest.mark.parametrize("argv,names", [
    (["--limit-factor", "0.5"], ["--limit-factor 0.5", "accepted"]),
    (["--limit-factor", "nan"], ["--limit-factor nan"]),
    (["--checkpoint", "1"], ["--checkpoint 1", "accepted"]),
    (["--checkpoint", "inf"], ["--checkpoint inf"]),
    (["--window-days", "0"], ["--window-days 0"]),
    (["--window-days", "1e9"], ["--window-days 1e9"]),
    (["--load", "0"], ["--load 0"]),
    (["--load", "-inf"], ["--load -inf"]),
    (["--gpu-map", "A100"], ["--gpu-map", "TRACE=FLEET"]),
])
def test_public_flags_are_checked(capsys, argv, names) -> None:  # type: ignore[no-untyped-def]
    flag, value = argv
    rc = main(["simulate", str(DATA / "helios_readme.csv"), "--format", "helios", f"{flag}={value}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    for n in names:
        assert n in err, (n, err)


def test_public_flags_are_refused_where_they_would_be_ignored(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["simulate", str(DATA / "helios_readme.csv"), "--limit-factor", "2"]) == 2
    assert "--limit-factor 2: only with --format" in capsys.readouterr().err
    assert main(["simulate", "generate", "--format", "pai"]) == 2
    assert "generate" in capsys.readouterr().err


def test_a_public_trace_with_no_gpu_jobs_says_what_was_skipped(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "cpu.csv"
    p.write_text(",".join(public.PAI_2023) + "\npod,1,1,0,0,,LS,Running,0,60,0\n")
    assert main(["simulate", str(p), "--format", "pai"]) == 2
    assert "no jobs to replay" in (err := capsys.readouterr().err) and "1 without GPUs" in err


def test_the_busiest_window_sweep_agrees_with_counting_each_window() -> None:
    import random

    rng = random.Random(3)
    day = 86400.0
    jobs = [_job(i, rng.uniform(0, 30 * day), rng.choice([1, 2, 8]), rng.lognormvariate(8, 2.5)) for i in range(400)]
    for width in (0.5, 3.0, 7.0):
        lo, hi = public.busiest(jobs, width)

        def work(c: float) -> float:
            return sum(j.gpus * min(j.duration, c + width * day - j.submit) for j in jobs
                       if c <= j.submit < c + width * day)

        t0 = min(j.submit for j in jobs)
        step = max(3600.0, (max(j.submit for j in jobs) - t0) / 2000)
        candidates = [t0]  # on the grid, until a window reaches the last submit
        while candidates[-1] + width * day < max(j.submit for j in jobs):
            candidates.append(candidates[-1] + step)
        assert work(lo) == pytest.approx(max(work(c) for c in candidates), rel=1e-9)


def test_philly_json_nested_too_deep_is_exit_2_not_a_traceback(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "deep.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    assert main(["simulate", str(p), "--format", "philly"]) == 2
    assert "nested too deep" in capsys.readouterr().err
