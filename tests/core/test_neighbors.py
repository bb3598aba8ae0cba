import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crystalforge import Crystal, CrystalBatch
from crystalforge.core.neighbors import PeriodicEdges, knn_graph, radius_graph
from crystalforge.testing import (
    assert_cell_choice_invariant,
    assert_periodic_translation_invariant,
    assert_permutation_equivariant,
    assert_rotation_equivariant,
    crystals,
    tiny_batch,
)


def _edge_set(edges, offset=0):
    out = set()
    for (i, j), s, d in zip(
        edges.edge_index.T.tolist(), edges.cell_shift.tolist(), edges.distances.tolist(), strict=True
    ):
        out.add((i - offset, j - offset, *s, round(d, 6)))
    return out


def _pymatgen_set(crystal: Crystal, cutoff: float):
    s = crystal.to_pymatgen()
    centre, point, offsets, dist = s.get_neighbor_list(cutoff, exclude_self=True)
    return {
        (int(i), int(j), *map(int, o), round(float(d), 6))
        for i, j, o, d in zip(centre, point, offsets, dist, strict=True)
    }


def _near_cutoff(pairs, cutoff):
    return {p for p in pairs if abs(p[-1] - cutoff) < 1e-5}


@settings(max_examples=40, deadline=None)
@given(crystals(max_atoms=5), st.floats(1.0, 9.0))
def test_radius_graph_matches_pymatgen(crystal, cutoff):
    batch = CrystalBatch.collate([crystal], dtype=torch.float64)
    ours = _edge_set(radius_graph(batch, cutoff))
    theirs = _pymatgen_set(crystal, cutoff)
    # pairs within 1e-5 Å of the cutoff may fall either side in the two implementations
    assert ours - _near_cutoff(ours, cutoff) == theirs - _near_cutoff(theirs, cutoff)


def test_radius_graph_exact_for_skewed_cell_and_cutoff_larger_than_cell():
    lattice = np.array([[2.6, 0.0, 0.0], [2.4, 1.0, 0.0], [2.3, 0.8, 0.9]])  # very skewed, tiny planes
    crystal = Crystal([6, 8], [[0.1, 0.2, 0.3], [0.7, 0.4, 0.9]], lattice)
    batch = CrystalBatch.collate([crystal], dtype=torch.float64)
    for cutoff in (3.0, 7.5):
        assert _edge_set(radius_graph(batch, cutoff)) == _pymatgen_set(crystal, cutoff)


def test_batched_equals_one_by_one_and_chunking_changes_nothing():
    batch = tiny_batch()
    full = radius_graph(batch, 6.0)
    tiny_chunks = radius_graph(batch, 6.0, max_candidates=50)
    assert torch.equal(full.edge_index, tiny_chunks.edge_index)
    assert torch.equal(full.cell_shift, tiny_chunks.cell_shift)
    offset = 0
    for crystal in batch.split():
        single = radius_graph(CrystalBatch.collate([crystal], dtype=torch.float64), 6.0)
        mask = (full.edge_index[0] >= offset) & (full.edge_index[0] < offset + crystal.num_atoms)
        part = PeriodicEdges(full.edge_index[:, mask], full.cell_shift[mask], full.vectors[mask], full.distances[mask])
        assert _edge_set(single) == _edge_set(part, offset)
        offset += crystal.num_atoms


def test_vectors_are_consistent_with_shifts():
    batch = tiny_batch()
    e = radius_graph(batch, 5.0)
    i, j = e.edge_index
    lat = batch.lattice[batch.crystal_idx[i]]
    expected = batch.cart_coords[j] + (e.cell_shift.double()[:, None, :] @ lat)[:, 0] - batch.cart_coords[i]
    torch.testing.assert_close(e.vectors, expected)
    assert bool((e.distances > 0).all())


def test_one_atom_cell_sees_its_own_images():
    batch = tiny_batch().index_select([0])  # simple cubic, a = 3.359
    e = radius_graph(batch, 3.4)
    assert e.num_edges == 6
    assert bool((e.edge_index == 0).all())
    torch.testing.assert_close(e.distances, torch.full((6,), 3.359, dtype=torch.float64))


def test_knn_has_k_edges_per_atom_and_the_k_smallest_distances():
    batch = tiny_batch()
    k = 7
    e = knn_graph(batch, k)
    counts = torch.bincount(e.edge_index[0], minlength=batch.atomic_numbers.shape[0])
    assert bool((counts == k).all())
    big = radius_graph(batch, 12.0)
    for atom in range(batch.atomic_numbers.shape[0]):
        ref = torch.sort(big.distances[big.edge_index[0] == atom]).values[:k]
        torch.testing.assert_close(e.distances[e.edge_index[0] == atom], ref)


def _knn_distances(batch, k=6):
    e = knn_graph(batch, k)
    return {"d": e.distances.view(-1, k)}


def _neighbour_counts(batch):
    e = radius_graph(batch, 4.5)
    return {"count": torch.bincount(e.edge_index[0], minlength=batch.atomic_numbers.shape[0]).double()}


@pytest.mark.parametrize("fn", [_knn_distances, _neighbour_counts])
def test_neighbour_sets_are_invariant(fn):
    batch = tiny_batch()
    assert_permutation_equivariant(fn, batch)
    assert_rotation_equivariant(fn, batch, kind="scalar")
    assert_periodic_translation_invariant(fn, batch)
    assert_cell_choice_invariant(fn, batch)


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        radius_graph(tiny_batch(), 0.0)
    with pytest.raises(ValueError, match="k must"):
        knn_graph(tiny_batch(), 0)


def test_a_near_flat_cell_is_refused_not_searched():
    from crystalforge.core.neighbors import MAX_IMAGES, image_counts, searchable

    flat = torch.tensor([[[4.0, 0, 0], [0, 4.0, 0], [4.0, 4.0, 1e-3]]], dtype=torch.float64)  # plane spacing ~1e-3 Å
    good = 4.0 * torch.eye(3, dtype=torch.float64)[None]
    batch = CrystalBatch(
        atomic_numbers=torch.tensor([6, 6]), frac_coords=torch.zeros(2, 3, dtype=torch.float64),
        lattice=torch.cat([good, flat]), num_atoms=torch.tensor([1, 1]), material_ids=("ok", "flat"),
    )  # fmt: skip
    assert searchable(batch, 5.0).tolist() == [True, False]
    assert float(image_counts(batch, 5.0)[1]) > MAX_IMAGES
    with pytest.raises(ValueError, match=r"crystal 1 .*flat.*too thin"):
        radius_graph(batch, 5.0)
    assert radius_graph(batch.index_select([0]), 5.0).num_edges > 0
