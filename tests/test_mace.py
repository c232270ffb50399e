"""MACE in JAX against mace-torch.

Default suite (no torch): the committed fixtures, random models of the MACE-MP-0 small and
medium architectures (8 channels) converted by our converter, with mace-torch's float64
energies and forces (`tests/data/mace/make_fixtures.py` makes them). With the `mace`
extra installed (its own environment, `.ci/run` builds it) the `live` tests build such
models at the MP-0 sizes (128 channels), convert them through a file and compare with
mace-torch directly.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import ase.db
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from godiff_jax.checkpoint import CheckpointError
from godiff_jax.potentials.mace import (
    MaceModelError,
    MacePotential,
    atoms_graph,
    graph_energy,
    load_mace,
    mace_energy_fn,
    save_mace,
)
from godiff_jax.system import make_cluster_system, make_surface_system, pt111_heptamer

DATA = Path(__file__).parent / "data" / "mace"
sys.path.insert(0, str(DATA))
from make_fixtures import E0, ELEMENTS, structures  # noqa: E402

HAS_MACE = importlib.util.find_spec("mace") is not None and importlib.util.find_spec("torch")
live = pytest.mark.skipif(not HAS_MACE, reason="needs the mace extra (torch, mace-torch)")
N_NODES, N_EDGES = 24, 1600  # padded graph sizes that hold every test structure


def _e0(atoms) -> float:
    table = dict(zip(ELEMENTS, E0, strict=True))
    return sum(table[int(z)] for z in atoms.numbers)


def _graph_results(model, atoms_list):
    """Energies [B] and forces (list of [N_b, 3]) of structures as one vmapped program."""
    graphs = [atoms_graph(model, a, N_NODES, N_EDGES) for a in atoms_list]
    batch = jax.tree.map(lambda *a: np.stack(a), *graphs)
    e, g = jax.jit(jax.vmap(jax.value_and_grad(graph_energy(model))))(*batch)
    return np.asarray(e), [-np.asarray(g[k][: len(a)]) for k, a in enumerate(atoms_list)]


@pytest.mark.parametrize("arch", ["small", "medium"])
def test_fixture_parity(arch):
    """Energies within 1e-6 eV, forces within 1e-5 eV/Å of mace-torch in float64, on a
    Pt(111) slab with adatoms, a stepped surface and a molecule with Pt in a box; each has
    an interaction energy (total minus E0s) of at least 1 eV, so every block counts."""
    model = load_mace(DATA / f"{arch}.mace")
    ref = np.load(DATA / f"{arch}.npz")
    st = structures()
    energies, forces = _graph_results(model, list(st.values()))
    for k, (name, atoms) in enumerate(st.items()):
        e_ref = float(ref[f"{name}.energy"])
        assert abs(e_ref - _e0(atoms)) >= 1.0, name
        assert abs(energies[k] - e_ref) <= 1e-6, name
        assert np.max(np.abs(forces[k] - ref[f"{name}.forces"])) <= 1e-5, name


def _slab_system():
    """The fixture slab as a System: the slab the template, the two adatoms mobile."""
    atoms = structures()["slab_adatoms"]
    slab = atoms[:-2]
    system = make_surface_system(slab, "Pt2", (0.5, 4.0), name="slab_adatoms")
    return system, atoms.positions[-2:]


def test_system_energy_jit_vmap_and_float32():
    """`mace_energy_fn(system)`: the fixture slab's energy and adatom forces in float64;
    a jitted vmapped batch equals the structures one at a time; float32 within 2 meV."""
    model = load_mace(DATA / "small.mace")
    ref = np.load(DATA / "small.npz")
    system, x = _slab_system()
    energy = mace_energy_fn(system, model)
    rng = np.random.default_rng(0)
    xs = np.stack([x, x + rng.normal(0, 0.3, x.shape), x + [[3.0, 1.0, 0.5], [0, 0, 0]]])
    batch = jax.jit(jax.vmap(jax.value_and_grad(energy)))
    e, g = batch(jnp.asarray(xs))
    assert abs(float(e[0]) - float(ref["slab_adatoms.energy"])) <= 1e-6
    assert np.max(np.abs(-np.asarray(g[0]) - ref["slab_adatoms.forces"][-2:])) <= 1e-5
    assert np.ptp(np.asarray(e)) > 0.02  # the three structures differ
    one = jax.jit(jax.value_and_grad(energy))
    for k in range(len(xs)):
        e_k, g_k = one(jnp.asarray(xs[k]))
        assert abs(float(e_k) - float(e[k])) <= 1e-9
        np.testing.assert_allclose(np.asarray(g_k), np.asarray(g[k]), atol=1e-9)
    e32, g32 = batch(jnp.asarray(xs, jnp.float32))
    assert e32.dtype == jnp.float32 and g32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(e32, float), np.asarray(e), atol=2e-3)
    np.testing.assert_allclose(np.asarray(g32, float), np.asarray(g), atol=2e-3)


def test_neighbour_list_overflow_reallocates():
    """A neighbour list allocated too small gives NaN inside jit (never a wrong number);
    `MacePotential` sees the overflow, reallocates and returns mace-torch's numbers, and so
    does the ASE calculator built on it."""
    from godiff_jax.ase_interop import MACECalculator

    model = load_mace(DATA / "small.mace")
    ref = np.load(DATA / "small.npz")
    atoms = structures()["molecule_box"]
    pot = MacePotential(model, atoms.numbers, atoms.cell.array, atoms.pbc, capacity=10)
    (e_small, count), _ = pot._fn(10)(jnp.asarray(atoms.positions[None]))
    assert np.isnan(float(e_small[0])) and int(count[0]) > 10
    e, f = pot(atoms.positions)
    assert pot.capacity >= int(count[0])
    assert abs(e - float(ref["molecule_box.energy"])) <= 1e-6
    assert np.max(np.abs(f - ref["molecule_box.forces"])) <= 1e-5
    atoms.calc = MACECalculator(str(DATA / "small.mace"))
    assert abs(atoms.get_potential_energy() - float(ref["molecule_box.energy"])) <= 1e-6
    assert np.max(np.abs(atoms.get_forces() - ref["molecule_box.forces"])) <= 1e-5


def test_model_file_round_trip_and_errors(tmp_path):
    """save -> load keeps every array and the config; a damaged file, a file of another
    kind and an element the model does not know are refused with a reason."""
    model = load_mace(DATA / "medium.mace")
    save_mace(tmp_path / "m.mace", model)
    back = load_mace(tmp_path / "m.mace")
    assert back.config == model.config
    assert set(back.params) == set(model.params)
    for k, v in model.params.items():
        np.testing.assert_array_equal(back.params[k], v)
    data = bytearray((tmp_path / "m.mace").read_bytes())
    data[-100] ^= 1
    (tmp_path / "bad.mace").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        load_mace(tmp_path / "bad.mace")
    (tmp_path / "pickle.mace").write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError, match="pickle"):
        load_mace(tmp_path / "pickle.mace")
    with pytest.raises(MaceModelError, match="no element Au"):
        mace_energy_fn(make_cluster_system("Au2Pt", box=4.0), model)


def test_run_config_selects_mace(tmp_path):
    """`[energy] model = "mace:PATH"` (relative to the config file) runs inside jit with the
    ML energy floor scaled to the system; an unknown element or file is a ConfigError."""
    from godiff_jax.evaluate import JaxEvaluator
    from godiff_jax.run_config import (
        DEFAULT_FLOOR_PER_ATOM,
        ConfigError,
        make_evaluator,
        spec_from_dict,
    )

    data = {"system": {"builtin": "heptamer"}, "energy": {"model": "mace:mace/small.mace"}}
    spec = spec_from_dict(data, DATA.parent)
    assert spec.config.buffer.energy_floor == DEFAULT_FLOOR_PER_ATOM * spec.system.n_atoms
    assert isinstance(make_evaluator(spec), JaxEvaluator)
    data["energy"]["floor_per_atom"] = False
    assert spec_from_dict(data, DATA.parent).config.buffer.energy_floor is None
    gold = {"system": {"mobile": "Au3", "box": 6.0}, "energy": {"model": "mace:mace/small.mace"}}
    with pytest.raises(ConfigError, match="no element Au"):
        spec_from_dict(gold, DATA.parent)
    with pytest.raises(ConfigError, match="does not exist"):
        spec_from_dict({**data, "energy": {"model": "mace:nothing.mace"}}, tmp_path)


def test_convert_mace_command_without_torch(tmp_path, capsys):
    """`godiff convert-mace` names the extra when torch or mace-torch is missing."""
    if HAS_MACE:
        pytest.skip("the mace extra is installed")
    from godiff_jax.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["convert-mace", str(tmp_path / "x.model"), str(tmp_path / "x.mace")])
    assert stop.value.code == 2 and "godiff_jax[mace]" in capsys.readouterr().err


def test_heptamer_search_with_mace_runs_in_jit(tmp_path):
    """Two tiny iterations of the heptamer search with the random medium fixture inside
    the jitted program (the wiring, not the quality): every structure is in the database,
    the valid ones with finite, different energies."""
    from conftest import TINY

    from godiff_jax.evaluate import JaxEvaluator
    from godiff_jax.runner import run

    model = load_mace(DATA / "medium.mace")
    system = pt111_heptamer()
    run(
        system,
        TINY,
        tmp_path,
        evaluator=JaxEvaluator(mace_energy_fn(system, model)),
        seeds=[0],
        progress=False,
    )
    with ase.db.connect(tmp_path / "structures.db") as db:
        rows = list(db.select())
    assert len(rows) == TINY.n_iterations * TINY.sampler.n_samples
    valid = [r for r in rows if r.valid]
    energies = np.array([r.energy for r in valid])
    assert len(valid) >= 2 and np.all(np.isfinite(energies)) and np.ptp(energies) > 1e-3


# --------------------------------------------------------------------------------------
# Live: against mace-torch itself (the `mace` extra)


@live
def test_live_clebsch_gordan_signs():
    """Our wigner_3j is e3nn 0.4.4's for every l <= 3."""
    import mace  # noqa: F401  (sets up e3nn's torch loading)
    import torch
    from e3nn import o3

    from godiff_jax.potentials.mace.network import wigner_3j

    for l1 in range(4):
        for l2 in range(4):
            for l3 in range(abs(l1 - l2), min(l1 + l2, 3) + 1):
                ref = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
                np.testing.assert_allclose(wigner_3j(l1, l2, l3), ref, atol=1e-12)


