import pytest

from godiff_jax.cli import apply_overrides
from godiff_jax.search import SearchConfig


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
