"""The README's library example runs as written and finds a finite best energy."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README lost its python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    state = namespace["state"]
    assert int(state.iteration) == 3
    energies = np.asarray(state.archive.energies)[np.asarray(state.archive.valid)]
    assert energies.size > 0 and np.all(np.isfinite(energies))
    assert "best energy:" in capsys.readouterr().out
