"""A character-level tokenizer (``CrystalTokenizer``) over the crystal text format of ``io.text``.

The tokenizer's vocabulary is fixed in code: special tokens, the keywords of the text format, the
118 element symbols, the digits, ``.``, ``-``, space and newline. Numbers are split into single
characters; element symbols are whole tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from crystalforge.core.crystal import Crystal
from crystalforge.core.elements import MAX_Z, z_to_symbol
from crystalforge.core.errors import CrystalError
from crystalforge.io.text import HEADER_PREFIX, LATTICE_KEYS, SPACEGROUP_KEY, CrystalText, header_line

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

# the format pieces are re-exported for token models (generative code may not import io)
__all__ = ["HEADER_PREFIX", "LATTICE_KEYS", "CrystalText", "CrystalTokenizer", "header_line"]


# ---- tokenizer ------------------------------------------------------------------------------------
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
KEYWORDS = (HEADER_PREFIX, SPACEGROUP_KEY, *LATTICE_KEYS)
CHARACTERS = (*"0123456789", ".", "-", " ", "\n")


class CrystalTokenizer:
    """Token ids for ``CrystalText`` strings, with a vocabulary fixed in code.

    Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then the keywords (``data_``, ``sg``,
    ``a``, ``b``, ``c``, ``alpha``, ``beta``, ``gamma``), the element symbols in order of Z, the
    digits, ``.``, ``-``, space and newline. Keywords are recognised at the start of a line (longest
    first); element symbols wherever an upper-case letter starts one (two-letter symbols first).
    Any other character becomes ``<unk>``.

    Args:
        text: The text format used by ``encode_crystal`` / ``decode_crystal`` (default settings if None).

    """

    def __init__(self, text: CrystalText | None = None) -> None:
        self.text = text if text is not None else CrystalText()
        symbols = tuple(z_to_symbol(z) for z in range(1, MAX_Z + 1))
        self._tokens: tuple[str, ...] = (*SPECIAL_TOKENS, *KEYWORDS, *symbols, *CHARACTERS)
        self._ids: dict[str, int] = {tok: i for i, tok in enumerate(self._tokens)}
        if len(self._ids) != len(self._tokens):  # pragma: no cover - guards edits of the vocabulary
            raise RuntimeError("the tokenizer vocabulary has duplicate tokens")
        self._keywords = sorted(KEYWORDS, key=len, reverse=True)
        self._symbols = frozenset(symbols)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self._ids[t] for t in SPECIAL_TOKENS)

    # ---- vocabulary -----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of tokens."""
        return len(self._tokens)

    @property
    def tokens(self) -> tuple[str, ...]:
        """All tokens, indexed by id."""
        return self._tokens

    def token_to_id(self, token: str) -> int:
        """Id of one token; raises ``KeyError`` for a string that is not a token."""
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in the tokenizer vocabulary") from None

    def id_to_token(self, token_id: int) -> str:
        """Token of one id; raises ``KeyError`` for an id outside ``0..vocab_size-1``."""
        if not 0 <= int(token_id) < self.vocab_size:
            raise KeyError(f"token id {token_id} is outside 0..{self.vocab_size - 1}")
        return self._tokens[int(token_id)]

    # ---- text ⇄ ids -----------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into tokens (unknown characters become ``<unk>``)."""
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if i == 0 or text[i - 1] == "\n":
                keyword = next((k for k in self._keywords if text.startswith(k, i)), None)
                if keyword is not None:
                    out.append(keyword)
                    i += len(keyword)
                    continue
            char = text[i]
            if char.isupper():
                if text[i : i + 2] in self._symbols:
                    out.append(text[i : i + 2])
                    i += 2
                    continue
                if char in self._symbols:
                    out.append(char)
                    i += 1
                    continue
            out.append(char if char in CHARACTERS else UNK)
            i += 1
        return out

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_special`` wrapped in ``<bos>`` … ``<eos>``."""
        ids = [self._ids[tok] for tok in self.tokenize(text)]
        return [self.bos_id, *ids, self.eos_id] if add_special else ids

    def decode(self, ids: Sequence[int] | np.ndarray | Tensor) -> str:
        """Text of token ids, skipping ``<pad>``, ``<bos>`` and ``<eos>``.

        ``<unk>`` is written as the literal ``"<unk>"`` so that text holding it never parses as a
        crystal; ids outside the vocabulary raise ``KeyError``.
        """
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return "".join(self.id_to_token(i) for i in _as_int_list(ids) if i not in skip)

    # ---- crystal ⇄ ids --------------------------------------------------------------------
    def encode_crystal(self, crystal: Crystal, *, add_special: bool = True) -> list[int]:
        """Token ids of ``crystal`` via ``self.text``; by default wrapped in ``<bos>`` … ``<eos>``."""
        return self.encode(self.text.encode(crystal), add_special=add_special)

    def decode_crystal(self, ids: Sequence[int] | np.ndarray | Tensor, *, source: str | None = None) -> Crystal:
        """Read a crystal from token ids, up to the first ``<eos>`` (a generated tail is ignored).

        Raises ``CrystalError`` for ids outside the vocabulary or text that does not parse
        (``<unk>`` tokens always make it fail).
        """
        values = _as_int_list(ids)
        if self.eos_id in values:
            values = values[: values.index(self.eos_id)]
        bad = [i for i in values if not 0 <= i < self.vocab_size]
        if bad:
            raise CrystalError(f"token id {bad[0]} is outside 0..{self.vocab_size - 1}", source=source)
        return self.text.decode(self.decode(values), source=source)


def _as_int_list(ids: Sequence[int] | np.ndarray | Tensor) -> list[int]:
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    return [int(i) for i in np.asarray(ids).reshape(-1).tolist()]
