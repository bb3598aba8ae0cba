import math

import pytest
import torch

from crystalforge.core.elements import MASK_Z, TypeVocabulary
from crystalforge.nn.embeddings import (
    TimeEmbedding,
    TypeEmbedding,
    frac_fourier_basis,
    lattice_shape_features,
    sinusoidal_embedding,
)
from crystalforge.representations.graph import fourier_features
from crystalforge.testing import tiny_batch


def test_sinusoidal_embedding_shapes_and_range():
    t = torch.tensor([0.0, 0.3, 1.0])
    for dim in (8, 9):
        out = sinusoidal_embedding(t, dim)
        assert out.shape == (3, dim) and bool((out.abs() <= 1).all())
    out = sinusoidal_embedding(t, 8)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    assert TimeEmbedding(8, 16)(t.double()).shape == (3, 16)


def test_type_embedding_maps_atomic_numbers_through_vocabulary():
    vocab = TypeVocabulary((1, 8, 26))
    emb = TypeEmbedding(vocab, 4)
    z = torch.tensor([MASK_Z, 8, 26, 1])
    assert emb.classes(z).tolist() == [0, 2, 3, 1]
    torch.testing.assert_close(emb(z), emb.embedding.weight[[0, 2, 3, 1]])
    one_hot = torch.nn.functional.one_hot(emb.classes(z), vocab.size).float()
    torch.testing.assert_close(emb(probs=one_hot), emb(z))
    with pytest.raises(ValueError, match="not in the backbone's type vocabulary"):
        emb(torch.tensor([2]))
    with pytest.raises(ValueError, match="shape"):
        emb(probs=torch.ones(2, 3))


def test_fourier_basis_matches_graph_features_and_is_periodic():
    d = torch.rand(7, 3, dtype=torch.float64) - 0.5
    feats, deriv = frac_fourier_basis(d, 3)
    torch.testing.assert_close(feats, fourier_features(d, 3))
    feats2, deriv2 = frac_fourier_basis(d + torch.randint(-2, 3, (7, 3)), 3)
    torch.testing.assert_close(feats2, feats)
    torch.testing.assert_close(deriv2, deriv)
    # derivative directions are d/dΔf of the sin/cos features, divided by 2πk
    d.requires_grad_(True)
    sin_k2 = torch.sin(2 * math.pi * 2 * d[:, 0]).sum()
    (grad,) = torch.autograd.grad(sin_k2, d)
    torch.testing.assert_close(grad[:, 0] / (2 * math.pi * 2), deriv[:, 0, 1])


def test_lattice_shape_features_are_scale_free_except_volume():
    batch = tiny_batch()
    feats = lattice_shape_features(batch.lattice, batch.num_atoms)
    scaled = lattice_shape_features(2.0 * batch.lattice, batch.num_atoms)
    assert feats.shape == (batch.num_crystals, 8)
    torch.testing.assert_close(scaled[:, :6], feats[:, :6])
    torch.testing.assert_close(scaled[:, 6] - feats[:, 6], torch.full_like(feats[:, 6], math.log(8.0)))
    degenerate = torch.zeros(1, 3, 3, dtype=torch.float64)
    assert bool(torch.isfinite(lattice_shape_features(degenerate, torch.tensor([4]))).all())
