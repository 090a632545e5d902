"""Cloud settings: the example config documents every key with its default, env overrides nest,
and bad values are refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridctl import config
from hybridctl.config import ConfigError, Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "hybridctl.example.yaml"


def test_example_config_loads_equal_to_the_defaults() -> None:
    assert config.load(EXAMPLE, env={}) == Settings()


def test_every_cloud_key_is_in_the_example() -> None:
    import dataclasses

    import yaml

    example = yaml.safe_load(EXAMPLE.read_text())["cloud"]

    def keys(cls: type, data: dict, where: str) -> None:
        for f in dataclasses.fields(cls):
            assert f.name in data, f"{where}{f.name} is missing from {EXAMPLE.name}"
            if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else getattr(config, f.type, None)):
                keys(getattr(config, f.type) if isinstance(f.type, str) else f.type, data[f.name], f"{where}{f.name}.")

    keys(config.CloudConfig, example, "cloud.")


def test_env_overrides_nest_and_lists_parse(tmp_path: Path) -> None:
    s = config.load(None, env={"HYBRIDCTL_CLOUD__BURST__AFTER": "2", "HYBRIDCTL_CLOUD__PROVIDERS": "[simulated, aws]",
                               "HYBRIDCTL_CLOUD__SIMULATED__CAPACITY_ERRORS": "g5.xlarge"})
    assert s.cloud.burst.after == 2.0
    assert s.cloud.providers == ("simulated", "aws")
    assert s.cloud.simulated.capacity_errors == ("g5.xlarge",)


@pytest.mark.parametrize(
    "text, message",
    [
        ("cloud: {providers: [azure]}", "cloud.providers: unknown provider 'azure'"),
        ("cloud: {burst: {budget_period: year}}", "cloud.burst.budget_period: 'year'"),
        ("cloud: {burst: {max_nodes: many}}", "cloud.burst.max_nodes: 'many' is not a number"),
        ("cloud: {burst: {idle_timout: 5}}", "did you mean 'idle_timeout'"),
        ("cloud: {providers: [1, 2]}", "cloud.providers: expected a list of strings"),
        ("cloud: {burst: {user_budget_usd: {alice: -5}}}",
         "cloud.burst.user_budget_usd.alice: -5 is not valid; US dollars, 0 or more"),
        ("cloud: {burst: {group_budget_usd: {lab: .inf}}}", "cloud.burst.group_budget_usd.lab: inf is not valid"),
        ("cloud: {burst: {user_budget_usd: {bob: lots}}}", "cloud.burst.user_budget_usd.bob: 'lots' is not valid"),
        ("cloud: {burst: {user_budget_usd: 500}}",
         "cloud.burst.user_budget_usd: expected a mapping of name: US dollars, e.g. {'*': 500}; got 500"),
    ],
)
def test_bad_cloud_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    from hybridctl.cloud.providers import build
    from hybridctl.control.autoscaler import limits

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        s = config.load(path, env={})
        limits(s)
        build(s)
    assert message in err.value.message


def test_simulated_machines_live_beside_the_private_home_and_others_may_only_pass_through(tmp_path: Path) -> None:
    """The state directory stays 0700 (`paths.make_private`), so the simulated machines, where
    other users' jobs run, cannot live in it: by default they sit beside it, in directories
    others may pass through but not list. A directory others may write to is refused."""
    import os
    import stat

    from hybridctl.cloud.providers import build

    path = tmp_path / "c.yaml"
    path.write_text(f"home: {tmp_path / 'state'}")
    sim = build(config.load(path, env={}))["simulated"]
    assert sim.root == tmp_path / "state-simulated"  # type: ignore[attr-defined]
    for d in (sim.root, sim.root / "i"):  # type: ignore[attr-defined]
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o711, d

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    path.write_text(f"cloud: {{simulated: {{dir: {shared}}}}}")
    with pytest.raises(ConfigError) as err:
        build(config.load(path, env={}))
    assert err.value.message.startswith(f"cloud.simulated.dir: {shared} belongs to uid {os.geteuid()} with mode 0777")
    assert not (shared / "i").exists()
    deep = tmp_path / "made" / "for" / "it"  # what it makes above its dir, others pass through too
    path.write_text(f"cloud: {{simulated: {{dir: {deep}}}}}")
    build(config.load(path, env={}))
    for d in (tmp_path / "made", tmp_path / "made" / "for", deep, deep / "i"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o711, d
    (tmp_path / "link").symlink_to(tmp_path / "state-simulated")  # a link is not followed
    path.write_text(f"cloud: {{simulated: {{dir: {tmp_path / 'link'}}}}}")
    with pytest.raises(ConfigError) as err:
        build(config.load(path, env={}))
    assert err.value.message.startswith(f"cloud.simulated.dir: {tmp_path / 'link'} is not a directory of its own")


def test_catalog_errors_name_the_file_and_key(tmp_path: Path) -> None:
    from hybridctl.cloud import catalog

    bad = tmp_path / "offers.yaml"
    bad.write_text("instance_types: {x: {gpu: A100, gpus: 1, vcpus: 4, memory_gb: 8}}\n"
                   "regions: {r: {zones: [r-a, r-b], spot: {x: [1.0]}}}\n")
    with pytest.raises(ConfigError) as err:
        catalog.load(bad)
    assert err.value.message.startswith(f"{bad}: regions.r.spot.x: expected one price (or null) per zone")
    shipped = catalog.load()
    assert {"g6e.xlarge", "p4d.24xlarge", "p5.48xlarge"} <= set(shipped.types)
    assert all(o.price_hourly > 0 for o in shipped.offers("aws"))


def test_workdir_over_the_cap_is_a_clear_error(tmp_path: Path) -> None:
    from hybridctl.cloud.transfer import WorkdirTooLarge, scan

    (tmp_path / "w" / ".git").mkdir(parents=True)
    (tmp_path / "w" / ".git" / "pack").write_bytes(b"x" * 4096)
    (tmp_path / "w" / "data.bin").write_bytes(b"x" * 3000)
    (tmp_path / "w" / "train.py").write_text("print(1)\n")
    assert sorted(str(p) for p, _ in scan(tmp_path / "w", [".git"], 4000)) == ["data.bin", "train.py"]
    with pytest.raises(WorkdirTooLarge) as err:
        scan(tmp_path / "w", [".git"], 2048)
    assert "cloud.workdir_cap_mb" in err.value.message and str(tmp_path / "w") in err.value.message
