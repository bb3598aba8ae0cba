"""Configs: YAML + overrides into frozen dataclasses; unknown keys and wrong types are named errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from crystalforge.config import ConfigError, apply_overrides, dump_config, from_dict, load_config, to_dict


@dataclass(frozen=True)
class Inner:
    hidden: int = 8
    rate: float = 1e-3
    names: tuple[str, ...] = ()
    pair: tuple[float, int] = (0.0, 0)
    moments: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Outer:
    task: Literal["csp", "dng"] = "dng"
    inner: Inner = field(default_factory=Inner)
    steps: int | None = None
    flag: bool = False


def test_round_trip_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: csp\ninner:\n  hidden: 16\n  names: [a, b]\n")
    cfg = load_config(Outer, path, ["inner.rate=0.5", "flag=true", "steps=10"])
    assert cfg == Outer(task="csp", inner=Inner(hidden=16, rate=0.5, names=("a", "b")), steps=10, flag=True)
    assert load_config(Outer, None, []) == Outer()
    assert from_dict(Outer, to_dict(cfg)) == cfg
    (tmp_path / "d.yaml").write_text(dump_config(cfg))
    assert load_config(Outer, tmp_path / "d.yaml") == cfg


def test_fixed_length_tuples_convert_each_value_by_its_own_type():
    cfg = from_dict(Outer, {"inner": {"pair": [1, 2], "moments": {"gap": [1, 0.5]}}})
    assert cfg.inner.pair == (1.0, 2) and isinstance(cfg.inner.pair[0], float)
    assert cfg.inner.moments == {"gap": (1.0, 0.5)}
    with pytest.raises(ConfigError, match=r"config.inner.pair\[1\]: expected an integer"):
        from_dict(Outer, {"inner": {"pair": [1.0, 2.5]}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inner": {"hiden": 3}}, "config.inner: unknown key(s) hiden"),
        ({"inner": {"hidden": "wide"}}, "config.inner.hidden: expected an integer"),
        ({"flag": "yes"}, "config.flag: expected true/false"),
        ({"task": "gen"}, "config.task: 'gen' is not one of"),
        ({"inner": 3}, "config.inner: expected a mapping"),
        ({"inner": {"hidden": True}}, "config.inner.hidden: expected an integer"),
    ],
)
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(Outer, data)


def test_override_syntax_errors_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        apply_overrides({}, ["inner.hidden"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(Outer, tmp_path / "missing.yaml")
