"""DREConfig: validation gives one readable error; overrides and JSON round-trip."""

import pytest

from model.dre.config import ConfigError, DREConfig


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"d": 100, "lanes": 16}, "not a multiple of lanes"),
        ({"k_cap": 0}, "k_cap=0 is out of range"),
        ({"bk": 1}, "bk=1 is out of range"),
        ({"lanes": 128, "d": 64}, "exceeds d"),
        ({"k_cap": 32, "n_max": 16}, "exceeds n_max"),
        ({"nope": 3}, "unknown parameter(s) nope; valid: d, lanes"),
        ({"d": 64.0}, "d must be an integer"),
        ({"cluster_lanes": 0}, "cluster_lanes=0 is out of range"),
        ({"d": 24, "lanes": 12, "cluster_lanes": 9}, "clustering unit's lanes"),
    ],
)
def test_bad_values_raise_config_error(changes, message):
    with pytest.raises(ConfigError) as exc:
        DREConfig().replace(**changes)
    assert message in str(exc.value)


def test_overrides_and_json_round_trip(tmp_path):
    cfg = DREConfig.from_overrides(["d=128", "lanes=0x20"])
    assert (cfg.d, cfg.lanes, cfg.groups) == (128, 32, 4)
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    assert DREConfig.from_json(path) == cfg


@pytest.mark.parametrize("item", ["d", "=3", "d=x"])
def test_malformed_override(item):
    with pytest.raises(ConfigError):
        DREConfig.from_overrides([item])


def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read DRE config"):
        DREConfig.from_json(path)


def test_index_bits():
    assert DREConfig(n_max=1, k_cap=1).index_bits == 1
    assert DREConfig(n_max=256).index_bits == 8
    assert DREConfig(n_max=257).index_bits == 9


def test_clustering_lanes_are_capped_by_lanes():
    """The clustering unit runs ``min(cluster_lanes, lanes)`` lanes: 8 of the default's 16."""
    assert (DREConfig().cl_lanes, DREConfig().cl_groups, DREConfig().groups) == (8, 8, 4)
    assert DREConfig(cluster_lanes=16).cl_groups == 4
    small = DREConfig(d=8, lanes=4, cluster_lanes=16)
    assert (small.cl_lanes, small.cl_groups) == (4, 2)
    cfg = DREConfig.from_overrides(["cluster_lanes=32", "lanes=32"])
    assert (cfg.cl_lanes, cfg.cl_groups) == (32, 2)
