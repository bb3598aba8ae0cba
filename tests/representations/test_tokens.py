from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from crystalforge.core.crystal import Crystal
from crystalforge.core.elements import MAX_Z, z_to_symbol
from crystalforge.core.errors import CrystalError
from crystalforge.core.lattice import lattice_to_params, metric_tensor
from crystalforge.core.periodic import pbc_diff
from crystalforge.representations.base import Representation
from crystalforge.representations.tokens import CrystalText, CrystalTokenizer
from crystalforge.testing import crystals, tiny_crystals

SLACK = 1e-9
TINY = tiny_crystals()
TINY_IDS = [c.material_id for c in TINY]

SRTIO3 = """data_Sr1Ti1O3
sg 221
a 3.905
b 3.905
c 3.905
alpha 90.00
beta 90.00
gamma 90.00
Sr 0.0000 0.0000 0.0000
Ti 0.5000 0.5000 0.5000
O 0.5000 0.5000 0.0000
O 0.5000 0.0000 0.5000
O 0.0000 0.5000 0.5000
"""


def assert_within_precision(decoded: Crystal, original: Crystal, codec: CrystalText) -> None:
    tol = codec.tolerance
    np.testing.assert_array_equal(decoded.atomic_numbers, original.atomic_numbers)
    lengths, angles = lattice_to_params(decoded.lattice)
    lengths0, angles0 = lattice_to_params(original.lattice)
    assert np.abs(lengths - lengths0).max() <= tol["length"] + SLACK
    assert np.abs(angles - angles0).max() <= tol["angle"] + SLACK
    frac_err = np.abs(pbc_diff(decoded.frac_coords, original.frac_coords)).max()
    assert frac_err <= tol["frac"] + SLACK


# ---- the text format ------------------------------------------------------------------------------
def test_is_a_lossless_representation():
    codec = CrystalText()
    assert isinstance(codec, Representation)
    assert codec.name == "text"
    assert codec.lossless is True


def test_reads_the_documented_example():
    crystal = CrystalText().decode(SRTIO3)
    assert crystal.composition == {"Sr": 1, "Ti": 1, "O": 3}
    np.testing.assert_allclose(metric_tensor(crystal.lattice), np.eye(3) * 3.905**2, atol=1e-12)
    np.testing.assert_allclose(crystal.frac_coords[1], [0.5, 0.5, 0.5])
    assert CrystalText(include_spacegroup=True).encode(crystal) == SRTIO3


def test_encode_writes_the_format():
    text = CrystalText().encode(TINY[2])  # NaCl conventional cell
    lines = text.split("\n")
    assert text.endswith("\n")
    assert lines[:7] == ["data_Na4Cl4", "a 5.640", "b 5.640", "c 5.640", "alpha 90.00", "beta 90.00", "gamma 90.00"]
    assert lines[7] == "Na 0.0000 0.0000 0.0000"
    assert len(lines) == 7 + 8 + 1


@pytest.mark.parametrize("crystal", TINY, ids=TINY_IDS)
@pytest.mark.parametrize("include_spacegroup", [False, True])
def test_tiny_crystals_round_trip(crystal: Crystal, include_spacegroup: bool):
    codec = CrystalText(include_spacegroup=include_spacegroup)
    text = codec.encode(crystal)
    decoded = codec.decode(text)
    assert_within_precision(decoded, crystal, codec)
    assert codec.encode(decoded) == text


def test_spacegroup_line():
    codec = CrystalText(include_spacegroup=True)
    numbers = [codec.encode(c).split("\n")[1] for c in TINY]
    assert numbers[:3] == ["sg 221", "sg 227", "sg 225"]
    assert numbers[3] == "sg 1"


@settings(max_examples=60, deadline=None)
@given(crystal=crystals(max_atoms=8))
def test_random_crystals_round_trip_and_idempotent(crystal: Crystal):
    codec = CrystalText()
    text = codec.encode(crystal)
    decoded = codec.decode(text)
    assert_within_precision(decoded, crystal, codec)
    assert codec.encode(decoded) == text


@settings(max_examples=20, deadline=None)
@given(crystal=crystals(max_atoms=4))
def test_precision_is_configurable(crystal: Crystal):
    codec = CrystalText(length_decimals=5, angle_decimals=4, coord_decimals=7)
    text = codec.encode(crystal)
    assert len(text.split("\n")[1].split()[1].split(".")[1]) == 5
    assert_within_precision(codec.decode(text), crystal, codec)
    assert codec.encode(codec.decode(text)) == text


