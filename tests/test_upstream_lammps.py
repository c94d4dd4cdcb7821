"""An imported upstream model with ZBL and per-edge-type cutoffs in LAMMPS: both need the species of
ghost atoms, which the deployed program receives by a width-1 species exchange. One rank equals
NequIPCalculator on the imported checkpoint; two ranks equal one rank (float64, 1e-10)."""
import numpy as np
import pytest

from test_deploy import cu_vacancy
from test_lammps import lammps_single_point, plugin, reference  # noqa: F401  (plugin is a fixture)
from test_upstream_import import perturbed
from nequip_fast.cli import main as cli_main
from nequip_fast.interop import upstream
from nequip_fast.interop.importer import TOLERANCE, convert
from nequip_fast.model import ModelConfig, save_model

SPECIES = ["Cu", "O"]
# fcc Cu a = 3.61: first shell 2.55, second 3.61. O sees 3.5 (no second shell), Cu sees O to 3.0.
UPSTREAM_STYLE = dict(species=SPECIES, r_max=4.0, num_layers=2, l_max=2, parity="natural", num_features=[6, 4, 2],
                      radial_mlp_depth=1, radial_mlp_width=8, num_bessels=6, bessel_trainable=False,
                      avg_num_neighbors={"Cu": 11.0, "O": 10.0}, readout_mlp_depth=0, dtype="float64",
                      per_species_scales=0.7, per_species_shifts=-1.5, zbl=True,
                      per_edge_type_cutoff={"Cu": {"O": 3.0}, "O": 3.5})


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(checkpoint, .pt2) of an upstream NequIPGNNModel converted by the importer, deployed by the CLI."""
    folder = tmp_path_factory.mktemp("imported")
    model, checks = convert(perturbed(upstream.build(ModelConfig.from_dict(UPSTREAM_STYLE), seed=3), seed=4))
    assert checks[0].worst < TOLERANCE, checks[0].line()
    assert model.config.zbl and model.config.per_edge_type_cutoff is not None
    checkpoint, pt2 = folder / "model.pt", folder / "model.pt2"
    save_model(model, checkpoint)
    assert cli_main(["deploy", str(checkpoint), str(pt2), "--backend", "cpu"]) == 0
    return checkpoint, pt2


def test_imported_zbl_cutoffs_model_one_and_two_ranks(plugin, imported, tmp_path):  # noqa: F811
    checkpoint, pt2 = imported
    atoms = cu_vacancy(seed=5).repeat((2, 1, 1))  # 62 atoms, 14.4 A along x: two slabs of 7.2 A
    for i in (3, 20, 40, 50):
        atoms.symbols[i] = "O"  # O-O pairs too: every edge type occurs, also across the slab boundary
    one = lammps_single_point(plugin, pt2, atoms, tmp_path / "one", ["O", "Cu"])
    expected = reference(checkpoint, atoms)
    for key in ("energy", "energies", "forces", "virial", "atomic_virial"):
        np.testing.assert_allclose(one[key], expected[key], rtol=1e-10, atol=1e-10, err_msg=key)
    two = lammps_single_point(plugin, pt2, atoms, tmp_path / "two", ["O", "Cu"], ranks=2, extra="processors 2 1 1")
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-10, atol=1e-10, err_msg=key)
