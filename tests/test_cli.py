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


def test_the_default_is_the_paper_settings_made_fast_and_paper_is_a_preset():
    from godiff_jax.config import DEFAULT_SETTINGS, PAPER_SETTINGS, PRESETS, with_presets

    for name, steps, hold in (("heptamer", 8000, 10), ("adatom", 2000, 5)):
        paper, default = PAPER_SETTINGS[name], DEFAULT_SETTINGS[name]
        assert paper.train_steps == steps and not paper.train_stop
        assert (paper.n_reverse_steps, paper.kT_anneal_iterations) == (500, 0)
        assert (default.train_steps, default.train_stop, default.n_reverse_steps) == (
            250,
            True,
            100,
        )
        assert (paper.learning_rate, default.learning_rate) == (1e-4, 2e-4)
        assert default.kT_anneal_iterations == hold  # cools over half, holds the rest
        assert (default.refine_fraction, paper.refine_fraction) == (0.5, 0.0)
        assert default.replace(train_steps=steps, train_stop=False, n_reverse_steps=500,
                               kT_anneal_iterations=0, refine_fraction=0.0,
                               learning_rate=1e-4) == paper  # fmt: skip
        assert with_presets(default, paper, None) == default
        assert with_presets(default, paper, "paper") == paper
        both = with_presets(default, paper, ["paper", "reference"])
        assert both == paper.replace(**PRESETS["reference"]) and both.truncated_noise
    with pytest.raises(ValueError, match="unknown preset 'fast'; known: paper, reference"):
        with_presets(default, paper, ["fast"])


def test_changing_only_n_iterations_keeps_the_hold_share():
    from godiff_jax.config import DEFAULT_SETTINGS

    heptamer = DEFAULT_SETTINGS["heptamer"]  # 10 of 20 iterations cool
    assert heptamer.replace(n_iterations=30).kT_anneal_iterations == 15
    assert heptamer.replace(n_iterations=7).kT_anneal_iterations == 4  # round(3.5): even
    assert heptamer.replace(n_iterations=2).kT_anneal_iterations == 2  # cooling needs two
    assert heptamer.replace(n_iterations=1).kT_anneal_iterations == 0
    assert heptamer.replace(n_iterations=30, kT_anneal_iterations=3).kT_anneal_iterations == 3
    assert SearchConfig().replace(n_iterations=30).kT_anneal_iterations == 0  # no hold, none
    with pytest.raises(ValueError, match="add kT_anneal_iterations=0"):
        heptamer.replace(adaptive_kT=True)


def test_resuming_an_older_default_or_paper_run_with_the_default_names_the_way(tmp_path):
    from godiff_jax import io
    from godiff_jax.config import DEFAULT_SETTINGS, PAPER_SETTINGS

    io.write_config(tmp_path, PAPER_SETTINGS["heptamer"])
    with pytest.raises(ValueError, match="resume it with --preset paper"):
        io.write_config(tmp_path, DEFAULT_SETTINGS["heptamer"])
    with pytest.raises(
        ValueError, match=r"train_steps.*use a new --workdir or the same settings to resume$"
    ):
        io.write_config(tmp_path, PAPER_SETTINGS["heptamer"].replace(train_steps=7))
    older = tmp_path / "older_default"
    older.mkdir()
    before_1207 = {"train_steps": 500, "learning_rate": 1e-4}
    io.write_config(older, DEFAULT_SETTINGS["heptamer"].replace(refine_fraction=0.0, **before_1207))
    with pytest.raises(
        ValueError,
        match="resume it with --set refine_fraction=0 --set train_steps=500 --set learning_rate=1e-4",
    ):
        io.write_config(older, DEFAULT_SETTINGS["heptamer"])
    old_default = tmp_path / "default_before_the_training_change"
    old_default.mkdir()
    io.write_config(old_default, DEFAULT_SETTINGS["heptamer"].replace(**before_1207))
    with pytest.raises(
        ValueError, match="resume it with --set train_steps=500 --set learning_rate=1e-4"
    ):
        io.write_config(old_default, DEFAULT_SETTINGS["heptamer"])