def test_coordinate_that_rounds_to_one_is_written_as_zero():
    crystal = Crystal([26, 26], [[0.99996, 0.5, 0.999951], [0.25, 0.99999999, 0.0]], np.eye(3) * 3.0)
    text = CrystalText().encode(crystal)
    assert "1.0000" not in text
    assert text.split("\n")[-3:-1] == ["Fe 0.0000 0.5000 0.0000", "Fe 0.2500 0.0000 0.0000"]
    assert_within_precision(CrystalText().decode(text), crystal, CrystalText())


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="coord_decimals"):
        CrystalText(coord_decimals=-1)
    with pytest.raises(ValueError, match="symprec"):
        CrystalText(symprec=0.0)


# ---- malformed text -------------------------------------------------------------------------------
def _edit(old: str, new: str) -> str:
    assert old in SRTIO3
    return SRTIO3.replace(old, new, 1)


MALFORMED = {
    "unknown site element": (_edit("Ti 0.5000", "Tx 0.5000"), r"line 10: unknown element symbol 'Tx'"),
    "unknown header element": (_edit("data_Sr1Ti1O3", "data_Sr1Qq1O3"), r"line 1: unknown element symbol 'Qq'"),
    "bad coordinate": (_edit("Ti 0.5000 0.5000", "Ti 0.5000 0.5.00"), r"line 10: bad number '0\.5\.00'"),
    "nan coordinate": (_edit("Ti 0.5000 0.5000", "Ti 0.5000 nan"), r"line 10: bad number 'nan'"),
    "bad length": (_edit("b 3.905", "b 3,905"), r"line 4: bad number '3,905'"),
    "overflowing length": (_edit("b 3.905", "b 1e999"), r"line 4: bad number '1e999'"),
    "bad space group": (_edit("sg 221", "sg 999"), r"line 2: space group number"),
    "missing lattice line": (_edit("b 3.905\n", ""), r"line 4: missing lattice line 'b'"),
    "missing angle line": (_edit("gamma 90.00\n", ""), r"line 8: missing lattice line 'gamma'"),
    "text ends in the lattice": ("data_Fe1\na 3.0\nb 3.0\n", r"missing lattice line 'c' \(text ends after line 3\)"),
    "no sites": (SRTIO3.split("Sr 0.0000")[0], r"no sites"),
    "angles do not form a cell": (
        _edit("alpha 90.00\nbeta 90.00\ngamma 90.00", "alpha 170.00\nbeta 10.00\ngamma 20.00"),
        r"line 8: lattice angles .* do not form a cell",
    ),
    "flat cell": (
        _edit("alpha 90.00\nbeta 90.00\ngamma 90.00", "alpha 120.00\nbeta 120.00\ngamma 120.00"),
        r"do not form a cell",
    ),
    "angle out of range": (_edit("beta 90.00", "beta 180.00"), r"line 7: lattice angle beta"),
    "negative length": (_edit("c 3.905", "c -3.905"), r"line 5: lattice length c must be positive"),
    "missing header": (SRTIO3.split("\n", 1)[1], r"line 1: expected the header"),
    "unreadable header": (_edit("data_Sr1Ti1O3", "data_SrTiO3"), r"line 1: cannot read the composition"),
    "header disagrees with sites": (_edit("data_Sr1Ti1O3", "data_Sr1Ti1O2"), r"line 1: header composition"),
    "short site line": (_edit("Ti 0.5000 0.5000 0.5000", "Ti 0.5000 0.5000"), r"line 10: a site line"),
    "empty": ("\n\n", r"empty text"),
}


