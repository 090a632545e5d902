"""The whole-lab simulator: trace readers, the generated week, and the replay's accounting
(multi-node gangs, checkpoint-aware restarts, billing to the real end, budgets and back-offs
reaching the policy, unfinished jobs in the percentiles) against a scripted market."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest

from hybridctl.cli.main import main
from hybridctl.config import ConfigError
from hybridctl.core import burst
from hybridctl.core.burst import Offer
from hybridctl.simulate import report, trace
from hybridctl.simulate.engine import NodeGroup, Strategy, run
from hybridctl.simulate.market import MarketModel
from hybridctl.simulate.trace import TraceJob

A = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, True, 10.0, 0.05)
B = replace(A, zone="r1b")
OD = replace(A, spot=False, price_hourly=30.0)
FLEET = [NodeGroup("a", 1, 8, "NVIDIA A100-SXM4-80GB")]
RENT = burst.Limits(after=0, allow_on_demand=True, idle_timeout=60, max_nodes=100, max_hourly_usd=1e9,
                    budget_usd=1e9, stop_margin_s=0)


class ScriptedMarket:
    """Fixed prices; reclaims `reclaim_after` seconds after each spot launch; refuses `refused` pools."""

    def __init__(self, offers: list[Offer], reclaim_after: float | None = None, refused: tuple[str, ...] = (),
                 notice: float = 120.0) -> None:
        self.base = offers
        self.reclaim_after = reclaim_after
        self.refused = refused
        self.model = MarketModel(boot_s=120.0)
        self.seed = 0
        self._notice = notice
        self.refusals: list[str] = []
        self.reclaimed = False

    def offers(self, t: float, spot: bool = True, on_demand: bool = True) -> list[Offer]:
        return [o for o in self.base if (spot if o.spot else on_demand)]

    def price(self, o: Offer, t: float) -> float:
        return o.price_hourly

    def notice(self, o: Offer) -> float:
        return self._notice

    def refuse(self, o: Offer, t: float, held: int, k: int) -> str:
        if o.pool in self.refused:
            self.refusals.append(o.pool)
            return "capacity"
        return ""

    def reclaim_at(self, o: Offer, name: str, t: float) -> float | None:
        """Only the first spot node is reclaimed."""
        if not o.spot or self.reclaim_after is None or self.reclaimed:
            return None
        self.reclaimed = True
        return t + self.reclaim_after


def job(i: int = 1, gpus: int = 8, nodes: int = 1, duration: float = 3600.0, checkpoint: float = 0.0,
        **kw: object) -> TraceJob:
    return TraceJob(i, "u", 0.0, gpus, "A100", duration, nodes, checkpoint, **kw)  # type: ignore[arg-type]


def test_a_multi_node_job_rents_and_runs_on_all_its_nodes() -> None:
    r = run([job(nodes=2)], FLEET, Strategy("od", onprem=False, limits=RENT), ScriptedMarket([OD]))  # type: ignore[arg-type]
    assert r.unfinished == 0
    # Two nodes billed from launch: boot (120 s) + the hour + the idle timeout, whole ticks.
    assert 2 * 8 * 1.0 < r.cloud_gpu_h <= 2 * 8 * (3600 + 120 + 60 + 180) / 3600
    assert r.dollars == pytest.approx(r.cloud_gpu_h / 8 * 30.0)
    assert r.waits == [pytest.approx(120.0, abs=60)]


@pytest.mark.parametrize("checkpoint", [0.0, 1200.0])
def test_a_reclaim_resumes_from_the_last_checkpoint_and_bills_until_the_node_is_gone(checkpoint: float) -> None:
    # Reclaimed 1 h 2 min after launch: the job started at 120 s (boot) and gets notice at 1 h 0 min.
    m = ScriptedMarket([A], reclaim_after=3720.0)
    r = run([job(duration=2 * 3600.0, checkpoint=checkpoint)], FLEET,
            Strategy("spot", onprem=False, limits=RENT, market="spot"), m)  # type: ignore[arg-type]
    assert r.preemptions == 1 and r.unfinished == 0
    # Worked 3600 - 120 s before the notice; checkpoints every 20 min keep 2 x 20 min of it.
    worked = 3600 - 120
    kept = (worked // checkpoint) * checkpoint if checkpoint else 0
    assert r.lost_gpu_h == pytest.approx(8 * (worked - kept) / 3600, abs=8 * 60 / 3600)
    # It resumes from what it kept: 2 h of work, the lost part again, two boots.
    second = 2 * 3600 - kept
    assert r.waits[0] == pytest.approx(120 + 120, abs=180)
    # Both nodes billed: the first to its reclaim (62 min), not to the notice; the second to the end.
    assert r.cloud_gpu_h == pytest.approx(8 * (3720 + 120 + second + 60) / 3600, abs=8 * 300 / 3600)


def test_refusals_back_off_the_pool_and_the_policy_moves_on() -> None:
    m = ScriptedMarket([A, B], refused=(A.pool,))
    r = run([job()], FLEET, Strategy("spot", onprem=False, limits=RENT, market="spot"), m)  # type: ignore[arg-type]
    assert r.unfinished == 0 and r.refusals == 1 and m.refusals == [A.pool]


def test_spend_reaches_the_policy_and_the_budget_holds() -> None:
    lim = replace(RENT, budget_usd=25.0, budget_reserve_h=0.0)
    jobs = [replace(job(i), submit=600.0 * i) for i in range(1, 6)]
    r = run(jobs, FLEET, Strategy("spot", onprem=False, limits=lim, market="spot"), ScriptedMarket([A]),  # type: ignore[arg-type]
            drain_s=6 * 3600)
    assert 0 < r.dollars <= 25.0 + 10.0 * 120 / 3600 and r.max_period_spend <= 25.0 + 1.0
    assert r.unfinished >= 3  # the budget stopped the rest


def test_a_paced_budget_is_never_crossed_and_no_running_work_is_killed() -> None:
    lim = replace(RENT, budget_usd=60.0, pace_budget=True, pace_ahead=1.0, deadline_reserve=0.0)
    jobs = [replace(job(i, duration=2 * 3600.0, checkpoint=600.0, time_limit=2.5 * 3600), submit=300.0 * i)
            for i in range(1, 9)]
    r = run(jobs, FLEET, Strategy("spot", onprem=False, limits=lim, market="spot"), ScriptedMarket([A]),  # type: ignore[arg-type]
            drain_s=12 * 3600)
    assert 0 < r.max_period_spend <= 60.0 and r.killed_gpu_h == 0.0
    assert r.unfinished >= 4


def test_unfinished_jobs_count_in_the_percentiles_with_their_wait_so_far() -> None:
    jobs = [job(1), job(2, gpus=16)]  # 16 GPUs on one node: never fits an 8-GPU node
    r = run(jobs, FLEET, Strategy("on-prem only"), ScriptedMarket([]), drain_s=3600.0)  # type: ignore[arg-type]
    assert r.unfinished == 1
    assert r.p(0.95) >= 3600.0 and r.p(0.5) == 0.0


def test_deadline_misses_are_counted() -> None:
    jobs = [job(1, deadline=1800.0), job(2, deadline=7200.0)]
    r = run(jobs, FLEET, Strategy("on-prem only"), ScriptedMarket([]))  # type: ignore[arg-type]
    assert (r.deadline_jobs, r.deadline_misses) == (2, 1)


def test_csv_reader_columns_times_and_errors() -> None:
    text = ("submit,user,gpus,gpu_type,nodes,duration,checkpoint,deadline\n"
            "2026-11-02T10:00:00Z,ann,8,A100,2,3600,600,2026-11-02T14:00:00Z\n"
            "2026-11-02T09:00:00Z,bob,1,,,60,,+7200\n")
    jobs, origin = trace.read_csv(io.StringIO(text))
    assert origin is not None and [j.user for j in jobs] == ["bob", "ann"]
    assert jobs[0].submit == 0 and jobs[0].gpu_type is None and jobs[0].checkpoint == 0 and jobs[0].deadline == 7200
    assert (jobs[1].submit, jobs[1].nodes, jobs[1].deadline) == (3600, 2, 5 * 3600)
    with pytest.raises(ConfigError, match=r"trace:3: gpus: 'x' is not an integer"):
        trace.read_csv(io.StringIO("submit,gpus,duration\n0,1,60\n5,x,60\n"))
    with pytest.raises(ConfigError, match="no 'duration' column"):
        trace.read_csv(io.StringIO("submit,gpus\n0,1\n"))


def test_sacct_reader_takes_allocations_and_skips_steps() -> None:
    text = ("JobID|User|Submit|Elapsed|NNodes|AllocTRES|Timelimit|State\n"
            "101|ann|2026-11-02T09:00:00|02:00:00|2|billing=16,cpu=32,gres/gpu:a100=16,gres/gpu=16|1-00:00:00|COMPLETED\n"
            "101.batch|ann|2026-11-02T09:00:00|02:00:00|1|cpu=16|| COMPLETED\n"
            "102|bob|2026-11-02T10:30:00|00:10:00|1|cpu=4,gres/gpu=1|UNLIMITED|FAILED\n"
            "103|bob|2026-11-02T10:31:00|00:00:00|1|cpu=4,gres/gpu=1|UNLIMITED|CANCELLED\n")
    jobs, origin = trace.read_sacct(io.StringIO(text))
    assert [(j.user, j.gpus, j.gpu_type, j.nodes, j.duration, j.time_limit) for j in jobs] == [
        ("ann", 8, "A100", 2, 7200.0, 86400.0), ("bob", 1, None, 1, 600.0, None)]
    assert jobs[1].submit == 5400.0


def test_the_generated_week_is_hard_and_reproducible() -> None:
    a = trace.hard_week(5, days=7.0, gpus=96)
    assert a == trace.hard_week(5, days=7.0, gpus=96)
    demand = sum(j.gpu_hours for j in a)
    assert demand >= 1.3 * 96 * 7 * 24
    assert {j.gpu_type for j in a} >= {"A100", "H100", "L40S", None}
    assert sum(j.nodes > 1 for j in a) >= 10 and sum(j.checkpoint == 0 for j in a) > len(a) / 4
    due = [j for j in a if j.deadline is not None]
    assert len(due) >= 20 and all(j.submit + j.duration < j.deadline for j in due)  # type: ignore[operator]
    buf = io.StringIO()
    some = [replace(j, group=f"g{j.id % 3}") if j.id % 4 else j for j in a[:50]]  # some keep the default
    trace.write_csv(some, buf)
    back, _ = trace.read_csv(io.StringIO(buf.getvalue()))
    assert [(j.user, j.group, j.gpus, j.nodes, j.gpu_type, j.deadline is None) for j in back] == [
        (j.user, j.group, j.gpus, j.nodes, j.gpu_type, j.deadline is None) for j in some]
    # Seconds from the trace start stay where they were written: the first job is not moved to 0,
    # so a `--write-trace` file replays against the same (time-seeded) market as the run that wrote it.
    assert some[0].submit > 60 and [round(j.submit) for j in back] == [round(j.submit) for j in some]


def test_cli_replays_a_csv_and_rejects_bad_input(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("submit,user,gpus,gpu_type,nodes,duration\n0,a,1,A100,1,600\n60,b,8,A100,1,1200\n")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("nodes:\n  - {name: a, count: 1, gpus: 8, model: NVIDIA A100-SXM4-80GB}\n")
    rc = main(["simulate", str(csv_path), "--fleet", str(fleet), "--strategy", "on-prem only",
               "--strategy", "hybridctl", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and [r["strategy"] for r in out["results"]] == ["on-prem only", "hybridctl"]
    assert out["results"][0]["unfinished"] == 0
    assert main(["simulate", str(csv_path), "--fleet", str(fleet), "--strategy", "all on-demand"]) == 0
    assert "all on-demand: cloud $ by job size and market: 8 GPUs on-demand $" in capsys.readouterr().out
    fleet.write_text("nodes:\n  - {name: a, count: 1, gpus: eight, model: X}\n")
    assert main(["simulate", str(csv_path), "--fleet", str(fleet)]) == 2
    assert "nodes[0]" in capsys.readouterr().err


def test_where_the_money_went_adds_up_to_what_was_paid(capsys) -> None:  # type: ignore[no-untyped-def]
    # A 2-node gang and a 1-GPU job on on-demand nodes: each node's hours while it held a job go
    # to its job's class; boot and the idle timeout are the rest.
    jobs = [job(1, nodes=2), job(2, gpus=1, duration=1800.0)]
    r = run(jobs, FLEET, Strategy("od", onprem=False, limits=RENT), ScriptedMarket([OD]))  # type: ignore[arg-type]
    assert set(r.dollars_by_class) == {"multi-node on-demand", "1 GPU on-demand"}
    gang, small = r.dollars_by_class["multi-node on-demand"], r.dollars_by_class["1 GPU on-demand"]
    assert gang == pytest.approx(2 * 30.0, rel=0.05) and small == pytest.approx(15.0, rel=0.1)
    idle = r.dollars - gang - small
    assert idle > 0
    (line,) = report.money_lines([r, replace(r, strategy="on-prem only", dollars=0.0, dollars_by_class={})])
    assert line == (f"od: cloud $ by job size and market: multi-node on-demand ${gang:,.0f} ({gang / r.dollars:.0%}),"
                    f" 1 GPU on-demand ${small:,.0f} ({small / r.dollars:.0%}),"
                    f" booting or idle ${idle:,.0f} ({idle / r.dollars:.0%})")
    (short,) = report.money_lines([r], top=1)
    assert f"other jobs ${small:,.0f}" in short


def test_limit_use_is_the_median_share_of_their_limit_finished_runs_used() -> None:
    from hybridctl.simulate.engine import LimitUse

    use = LimitUse()
    for i in range(19):
        use.add(0.1 + 0.01 * i, 1.0)
    assert use.value == 1.0  # fewer than 20 finished runs: the limit itself
    use.add(0.9, 2.0)  # 45 % of its limit
    assert use.value == pytest.approx((0.19 + 0.2) / 2)
    use.add(5.0, 2.0)  # ran past its limit (a grace): counts as the whole limit
    assert use.value == pytest.approx(0.2)


def test_a_recalled_cloud_job_finishes_on_prem_and_its_node_goes_back() -> None:
    """On-prem is busy for an hour, so the 6 h job bursts; once on-prem frees, `recall` brings it
    back (from its last checkpoint) and the cloud node is given back: the same job, fewer cloud hours."""
    jobs = [job(1, duration=3600.0, time_limit=3600.0),
            replace(job(2, duration=6 * 3600.0, checkpoint=600.0, time_limit=7 * 3600.0), submit=60.0)]
    stay = run(jobs, FLEET, Strategy("stay", limits=RENT), ScriptedMarket([OD]))  # type: ignore[arg-type]
    back = run(jobs, FLEET, Strategy("back", limits=replace(RENT, recall=True)), ScriptedMarket([OD]))  # type: ignore[arg-type]
    assert stay.unfinished == back.unfinished == 0
    assert (stay.recalls, back.recalls) == (0, 1)
    assert stay.cloud_gpu_h > 8 * 6.0  # the whole run on the cloud node
    assert back.cloud_gpu_h < 8 * 1.5  # boot, the first hour, the idle timeout
    # Stopped just after a checkpoint: at most one 10-minute interval thrown away, never counted as a reclaim.
    assert back.recall_lost_gpu_h <= 8 * 600 / 3600 and back.lost_gpu_h == 0.0 and back.preemptions == 0
    head, _rule, *rows = report.table([stay, back]).splitlines()
    recalled = [dict(zip(head.strip("| ").split(" | "), r.strip("| ").split(" | ")))["recalled (GPU-h lost)"]
                for r in rows]
    assert recalled == ["0", "1 (0.9)"]


def test_a_refused_launch_asks_the_next_pool_within_the_tick() -> None:
    """The controller's autoscaler passes again as soon as a launch is refused (its `wake`), so
    the simulator does too: the job rents in pool B in the tick pool A refused it, and starts once
    B's node booted (120 s), not a tick (60 s) later."""
    m = ScriptedMarket([replace(A, price_hourly=9.0), B], refused=(A.pool,))
    lim = replace(RENT, reclaim_per_h=0.0)
    r = run([job()], FLEET, Strategy("hybrid", onprem=False, limits=lim), m)  # type: ignore[arg-type]
    assert m.refusals == [A.pool] and r.unfinished == 0
    assert r.waits[0] == 120.0


class CappedMarket(ScriptedMarket):
    """Spot pools that hold 3 nodes at most (as the simulated market's 8-GPU spot pools)."""

    def refuse(self, o: Offer, t: float, held: int, k: int) -> str:
        if o.spot and held + k > 3:
            self.refusals.append(o.pool)
            return "capacity"
        return ""


def test_a_gang_refused_by_every_spot_pool_reaches_on_demand() -> None:
    """A pool that refuses a gang of k nodes backs off k times as long (`backoff_s` x k): a
    4-node job facing 12 spot pools of 3 nodes each used to ask them in turn forever, each one
    live again (300 s) before the walk got through half of them, and never reached on-demand
    (the 4-node jobs of the lab week waited 1.8-5.2 h at p95)."""
    spots = [replace(A, zone=f"r1{c}") for c in "abcdefghijkl"]
    m = CappedMarket([*spots, OD])
    lim = replace(RENT, reclaim_per_h=0.0)
    r = run([job(nodes=4)], FLEET, Strategy("hybrid", onprem=False, limits=lim), m, drain_s=6 * 3600)  # type: ignore[arg-type]
    assert r.unfinished == 0, m.refusals[:20]
    assert len(m.refusals) <= len(spots) and r.waits[0] <= 3600
