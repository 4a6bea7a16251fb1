import dataclasses

import pytest

from apps.common.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    get_preset,
    load_config,
    parse_override,
    save_config,
)


@dataclasses.dataclass
class Inner:
    filters: tuple[int, ...] = (8, 16)
    pooling: str = "max"


@dataclasses.dataclass
class Outer:
    name: str = "x"
    epochs: int = 3
    lr: float = 1e-3
    model: Inner = dataclasses.field(default_factory=Inner)
    note: str | None = None


def test_dict_roundtrip_nested_and_tuples():
    cfg = Outer(name="y", model=Inner(filters=(4, 8, 16)))
    d = config_to_dict(cfg)
    assert d["model"] == {"filters": (4, 8, 16), "pooling": "max"}
    assert config_from_dict(Outer, d) == cfg


def test_file_roundtrip(tmp_path):
    cfg = Outer(epochs=7, model=Inner(pooling="l2"))
    path = save_config(cfg, tmp_path / "config.json")
    loaded = load_config(Outer, path)
    assert loaded == cfg
    assert isinstance(loaded.model.filters, tuple)


def test_missing_keys_take_defaults():
    assert config_from_dict(Outer, {"epochs": 9}) == Outer(epochs=9)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"'bogus'.*'model\.extra'|'model\.extra'"):
        config_from_dict(Outer, {"model": {"extra": 1}})
    with pytest.raises(ValueError, match="Unknown config key.*'bogus', 'zzz'"):
        config_from_dict(Outer, {"bogus": 1, "zzz": 2})


def test_required_field_missing():
    @dataclasses.dataclass
    class Req:
        size: int

    with pytest.raises(ValueError, match="lacks required key 'size'"):
        config_from_dict(Req, {})


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_config(Outer, bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"colour": "red"}')
    with pytest.raises(ValueError, match="wrong.json.*'colour'"):
        load_config(Outer, wrong)


def test_get_preset_returns_fresh_objects_and_lists_names():
    presets = {"tiny": lambda: Outer(epochs=1), "default": Outer}
    a = get_preset(presets, "tiny")
    a.epochs = 99
    assert get_preset(presets, "tiny").epochs == 1
    with pytest.raises(ValueError, match="Unknown preset 'huge'. Known presets: default, tiny"):
        get_preset(presets, "huge")


def test_apply_overrides_ignores_none_and_rejects_unknown():
    cfg = Outer()
    new = apply_overrides(cfg, epochs=5, lr=None)
    assert (new.epochs, new.lr) == (5, cfg.lr)
    assert cfg.epochs == 3  # original untouched
    with pytest.raises(ValueError, match="Unknown config field.*colour"):
        apply_overrides(cfg, colour="red")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("batch_size=128", ("batch_size", 128)),
        ("lr=3e-4", ("lr", 3e-4)),
        ("shared_vocab=False", ("shared_vocab", False)),
        ("key_dim=None", ("key_dim", None)),
        ("filters=(8, 16)", ("filters", (8, 16))),
        ("optimizer=adamw", ("optimizer", "adamw")),  # not a literal: the string
        (" name =a=b", ("name", "a=b")),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["batch_size", "=3", ""])
def test_parse_override_needs_a_name_and_a_value(text):
    with pytest.raises(ValueError, match="Expected NAME=VALUE"):
        parse_override(text)
