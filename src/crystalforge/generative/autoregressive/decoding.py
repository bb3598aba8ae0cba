"""The text format as a token grammar: which tokens may come next, which are fixed, what slot is open.

``RowDecoder`` follows one sequence through ``io.text``'s format (tokenized by
``representations.tokens``). About half the tokens are fixed by the format alone: ``data_``, the
lattice keywords, spaces, the ``0.`` of every fractional coordinate, line ends after a number's
last decimal. The decoder writes those itself (they are in ``tokens``, never fed to the model);
the model reads and predicts only the open tokens, each tagged with the **slot** it fills (header,
integer part of lattice line k, decimal j of line k, site element, decimal j of coordinate c), so
the network knows what it is writing without counting characters. ``model_stream`` is the same
walk over the tokens of a known crystal: the open tokens and their slots, for training.

Before each open token, ``allowed()`` gives the ids the format allows (the sampler sets every other
logit to ``-inf``), so sampled sequences always have the format's shape:

* header (open): CSP: every token given (the template's composition, in its atom order). DNG:
  elements from the allowed set, each at most once, counts held to sum to exactly the template's
  ``n`` (a digit only if the header can still be completed to ``n``; the newline only at ``n``);
* lattice lines: an integer part (no leading zero: lengths from 1 to 999 Å, angles from 1 to 179°),
  ``.``, the format's decimals;
* sites: an element with atoms left in the header's composition, then the coordinates' decimals;
  ``<eos>`` exactly when no atom is left.

What the grammar cannot check is left to decoding (``io.text``): angles that form no cell, for example.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crystalforge.core.elements import MAX_Z, z_to_symbol
from crystalforge.core.errors import CrystalError
from crystalforge.representations.tokens import HEADER_PREFIX, LATTICE_KEYS, CrystalTokenizer, header_line

__all__ = ["FormatTables", "RowDecoder", "model_stream"]

# item codes: _FIXED is written by the decoder; the others are open slots the model fills
_FIXED, _GIVEN, _DIGIT, _INTEGER, _HEADER, _SITE = range(6)
_MAX_LENGTH, _MAX_ANGLE = 999, 179  # largest integer parts: lengths below 1000 Å, angles below 180°

Item = tuple[int, int, int]
"""``(code, token id or 0, slot)`` on a decoder's stack."""


class FormatTables:
    """The token ids the format is made of and the slot numbering, built once per tokenizer.

    Slots are numbered from 1 (0 is "no slot": prefix positions): the header, then per lattice line
    its integer part and each decimal, then the site element and each coordinate decimal.
    """

    def __init__(self, tokenizer: CrystalTokenizer) -> None:
        ids = tokenizer.token_to_id
        text = tokenizer.text
        self.tokenizer = tokenizer
        self.digits = np.array([ids(str(d)) for d in range(10)], dtype=np.int64)
        self.digit_value = {int(t): d for d, t in enumerate(self.digits)}
        self.dot, self.space, self.newline = ids("."), ids(" "), ids("\n")
        self.eos, self.pad = tokenizer.eos_id, tokenizer.pad_id
        self.element_token = np.array([-1] + [ids(z_to_symbol(z)) for z in range(1, MAX_Z + 1)], dtype=np.int64)
        self.z_of_token = {int(t): z for z, t in enumerate(self.element_token) if z > 0}
        self.single = {t: np.array([t], dtype=np.int64) for t in range(tokenizer.vocab_size)}
        self.integer_with_dot = np.append(self.digits, self.dot)
        self.all_elements = tuple(range(1, MAX_Z + 1))
        decimals = [text.length_decimals] * 3 + [text.angle_decimals] * 3
        self.header_slot = 1
        self.integer_slot = [2 + k + sum(decimals[:k]) for k in range(6)]
        self.site_slot = self.integer_slot[-1] + decimals[-1] + 1
        self.num_slots = self.site_slot + 3 * text.coord_decimals + 1
        # the header and the six lattice lines, then (per site) the items after the site's element
        self.opening_items: list[Item] = [(_FIXED, ids(HEADER_PREFIX), 0), (_HEADER, 0, self.header_slot)]
        for k, key in enumerate(LATTICE_KEYS):
            largest = _MAX_LENGTH if k < 3 else _MAX_ANGLE
            self.opening_items += [(_FIXED, ids(key), 0), (_FIXED, self.space, 0)]
            self.opening_items.append((_INTEGER, largest, self.integer_slot[k]))
            self.opening_items += [(_DIGIT, 0, self.integer_slot[k] + 1 + j) for j in range(decimals[k])]
            self.opening_items.append((_FIXED, self.newline, 0))
        self.site_items: list[Item] = []
        for c in range(3):
            self.site_items += [(_FIXED, self.space, 0), (_FIXED, int(self.digits[0]), 0), (_FIXED, self.dot, 0)]
            first = self.site_slot + 1 + c * text.coord_decimals
            self.site_items += [(_DIGIT, 0, first + j) for j in range(text.coord_decimals)]
        self.site_items.append((_FIXED, self.newline, 0))


