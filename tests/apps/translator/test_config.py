"""Presets, validation and the JSON round-trip of the translator config."""

import dataclasses

import pytest

from apps.common.config import config_from_dict, config_to_dict, load_config, save_config
from apps.translator.config import PRESETS, TranslatorConfig, get_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_round_trips_through_json(name, tmp_path):
    config = get_config(name)
    assert isinstance(config, TranslatorConfig)
    assert config_from_dict(TranslatorConfig, config_to_dict(config)) == config
    save_config(config, tmp_path / "config.json")
    assert load_config(TranslatorConfig, tmp_path / "config.json") == config


def test_keras_io_reference_matches_the_published_example():
    config = get_config("keras-io-reference")
    assert (config.source_vocab_size, config.target_vocab_size, config.sequence_length) == (
        15000,
        15000,
        20,
    )
    assert (config.embed_dim, config.intermediate_dim, config.num_heads, config.head_dim) == (
        256,
        2048,
        8,
        256,
    )
    assert (config.num_encoder_layers, config.num_decoder_layers) == (1, 1)
    assert (config.batch_size, config.optimizer, config.learning_rate) == (64, "rmsprop", 1e-3)
    assert not config.bucket_by_length and config.output_dropout == 0.5


def test_default_preset_fits_the_hour_budget():
    config = get_config("default")
    assert config.time_budget_minutes is not None and config.time_budget_minutes <= 60


def test_unknown_preset_lists_known_ones():
    with pytest.raises(
        ValueError, match="Known presets: default, keras-io-reference, large, tiny, tiny-subword\\."
    ):
        get_config("huge")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_heads", 0, "num_heads must be a positive integer. Received: num_heads=0"),
        ("sequence_length", 1, "sequence_length must be at least 2"),
        ("source_vocab_size", 4, "source_vocab_size must leave room"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\). Received: dropout=1.0"),
        ("optimizer", "sgd", "optimizer must be one of adam, adamw, rmsprop"),
        ("learning_rate", 0.0, "learning_rate must be positive"),
        ("warmup_steps", -1, "warmup_steps must be a non-negative integer"),
        ("embed_dim", 33, "embed_dim must be divisible by num_heads"),
        ("time_budget_minutes", 0, "time_budget_minutes must be None or positive"),
        ("clipnorm", -1.0, "clipnorm must be None or positive"),
    ],
)
def test_bad_values_raise_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_config("tiny"), **{field: value})


def test_head_dim_defaults_to_embed_dim_over_heads():
    assert TranslatorConfig(embed_dim=256, num_heads=4).head_dim == 64
    assert TranslatorConfig(embed_dim=256, num_heads=8, key_dim=256).head_dim == 256