@live
@pytest.mark.parametrize("arch", ["small", "medium", "large"])
def test_live_parity_mp0_sizes(arch, tmp_path):
    """MP-0 sizes (128 channels, radial MLP [64, 64, 64]), random O(1) weights: convert
    through a file, load without torch, compare with mace-torch on the three structures."""
    import torch
    from make_fixtures import build_model, torch_energy_forces

    from godiff_jax.potentials.mace.convert import convert

    torch_model = build_model(arch)
    torch.save(torch_model, tmp_path / "random.model")
    convert(tmp_path / "random.model", tmp_path / "random.mace")
    model = load_mace(tmp_path / "random.mace")
    st = structures()
    energies, forces = _graph_results(model, list(st.values()))
    for k, (name, atoms) in enumerate(st.items()):
        e_ref, f_ref, inter = torch_energy_forces(torch_model, atoms)
        assert abs(inter) >= 1.0, name
        print(
            f"{arch} {name}: interaction {inter:.3f} eV, |dE| {abs(energies[k] - e_ref):.2e}"
            f" eV, max |dF| {np.max(np.abs(forces[k] - f_ref)):.2e} eV/Å"
        )
        assert abs(energies[k] - e_ref) <= 1e-6, name
        assert np.max(np.abs(forces[k] - f_ref)) <= 1e-5, name


@live
def test_live_fixtures_are_mace_torch(tmp_path):
    """The committed fixtures are what the current mace-torch computes for their models."""
    from make_fixtures import FIXTURE, FIXTURE_ARCHS, build_model, torch_energy_forces

    for arch in FIXTURE_ARCHS:
        torch_model = build_model(arch, FIXTURE["channels"], FIXTURE["radial"], FIXTURE["seed"])
        ref = np.load(DATA / f"{arch}.npz")
        for name, atoms in structures().items():
            e, f, _ = torch_energy_forces(torch_model, atoms)
            assert abs(e - float(ref[f"{name}.energy"])) <= 1e-8, (arch, name)
            np.testing.assert_allclose(f, ref[f"{name}.forces"], atol=1e-8)
