"""`spot_insist: true`: the user says run on spot even where the burst policy would not (its
expected reclaim loss); parsed and checked with the spec, kept with it, said by `show`, and
carried to the burst policy by the autoscaler's world."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridctl.core.errors import SpecError
from hybridctl.core.model import spec_from_dict
from hybridctl.core.spec import parse_spec


def test_spot_insist_is_parsed_and_survives_the_stored_spec() -> None:
    spec, _ = parse_spec({"run": "x", "spot_insist": True})
    assert spec.spot_insist and spec_from_dict(spec.to_dict()).spot_insist
    plain, _ = parse_spec({"run": "x"})
    assert not plain.spot_insist and "spot_insist" not in plain.to_dict()


@pytest.mark.parametrize("value", ["yes", 1, "true", 0])
def test_a_bad_spot_insist_names_the_field_the_value_and_what_is_accepted(value: object) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec({"run": "x", "spot_insist": value})
    assert e.value.exit_code == 2
    assert "spot_insist" in str(e.value) and "true or false" in str(e.value)


def test_spot_insist_with_use_spot_false_is_refused() -> None:
    with pytest.raises(SpecError) as e:
        parse_spec({"run": "x", "resources": {"use_spot": False}, "spot_insist": True})
    assert "spot_insist" in str(e.value) and "use_spot" in str(e.value)


def test_show_says_so_and_the_autoscaler_passes_it_to_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from hybridctl.cli import common
    from hybridctl.cli.main import main
    from hybridctl.config import CloudConfig, Settings
    from hybridctl.control.autoscaler import Autoscaler
    from tests.unit.control.fakes import FakeProvider
    from tests.unit.control.parts import ALICE, build
    from tests.unit.controller_kit import show_client

    key = tmp_path / "cloud_key"
    key.write_text("not a real key\n")
    Path(f"{key}.pub").write_text("ssh-ed25519 AAAA test\n")
    settings = Settings(home=str(tmp_path), cloud=CloudConfig(enabled=True, identity=str(key)))
    parts = build(tmp_path, names=(), settings=settings)
    try:
        scaler = Autoscaler(parts.store, settings, parts.lifecycle, parts.fleet, parts.scheduler,
                            providers={"fake": FakeProvider()}, clock=parts.clock)
        insists = parts.submit(spot_insist=True)
        plain = parts.submit()
        assert scaler.world(parts.clock()).spot_insist == frozenset({(insists, 0)})

        monkeypatch.setattr(common, "client", show_client(parts.ctl, ALICE))
        for job, said in ((insists, True), (plain, False)):
            assert main(["show", str(job)]) == 0
            assert ("spot insist yes" in capsys.readouterr().out) is said
    finally:
        parts.store.close()


def test_spot_insist_allows_spot_where_the_default_market_is_on_demand() -> None:
    spec, _ = parse_spec({"run": "x", "spot_insist": True}, default_use_spot=False)
    assert spec.resources.use_spot and spec.spot_insist
    plain, _ = parse_spec({"run": "x"}, default_use_spot=False)
    assert not plain.resources.use_spot
