"""The one typed configuration: every parameter is range-checked at construction, with one line
naming the parameter, the value and the valid range."""

import dataclasses
import math

import numpy as np
import pytest

from matryoshka_adaptor import InputError, MatryoshkaAdaptor
from matryoshka_adaptor.config import DEFAULTS, FIELDS, RECIPES, AdaptorConfig

BAD = [
    ("dims", "64"), ("dims", (32.7, 64)), ("dims", True), ("dims", ()), ("dims", (0, 8)), ("dims", (8, -1)),
    ("dims", {"a": 1}), ("dims", (True, 8)),
    ("temperature", 0.0), ("temperature", -1.0), ("temperature", math.inf), ("temperature", "hot"),
    ("batch_size", 0), ("batch_size", 12.5), ("batch_size", "128"), ("batch_size", True),
    ("steps", -5), ("supervised_steps", -1),
    ("lr", math.nan), ("lr", 0.0), ("lr", -1e-3), ("lr", "fast"), ("lr", 1e38),
    ("validation_fraction", 2.0), ("validation_fraction", 1.0), ("validation_fraction", -0.1),
    ("k", 0), ("depth", 0), ("hidden_dim", 0), ("eval_every", 0), ("patience", 0),
    ("query_fraction", 1.5), ("ema_decay", 1.0), ("collapse_fraction", 1.0),
    ("alpha", -1.0), ("beta", math.nan), ("gamma", -0.5), ("rank_scale", 0.0), ("weight_decay", -1.0),
    ("random_negatives", -1), ("hard_negatives", 2.0), ("max_positives", 0), ("max_fit_vectors", 1),
    ("init", "random"), ("neighbor_search", "annoy"), ("recipe", "fancy"),
    ("learn_rotation", 1), ("use_queries", "yes"), ("progress", None), ("seed", -1), ("seed", 1.5),
    ("device", ""), ("base_model", 3),
]


@pytest.mark.parametrize("name, value", BAD)
def test_a_bad_value_fails_at_construction_with_one_line_naming_it(name, value):
    with pytest.raises(InputError) as err:
        if value is None:  # None means "unset" to the estimator, so only the config can be given it
            AdaptorConfig(**{name: value})
        else:
            MatryoshkaAdaptor(**{name: value})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{name}={value!r} is not valid: {name} must be ")


def test_valid_values_are_normalised():
    cfg = AdaptorConfig(dims=[64, np.int64(32), 64], batch_size=np.int32(7), lr=1, learn_rotation=np.bool_(False))
    assert cfg.dims == (32, 64) and type(cfg.batch_size) is int and cfg.lr == 1.0 and cfg.learn_rotation is False
    assert AdaptorConfig(dims=64).dims == (64,)


def test_unknown_parameters_are_refused():
    with pytest.raises(InputError, match="unknown parameter 'bogus'"):
        MatryoshkaAdaptor(bogus=1)
    with pytest.raises(InputError, match="unknown parameter 'bogus'"):
        AdaptorConfig.from_recipe("paper", bogus=1)


def test_config_is_frozen_and_replace_validates():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.lr = 1.0
    assert DEFAULTS.replace(lr=0.5).lr == 0.5
    with pytest.raises(InputError, match="lr=-0.5"):
        DEFAULTS.replace(lr=-0.5)


def test_recipe_then_explicit_values():
    est = MatryoshkaAdaptor(recipe="paper", steps=7, lr=0.01)
    cfg = est.resolved_settings()
    assert isinstance(cfg, AdaptorConfig)
    assert cfg.recipe == "paper" and cfg.init == "identity" and cfg.steps == 7 and cfg.lr == 0.01
    assert cfg.batch_size == DEFAULTS.batch_size  # not set by the recipe: the one default
    assert MatryoshkaAdaptor().resolved_settings() == DEFAULTS
    for name, recipe in RECIPES.items():
        assert AdaptorConfig.from_recipe(name) == AdaptorConfig(**recipe, recipe=name)


def test_set_params_validates_and_changes_nothing_on_error():
    est = MatryoshkaAdaptor(steps=5)
    with pytest.raises(InputError, match="temperature=0"):
        est.set_params(steps=9, temperature=0)
    assert est.steps == 5 and est.temperature is None
    assert est.set_params(steps=9).resolved_settings().steps == 9


def test_every_field_is_documented_with_its_range():
    text = AdaptorConfig.describe()
    for name in FIELDS:
        assert f"\n{name} = " in "\n" + text
    assert "temperature = 'auto': Softmax temperature of the listwise term." in text
    assert "(a finite number > 0 or one of 'auto')" in text
    doc = MatryoshkaAdaptor.__doc__
    assert "Attributes\n    ----------" in doc and "settings_ : AdaptorConfig" in doc
    assert all(f"    {name} : " in doc for name in FIELDS)