@pytest.mark.parametrize(("text", "message"), list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_text_raises_crystal_error(text: str, message: str):
    with pytest.raises(CrystalError, match=message) as info:
        CrystalText().decode(text, source="sample.txt:3")
    assert str(info.value).startswith("sample.txt:3: ")


# ---- tokenizer ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer() -> CrystalTokenizer:
    return CrystalTokenizer()


def test_vocabulary(tokenizer: CrystalTokenizer):
    tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    assert len(set(tokens)) == len(tokens) == tokenizer.vocab_size == 4 + 8 + MAX_Z + 10 + 4
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert tokenizer.id_to_token(tokenizer.unk_id) == "<unk>"
    for token in ["data_", "sg", "a", "b", "c", "alpha", "beta", "gamma", ".", "-", " ", "\n", "7", "He", "Og"]:
        assert tokenizer.id_to_token(tokenizer.token_to_id(token)) == token
    assert all(z_to_symbol(z) in tokens for z in range(1, MAX_Z + 1))
    with pytest.raises(KeyError, match="not in the tokenizer vocabulary"):
        tokenizer.token_to_id("Xx")
    with pytest.raises(KeyError, match="outside"):
        tokenizer.id_to_token(tokenizer.vocab_size)


def test_tokenization_of_symbols_keywords_and_numbers(tokenizer: CrystalTokenizer):
    text = "data_Co1C2O3\nsg 12\nalpha 90.05\nb 4.2\nCo 0.1000 0.2000 0.3000\nC 0.0 0.0 0.0\n"
    tokens = tokenizer.tokenize(text)
    assert tokens[:8] == ["data_", "Co", "1", "C", "2", "O", "3", "\n"]
    assert tokens[8:13] == ["sg", " ", "1", "2", "\n"]
    assert tokens[13:21] == ["alpha", " ", "9", "0", ".", "0", "5", "\n"]
    assert tokens[21:23] == ["b", " "]
    assert "Co" in tokens[27:29] and tokens.count("C") == 2
    assert "".join(tokens) == text


@pytest.mark.parametrize("crystal", TINY, ids=TINY_IDS)
def test_tokenizer_text_round_trip_is_exact(tokenizer: CrystalTokenizer, crystal: Crystal):
    for codec in (CrystalText(), CrystalText(include_spacegroup=True)):
        text = codec.encode(crystal)
        ids = tokenizer.encode(text)
        assert tokenizer.unk_id not in ids
        assert tokenizer.decode(ids) == text


@settings(max_examples=40, deadline=None)
@given(crystal=crystals(max_atoms=8, elements=tuple(range(1, MAX_Z + 1))))
def test_crystal_round_trip_through_tokens(tokenizer: CrystalTokenizer, crystal: Crystal):
    ids = tokenizer.encode_crystal(crystal)
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.unk_id not in ids
    text = tokenizer.text.encode(crystal)
    assert tokenizer.decode(ids) == text
    decoded = tokenizer.decode_crystal(ids)
    assert_within_precision(decoded, crystal, tokenizer.text)
    assert tokenizer.encode_crystal(decoded) == ids


def test_encode_crystal_without_specials_and_array_inputs(tokenizer: CrystalTokenizer):
    crystal = TINY[1]
    plain = tokenizer.encode_crystal(crystal, add_special=False)
    assert plain == tokenizer.encode(tokenizer.text.encode(crystal))
    padded = [tokenizer.bos_id, *plain, tokenizer.eos_id, 17, 5, tokenizer.pad_id, tokenizer.pad_id]
    for ids in (padded, np.array(padded), torch.tensor(padded)):
        assert_within_precision(tokenizer.decode_crystal(ids), crystal, tokenizer.text)


def test_unknown_characters_become_unk_and_do_not_decode(tokenizer: CrystalTokenizer):
    text = SRTIO3.replace("Ti 0.5000 0.5000 0.5000", "Ti 0.5000 0.5#00 0.5000")
    ids = tokenizer.encode(text)
    assert ids.count(tokenizer.unk_id) == 1
    assert "<unk>" in tokenizer.decode(ids)
    with pytest.raises(CrystalError, match=r"line 10: bad number '0\.5<unk>00'"):
        tokenizer.decode_crystal(ids)
    assert tokenizer.tokenize("Xy 1") == ["<unk>", "<unk>", " ", "1"]


def test_decode_crystal_rejects_ids_outside_the_vocabulary(tokenizer: CrystalTokenizer):
    ids = tokenizer.encode_crystal(TINY[0])
    ids[3] = tokenizer.vocab_size + 2
    with pytest.raises(CrystalError, match="outside"):
        tokenizer.decode_crystal(ids)


def test_tokenizer_uses_its_codec_settings():
    tokenizer = CrystalTokenizer(CrystalText(coord_decimals=2, include_spacegroup=True))
    text = tokenizer.decode(tokenizer.encode_crystal(TINY[1]))
    assert text.split("\n")[1] == "sg 227"
    assert text.split("\n")[-2] == "Si 0.25 0.25 0.25"
