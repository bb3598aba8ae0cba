"""The autoregressive family: a decoder-only transformer over crystal text (CrystaLLM, MatterGPT).

Registered in ``crystalforge.registry`` as ``autoregressive`` (docs/models.md, "Autoregressive
transformer"). ``model`` is the family (config, resolve, build, loss, sampling plumbing);
``transformer`` the network with its KV cache; ``prefix`` the condition tokens; ``sequences`` the
training sequences; ``decoding`` the text-format constraints; ``sampler`` the batched decoder.
"""

from crystalforge.generative.autoregressive.model import (
    FAMILY,
    AutoregressiveConfig,
    CrystalAutoregressive,
    build_autoregressive,
    resolve_autoregressive,
)
from crystalforge.generative.autoregressive.transformer import CrystalGPT, KVCache

__all__ = [
    "FAMILY", "AutoregressiveConfig", "CrystalAutoregressive", "CrystalGPT", "KVCache", "build_autoregressive",
    "resolve_autoregressive",
]  # fmt: skip
