"""PaiNN score model in which only the mobile atoms receive messages.

- `score_model`: `ScoreModel` (the public API for one System) and `ScoreModelConfig`.
- `layers`: the Flax network (`PaiNNScore`) and its blocks, `ScoreContext`.
- `messages`: the message kernels with their hand-written gradient.
- `neighbours`: host-side neighbour tables built once per System.

See `score_model` for where messages flow and why that makes it fast.
"""

from godiff_jax.model.layers import NUM_ELEMENTS, PaiNNScore, ScoreContext
from godiff_jax.model.neighbours import (
    TemplateGraph,
    TemplateGrid,
    mobile_image_shifts,
    template_classes,
    template_graph,
    template_grid,
)
from godiff_jax.model.score_model import (
    Params,
    ScoreModel,
    ScoreModelConfig,
    count_params,
    score_all_atoms,
)

__all__ = [
    "NUM_ELEMENTS",
    "Params",
    "PaiNNScore",
    "ScoreContext",
    "ScoreModel",
    "ScoreModelConfig",
    "TemplateGraph",
    "TemplateGrid",
    "count_params",
    "mobile_image_shifts",
    "score_all_atoms",
    "template_classes",
    "template_graph",
    "template_grid",
]