class RowDecoder:
    """One sequence's place in the format: ``allowed()`` and ``slot`` before each open token, ``push`` after.

    Args:
        tables: the format's ids.
        num_atoms: the crystal's size ``n``.
        composition: CSP: ``[(Z, count), ...]`` in header order (counts sum to ``n``); None: DNG.
        elements: DNG: the atomic numbers the header may use.

    """

    def __init__(
        self,
        tables: FormatTables,
        *,
        num_atoms: int,
        composition: Sequence[tuple[int, int]] | None = None,
        elements: Sequence[int] = (),
    ) -> None:
        self.t = tables
        self.tokens: list[int] = []  # the whole text so far, fixed tokens included
        self.remaining: dict[int, int] = {}
        items = list(tables.opening_items)
        self._int_digits, self._int_value = 0, 0
        self._available = sorted({int(z) for z in elements})
        self._used: list[int] = []
        self._counts: list[int] = []
        self._partial, self._left = 0, num_atoms
        if composition is None:
            if not self._available:
                raise ValueError("no element is allowed: nothing to generate")
        else:
            if sum(c for _, c in composition) != num_atoms:
                raise ValueError(f"composition {list(composition)} does not have {num_atoms} atoms")
            header = header_line({z_to_symbol(z): n for z, n in composition}) + "\n"
            given = tables.tokenizer.encode(header)[1:]  # after "data_"
            items[1:2] = [(_GIVEN, t, tables.header_slot) for t in given]
            self.remaining = {int(z): int(c) for z, c in composition}
        self.stack: list[Item] = [(_SITE, 0, tables.site_slot), *reversed(items)]
        self._write_fixed()

    @property
    def finished(self) -> bool:
        """True once ``<eos>`` was pushed."""
        return not self.stack

    @property
    def slot(self) -> int:
        """The open slot the next token fills (0 once finished)."""
        return self.stack[-1][2] if self.stack else 0

    def _write_fixed(self) -> None:
        while self.stack and self.stack[-1][0] == _FIXED:
            self.tokens.append(self.stack.pop()[1])

    # ---- what may come next ---------------------------------------------------------------------
    def allowed(self) -> np.ndarray:
        """Token ids allowed in the open slot (``[k]`` int64, never empty; ``<pad>`` once finished)."""
        if not self.stack:
            return self.t.single[self.t.pad]
        code, value, _ = self.stack[-1]
        if code == _GIVEN:
            return self.t.single[value]
        if code == _DIGIT:
            return self.t.digits
        if code == _INTEGER:  # 1 … ``value`` (no leading zero)
            if self._int_digits == 0:
                return self.t.digits[1:]
            p = self._int_value
            if p * 10 > value:
                return self.t.single[self.t.dot]
            top = min(9, value - p * 10)
            return self.t.integer_with_dot if top == 9 else np.append(self.t.digits[: top + 1], self.t.dot)
        if code == _HEADER:
            return self._header_allowed()
        left = [z for z, c in self.remaining.items() if c > 0]
        return self.t.element_token[left] if left else self.t.single[self.t.eos]

    def _header_allowed(self) -> np.ndarray:
        free = [z for z in self._available if z not in self._used]
        if not self._used:  # right after "data_"
            return self.t.element_token[free]
        p, r = self._partial, self._left
        out = [int(self.t.digits[d]) for d in range(10) if 1 <= p * 10 + d <= r and _completable(p * 10 + d, r, free)]
        if p >= 1:
            if p == r:
                out.append(self.t.newline)
            elif free:
                out += self.t.element_token[free].tolist()
        return np.asarray(out, dtype=np.int64)

    # ---- taking a token -------------------------------------------------------------------------
    def push(self, token: int, *, check: bool = True) -> None:
        """Fill the open slot with ``token`` (with ``check``, one of ``allowed()`` or a ``ValueError``)."""
        token = int(token)
        if check and token not in self.allowed():
            raise ValueError(f"token {self.t.tokenizer.id_to_token(token)!r} is not allowed here")
        if not self.stack:
            return
        self.tokens.append(token)
        code = self.stack[-1][0]
        if code in (_GIVEN, _DIGIT):
            self.stack.pop()
        elif code == _INTEGER:
            if token == self.t.dot:
                self.stack.pop()
                self._int_digits, self._int_value = 0, 0
            else:
                self._int_value = self._int_value * 10 + self.t.digit_value[token]
                self._int_digits += 1
        elif code == _HEADER:
            self._push_header(token)
        else:
            self.stack.pop()
            if token != self.t.eos:
                z = self.t.z_of_token[token]
                self.remaining[z] = self.remaining.get(z, 0) - 1
                self.stack.append((_SITE, 0, self.t.site_slot))
                self.stack += reversed(self.t.site_items)
        self._write_fixed()

    def _push_header(self, token: int) -> None:
        if token in self.t.digit_value:
            self._partial = self._partial * 10 + self.t.digit_value[token]
            return
        if self._used:  # an element or the newline ends the count before it
            self._counts.append(self._partial)
            self._left -= self._partial
            self._partial = 0
        if token == self.t.newline:
            self.stack.pop()
            self.remaining = dict(zip(self._used, self._counts, strict=True))
        else:
            self._used.append(self.t.z_of_token[token])


