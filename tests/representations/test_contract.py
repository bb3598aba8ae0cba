"""The contract every ``Representation`` inherits: protocol, declared losslessness, round trip."""

import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher

from crystalforge.representations.base import Representation
from crystalforge.representations.symmetry import WyckoffRepresentation
from crystalforge.representations.tokens import CrystalText
from crystalforge.representations.voxels import VoxelRepresentation
from crystalforge.testing import tiny_crystals

REPRESENTATIONS = [
    pytest.param(CrystalText(), id="text"),
    pytest.param(CrystalText(include_spacegroup=True), id="text+sg"),
    pytest.param(WyckoffRepresentation(), id="wyckoff"),
    pytest.param(VoxelRepresentation(grid_size=48), id="voxels"),
]

# Tight enough that a wrong site fails, loose enough for the stated precision of each encoding.
MATCHER = StructureMatcher(ltol=0.05, stol=0.05, angle_tol=1.0, primitive_cell=False, attempt_supercell=True)


@pytest.mark.parametrize("rep", REPRESENTATIONS)
def test_is_a_representation_with_a_name(rep):
    assert isinstance(rep, Representation)
    assert isinstance(rep.name, str) and rep.name
    assert isinstance(rep.lossless, bool)


@pytest.mark.parametrize("rep", REPRESENTATIONS)
@pytest.mark.parametrize("crystal", tiny_crystals(), ids=lambda c: c.material_id)
def test_round_trip_recovers_the_structure(rep, crystal):
    decoded = rep.decode(rep.encode(crystal))
    assert decoded.formula == crystal.formula
    assert MATCHER.fit(decoded.to_pymatgen(), crystal.to_pymatgen()), f"{rep.name} changed {crystal.material_id}"
    if rep.lossless and rep.name == "text":
        # exact at the stated precision: encoding the decoded crystal gives the same text
        assert rep.encode(decoded) == rep.encode(crystal)
