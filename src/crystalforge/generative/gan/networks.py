"""The generator and the critic of MatGAN: small MLPs over composition matrices.

The generator maps a standard-normal latent ``z`` to logits ``[B, E, C]`` over each element row's
counts; the composition is the row-wise argmax, so all its randomness is in ``z``. In training the
critic sees that one-hot matrix with a straight-through gradient (like the data's matrices). Two
alternatives were tried on mp_20 (30 epochs): the softmax itself fed to the critic (WGAN-GP's text
experiments) collapsed to empty compositions (each row's most likely count is 0 in the data, and
the critic was satisfied by soft rows), and Gumbel-max row sampling gave fewer usable compositions
(67 % against 81 %, more than max_atoms atoms more often) for more unique ones.

The critic is an MLP on the flattened matrix
with LeakyReLU and no normalisation layer, since the gradient penalty is taken per sample (Gulrajani et al. 2017).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from crystalforge.core.elements import TypeVocabulary
from crystalforge.nn.embeddings import deep_mlp

__all__ = ["Critic", "Generator"]


class Generator(nn.Module):
    """``z [B, latent_dim]`` → count distributions ``[B, E, C]`` per element row.

    Args:
        latent_dim: size of the standard-normal input.
        hidden: width of the hidden layers.
        layers: number of hidden layers.
        vocabulary: the elements of the rows (``type_vocabulary``, read by element-set steering).
        num_classes: ``C``, counts 0..C-1.

    """

    def __init__(self, latent_dim: int, hidden: int, layers: int, vocabulary: TypeVocabulary, num_classes: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.type_vocabulary = vocabulary
        self.num_elements = len(vocabulary.atomic_numbers)
        self.num_classes = num_classes
        self.net = deep_mlp(latent_dim, hidden, self.num_elements * num_classes, layers=layers, activation=nn.ReLU)

    def logits(self, z: Tensor) -> Tensor:
        """Logits ``[B, E, C]`` of each row's count."""
        flat: Tensor = self.net(z)
        return flat.reshape(z.shape[0], self.num_elements, self.num_classes)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The composition of each latent: ``(matrix [B, E, C], counts [B, E])``.

        ``counts`` is each row's most likely count; ``matrix`` is its one-hot row carrying the
        straight-through gradient of ``softmax(logits)`` (Bengio et al. 2013): the critic judges
        exactly the discrete compositions that sampling returns, and the generator still gets a gradient.
        """
        logits = self.logits(z)
        soft = logits.softmax(dim=-1)
        counts = logits.argmax(dim=-1)
        hard = nn.functional.one_hot(counts, self.num_classes).to(soft.dtype)
        return hard + soft - soft.detach(), counts


class Critic(nn.Module):
    """Composition matrices ``[B, E, C]`` → one score per crystal ``[B]`` (higher: more like data)."""

    def __init__(self, num_elements: int, num_classes: int, hidden: int, layers: int) -> None:
        super().__init__()
        leaky = partial(nn.LeakyReLU, 0.2)  # the WGAN-GP slope
        self.net = deep_mlp(num_elements * num_classes, hidden, 1, layers=layers, activation=leaky)

    def forward(self, matrix: Tensor) -> Tensor:
        """The critic's score of each matrix."""
        score: Tensor = self.net(matrix.flatten(1))
        return score.squeeze(-1)