def _completable(q: int, r: int, free: Sequence[int]) -> bool:
    """Whether a count reading ``q`` so far can still end a header with ``r`` atoms left."""
    return q == r or (q < r and (bool(free) or str(r).startswith(str(q))))


def model_stream(
    tables: FormatTables, text_ids: Sequence[int], num_atoms: int, *, source: str | None = None
) -> tuple[list[int], list[int]]:
    """The open tokens of a crystal's text (``<eos>`` last) and the slot of each.

    ``text_ids``: the tokenizer's ids of the text, ``<eos>`` last (no ``<bos>``). Raises
    ``CrystalError`` for text the grammar does not produce (a lattice length of 1000 Å or more).
    """
    decoder = RowDecoder(tables, num_atoms=num_atoms, elements=tables.all_elements)
    tokens, slots = [], []
    try:
        while not decoder.finished and len(decoder.tokens) < len(text_ids):
            slots.append(decoder.slot)
            tokens.append(int(text_ids[len(decoder.tokens)]))
            decoder.push(tokens[-1], check=False)
    except (KeyError, ValueError):  # a token the open slot cannot take
        problem = f"its text does not follow the token grammar (at token {len(decoder.tokens)})"
        raise CrystalError(problem, source=source) from None
    if decoder.tokens != list(text_ids):
        at = next((i for i, (a, b) in enumerate(zip(decoder.tokens, text_ids, strict=False)) if a != b), None)
        raise CrystalError(f"its text does not follow the token grammar (at token {at})", source=source)
    return tokens, slots
