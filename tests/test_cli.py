import pytest

from godiff_jax.cli import apply_overrides
from godiff_jax.config import SearchConfig, from_dict, make_config


def test_set_overrides_parse_json_values():
    cfg = apply_overrides(
        SearchConfig(),
        ["train_steps=4000", "truncated_noise=false", "kT_end=0.05", "score_convention=textbook"],
    )
    assert cfg.train_steps == 4000 and cfg.truncated_noise is False
    assert cfg.kT_end == 0.05 and cfg.score_convention == "textbook"
    assert cfg.n_samples == SearchConfig().n_samples
    # Python spelling of booleans must not become the (truthy) string "False"
    assert apply_overrides(SearchConfig(), ["truncated_noise=False"]).truncated_noise is False
    assert apply_overrides(SearchConfig(), ["energy_floor=-500"]).energy_floor == -500.0


def test_set_rejects_values_of_the_wrong_type():
    with pytest.raises(SystemExit, match="train_steps=4k"):
        apply_overrides(SearchConfig(), ["train_steps=4k"])
    with pytest.raises(SystemExit, match="expected true or false"):
        apply_overrides(SearchConfig(), ["truncated_noise=yes"])


@pytest.mark.parametrize("bad", ["train_step=4000", "train_steps"])
def test_set_rejects_unknown_fields_by_name(bad):
    with pytest.raises(SystemExit, match="train_steps"):
        apply_overrides(SearchConfig(), [bad])


def test_dotted_and_flat_names_are_one_namespace():
    cfg = apply_overrides(SearchConfig(), ["model.features=32", "grid_spacing=0.25"])
    assert cfg.model.features == 32 and cfg.features == 32
    assert cfg.model.grid_spacing == 0.25  # every model field, the grid's included
    assert cfg == make_config(model__features=32, grid_spacing=0.25)
    assert cfg.training.train_steps == SearchConfig().train_steps
    with pytest.raises(SystemExit, match="did you mean 'features'"):
        apply_overrides(SearchConfig(), ["featurs=3"])
    with pytest.raises(SystemExit, match="cannot be none"):
        apply_overrides(SearchConfig(), ["train_steps=none"])


def test_config_json_round_trip_and_old_flat_files():
    cfg = make_config(n_iterations=3, n_samples=6, features=8, energy_floor=-5.0)
    assert from_dict(cfg.to_dict()) == cfg
    flat = {"n_iterations": 3, "n_samples": 6, "features": 8, "energy_floor": -5.0}
    assert from_dict(flat) == cfg  # a run directory written before the sections
