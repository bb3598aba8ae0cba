import torch

from crystalforge.representations.graph import fourier_features, in_cell_graph, lattice_gram_features
from crystalforge.testing import (
    assert_cell_choice_invariant,
    assert_periodic_translation_invariant,
    assert_permutation_equivariant,
    assert_rotation_equivariant,
    tiny_batch,
)


def test_in_cell_graph_has_all_ordered_pairs():
    batch = tiny_batch()
    g = in_cell_graph(batch)
    n = batch.num_atoms
    assert g.edge_index.shape[1] == int((n * n - n).sum())
    assert bool((batch.crystal_idx[g.edge_index[0]] == batch.crystal_idx[g.edge_index[1]]).all())
    assert bool((g.edge_index[0] != g.edge_index[1]).all())
    assert bool(((g.frac_diff >= -0.5) & (g.frac_diff < 0.5)).all())
    assert in_cell_graph(batch, self_loops=True).edge_index.shape[1] == int((n * n).sum())


def _edge_feature_sums(batch):
    g = in_cell_graph(batch)
    feats = fourier_features(g.frac_diff, 4)
    per_atom = torch.zeros(batch.atomic_numbers.shape[0], feats.shape[1], dtype=feats.dtype).index_add_(
        0, g.edge_index[0], feats
    )
    return {"atom": per_atom, "gram": lattice_gram_features(batch.lattice)}


def test_in_cell_features_are_invariant():
    batch = tiny_batch()
    assert_permutation_equivariant(_edge_feature_sums, batch)
    assert_rotation_equivariant(_edge_feature_sums, batch, kind="scalar")
    assert_periodic_translation_invariant(_edge_feature_sums, batch)


def test_fourier_features_are_periodic():
    d = torch.rand(10, 3, dtype=torch.float64) - 0.5
    torch.testing.assert_close(fourier_features(d, 3), fourier_features(d + 1.0, 3))
    assert fourier_features(d, 3).shape == (10, 18)


def test_gram_features_depend_on_cell_choice_as_documented():
    # L Lᵀ changes with the choice of lattice vectors: backbones using it are not basis-invariant.
    import pytest

    with pytest.raises(AssertionError):
        assert_cell_choice_invariant(lambda b: lattice_gram_features(b.lattice), tiny_batch())
