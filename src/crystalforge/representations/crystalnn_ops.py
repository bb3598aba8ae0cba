"""matminer's CrystalNN "ops" site fingerprint with its order parameters computed as array operations.

matminer ``CrystalNNFingerprint.from_preset("ops")`` gives each site 61 values: for every
coordination number ``cn`` in 1..24 the CrystalNN weight ``w_cn`` and, for the motifs of that
``cn`` (linear, tetrahedral, octahedral, q4, ...), ``w_cn × OP``, where ``OP`` is one of
pymatgen's local structure order parameters (Zimmermann et al., 2017) of the site and its ``cn``
nearest CrystalNN neighbours. pymatgen evaluates each order parameter in a Python loop over pairs
``(j, k)`` and triples ``(j, k, m)`` of neighbours, one parameter at a time; that is about 60 % of
the fingerprint's time. Here the same definitions are evaluated for all pairs and triples at once:

- ``θ_jk`` is the angle between the bonds to neighbours ``j`` and ``k``; with ``j`` at the north
  pole and ``k`` on the prime meridian, ``φ_jkm`` is the azimuth of neighbour ``m``;
- each "Peters-style" parameter sums Gaussian terms in ``θ_jk`` (pair terms), ``θ_jm`` and
  ``cos²(a·φ_jkm)`` (triple terms) and a "south pole" term in ``θ_jm``, per pair ``(j, k)``, then
  takes the largest normalised pair value (``*_max``, ``T``, pyramids, bipyramids), the
  normalised total (``bent``) or a fixed normalisation (``bcc``);
- Steinhardt's ``q_l`` uses the addition theorem: ``q_l² = Σ_jk P_l(cos θ_jk) / n²``.

pymatgen's loop has branches (an angle against a threshold such as 135°, an axis of length below
1e-12). Float rounding here may differ from the loop's in the last bits, so where a branch value
lies within ``MARGIN`` of its threshold the site is handed to pymatgen's own code. The values then
agree with matminer's to 1e-6 per component (``tests/representations/test_crystalnn_ops.py``; every
mp_20 test structure in BENCHMARKS.md). The neighbours and weights come from
``crystalnn_neighbours.py``, or from pymatgen's ``CrystalNN`` where that module declines a site.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.polynomial import legendre

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from crystalforge.representations.crystalnn_neighbours import Shells

MAX_CN = 24
MARGIN = 1e-9
"""Angles (rad) closer than this to a branch threshold go to pymatgen (as do axis lengths within a
factor of 100 of ``TINY_AXIS``; collinear bonds give ~1e-16, others > 1e-6)."""
TINY_AXIS = 1e-12
"""pymatgen's length below which a pole-to-neighbour axis counts as undefined."""

_PAIR_GAUSS = {"T", "tri_pyr", "sq_pyr", "pent_pyr", "hex_pyr"}
_BIPYR = {"tri_bipyr", "sq_bipyr", "pent_bipyr", "hex_bipyr", "oct_max", "sq_plan_max", "hex_plan_max"}
_SOUTH = _BIPYR | {"see_saw_rect"}
_TRIPLANE = {"tri_plan_max", "tet_max"}
SUPPORTED = (
    {"sgl_bd", "bent", "bcc", "pent_plan_max", "cuboct_max", "q2", "q4", "q6"} | _PAIR_GAUSS | _SOUTH | _TRIPLANE
)


@dataclass(frozen=True)
class Motif:
    """One order parameter of the fingerprint: pymatgen type name and its parameters."""

    name: str  # matminer's motif name, e.g. "octahedral"
    kind: str  # pymatgen's order parameter type, e.g. "oct_max"
    params: dict[Any, float]


def ops_preset() -> dict[int, list[Motif]]:
    """The motifs of matminer's ``"ops"`` preset for each coordination number 1..24 (after ``wt``)."""
    from matminer.featurizers.site.fingerprint import load_cn_motif_op_params, load_cn_target_motif_op
    from pymatgen.analysis.local_env import DEFAULT_OP_PARAMS

    motif_params, targets = load_cn_motif_op_params(), load_cn_target_motif_op()  # two YAML files, read once
    preset: dict[int, list[Motif]] = {}
    for cn in range(1, MAX_CN + 1):
        motifs = []
        for name in targets.get(cn, []):
            spec = motif_params.get(cn, {}).get(name)
            kind = spec[0] if spec else name
            params = spec[1] if spec and len(spec) > 1 and spec[1] is not None else DEFAULT_OP_PARAMS[kind]
            if kind not in SUPPORTED:
                raise ValueError(f"order parameter {kind!r} (cn {cn}, {name!r}) has no array implementation")
            motifs.append(Motif(name, kind, dict(params or {})))
        preset[cn] = motifs
    return preset


def _gauss(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x)


class _Geometry:
    """Angles of one neighbour shell (unit bond vectors ``[n, 3]``), shared by its order parameters."""

    def __init__(self, unit: np.ndarray) -> None:
        n = len(unit)
        self.n = n
        dots = np.clip(unit @ unit.T, -1.0, 1.0)
        self.cos = dots  # [n, n]: cos θ_jk
        self.theta = np.arccos(dots)  # [n, n]: θ_jk
        # axis[j, k]: the part of u_k orthogonal to the pole u_j (pymatgen's Gram-Schmidt step)
        self_dots = np.einsum("ij,ij->i", unit, unit)
        axis = unit[None, :, :] - (dots.T / self_dots[:, None])[:, :, None] * unit[:, None, :]
        self.axis_len = np.linalg.norm(axis, axis=2)  # [n, n]
        self.no_axis = self.axis_len < TINY_AXIS
        safe = np.where(self.no_axis, 1.0, self.axis_len)[:, :, None]
        axis = axis / safe
        cos_phi = np.clip(np.einsum("jkx,jmx->jkm", axis, axis), -1.0, 1.0)
        self.phi = np.arccos(cos_phi)  # [n, n, n]: φ_jkm
        eye = np.eye(n, dtype=bool)
        self.pair = ~eye  # j != k
        distinct = self.pair[:, :, None] & self.pair[:, None, :] & self.pair[None, :, :]
        self.triple = distinct & ~self.no_axis[:, :, None]  # m's loop runs (k gives an axis)
        self.triple_phi = self.triple & ~self.no_axis[:, None, :]  # and m gives one too
        self.th_k = self.theta[:, :, None]  # θ_jk over [j, k, m]
        self.th_m = self.theta[:, None, :]  # θ_jm over [j, k, m]
        self._bcc: np.ndarray | None = None

    def bcc_terms(self, p: dict[Any, float]) -> np.ndarray:
        """``[n, n]``: the bcc parameter's term of the ordered pair (j, k); pymatgen sums those with j < k.

        Computed once per shell (the tie check and the value both need it); a shell has one bcc motif.
        """
        if self._bcc is None:
            th, thk, thm, phi = self.theta, self.th_k, self.th_m, self.phi
            wide = self.pair & (th >= p["min_SPP"])
            pair = np.where(wide, p["w_SPP"] * _gauss(p["IGW_SPP"] * (th / math.pi - 1.0)), 0.0)
            use = self.triple_phi & (thk < p["min_SPP"])
            sign = np.where(thk > math.pi / 2, 1.0, -1.0)
            x = (thm - math.pi / 2) / math.asin(1 / 3)
            triples = np.where(use, sign * np.cos(3 * phi) * math.exp(0.5) * x * _gauss(x), 0).sum(axis=2)
            self._bcc = pair + triples
        return self._bcc

    def near(self, thresholds: list[float], phi_thresholds: list[float]) -> bool:
        """True when an angle or an axis length lies within ``MARGIN`` of a branch threshold."""
        off = self.theta[self.pair]
        if any(np.any(np.abs(off - t) < MARGIN) for t in thresholds):
            return True
        lengths = self.axis_len[self.pair]
        if np.any((lengths > TINY_AXIS / 100) & (lengths < TINY_AXIS * 100)):
            return True
        if not phi_thresholds:
            return False
        phis = self.phi[self.triple_phi]
        return any(np.any(np.abs(phis - t) < MARGIN) for t in phi_thresholds)


def _thresholds(motif: Motif) -> tuple[list[float], list[float]]:
    """Angles (θ, φ) at which the order parameter's definition branches."""
    p, kind = motif.params, motif.kind
    theta = [p["min_SPP"]] if "min_SPP" in p else []
    if kind == "bcc":
        theta.append(math.pi / 2)
    if kind == "pent_plan_max":
        theta.append(p["TA"] * math.pi)
    if kind == "cuboct_max":
        theta += [p[2], p[4]]
    return theta, ([0.75 * math.pi] if kind == "see_saw_rect" else [])


def _pair_max(q: np.ndarray, norm: np.ndarray, pair: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(norm > 1e-12, q / np.where(norm > 1e-12, norm, 1.0), 0.0)
    return float(ratio[pair].max())


def _peters(motif: Motif, g: _Geometry) -> float:
    """One Peters-style order parameter of the shell (0 where pymatgen gives None)."""
    kind, p, n = motif.kind, motif.params, g.n
    if n < 2:
        return 0.0
    th, thk, thm, phi = g.theta, g.th_k, g.th_m, g.phi
    t, tp = g.triple, g.triple_phi  # q3, n3 below: triple terms [j, k, m], summed over m at the end
    if kind == "bent":
        q2 = _gauss(p["IGW_TA"] * (th / math.pi - p["TA"]))
        total = float(q2[g.pair].sum())
        count = float(g.pair.sum())
        return total / count if count > 1e-12 else 0.0
    if kind in _TRIPLANE:
        q2, n2 = _gauss(p["IGW_TA"] * (th / math.pi - p["TA"])), np.ones_like(th)
        q3 = np.where(
            tp, _gauss(p["IGW_TA"] * (thm / math.pi - p["TA"])) * np.cos(p["fac_AA"] * phi) ** p["exp_cos_AA"], 0
        )
        n3 = tp.astype(float)
    elif kind == "pent_plan_max":
        q2 = _gauss(p["IGW_TA"] * (th / math.pi - np.where(th <= p["TA"] * math.pi, 0.4, 0.8)))
        n2 = np.ones_like(th)
        shift = np.where(thm <= p["TA"] * math.pi, 0.4, 0.8)
        q3 = np.where(tp, _gauss(p["IGW_TA"] * (thm / math.pi - shift)) * np.cos(phi) ** 2, 0)
        n3 = tp.astype(float)
    elif kind in _PAIR_GAUSS:
        q2, n2 = _gauss(p["IGW_EP"] * (th / math.pi - 0.5)), np.ones_like(th)
        q3 = np.where(tp, np.cos(p["fac_AA"] * phi) ** p["exp_cos_AA"] * _gauss(p["IGW_EP"] * (thm / math.pi - 0.5)), 0)
        n3 = tp.astype(float)
    elif kind in _SOUTH:
        below = th < p["min_SPP"]
        hexp = kind == "hex_plan_max"

        def width(angle: np.ndarray) -> np.ndarray:
            if hexp:
                return p["IGW_TA"] * (np.abs(angle / math.pi - 0.5) - p["TA"])
            return p["IGW_EP"] * (angle / math.pi - 0.5)

        q2, n2 = np.where(below, _gauss(width(th)), 0.0), below.astype(float)
        both = tp & (thm < p["min_SPP"]) & (thk < p["min_SPP"])
        if kind == "see_saw_rect":
            both &= phi < 0.75 * math.pi
            term = np.cos(p["fac_AA"] * phi) ** p["exp_cos_AA"] * _gauss(p["IGW_EP"] * (thm / math.pi - 0.5))
        else:
            term = np.cos(p["fac_AA"] * phi) ** p["exp_cos_AA"] * _gauss(width(thm))
        south = t & (thm >= p["min_SPP"])  # pymatgen adds it without the second axis
        q3 = np.where(both, term, 0) + np.where(south, _gauss(p["IGW_SPP"] * (thm / math.pi - 1.0)), 0)
        n3 = both.astype(float) + south.astype(float)
    elif kind == "cuboct_max":
        wide = th >= p["min_SPP"]
        q2 = np.where(wide, p["w_SPP"] * _gauss(p["IGW_SPP"] * (th / math.pi - 1.0)), 0.0)
        n2 = np.where(wide, p["w_SPP"], 0.0)
        base = tp & (thm < p["min_SPP"]) & (p[4] < thk) & (thk < p[2])
        mid, low, high = base & (p[4] < thm) & (thm < p[2]), base & (thm < p[4]), base & (thm > p[2])
        tilt = _gauss(0.0556 * (np.cos(phi - 0.5 * math.pi) - 0.81649658))
        q3 = (
            np.where(mid, np.cos(phi) ** 2 * _gauss(p[5] * (thm / math.pi - 0.5)), 0)
            + np.where(low, tilt * _gauss(p[6] * (thm / math.pi - 1 / 3)), 0)
            + np.where(high, tilt * _gauss(p[6] * (thm / math.pi - 2 / 3)), 0)
        )
        n3 = (mid | low | high).astype(float)
    elif kind == "bcc":
        terms = g.bcc_terms(p)
        total = float(terms[np.triu(np.ones((n, n), dtype=bool), 1)].sum())  # pairs j < k, in neighbour order
        return total / (0.5 * n * (6 + (n - 2) * (n - 3))) if n > 3 else 0.0
    else:  # pragma: no cover - ops_preset refuses other kinds
        raise ValueError(kind)
    return _pair_max(q2 + q3.sum(axis=2), n2 + n3.sum(axis=2), g.pair)


def _order_free(motif: Motif, g: _Geometry, ties: np.ndarray) -> bool:
    """True when no swap of tied neighbours changes the bcc value: ``A(j, k) = A(k, j)`` within each tie."""
    terms = g.bcc_terms(motif.params)
    same = (ties[:, None] == ties[None, :]) & g.pair
    return bool(np.all(np.abs(terms - terms.T)[same] <= 1e-12))


def order_parameter(motif: Motif, unit: np.ndarray, dist: np.ndarray, g: _Geometry) -> float:
    """The order parameter ``motif`` of a neighbour shell (0 where pymatgen returns None)."""
    kind, n = motif.kind, len(unit)
    if kind == "sgl_bd":
        ordered = np.sort(dist)
        return 1.0 if n == 1 else float(1 - ordered[0] / ordered[1])
    if kind in {"q2", "q4", "q6"}:
        order = int(kind[1])
        coeffs = np.zeros(order + 1)
        coeffs[order] = 1.0
        return math.sqrt(max(float(legendre.legval(g.cos, coeffs).sum()), 0.0)) / n
    return _peters(motif, g)


class CrystalNNOps:
    """The 61 values of matminer's ``CrystalNNFingerprint.from_preset("ops")`` for each site.

    Args:
        cnn: pymatgen ``CrystalNN`` (matminer's featurizer's ``cnn``), asked for the sites that
            ``crystalnn_neighbours`` or the array order parameters decline.

    """

    def __init__(self, cnn: Any) -> None:
        from pymatgen.analysis.local_env import LocalStructOrderParams

        self.cnn = cnn
        self.preset = ops_preset()
        self._library = {
            cn: [LocalStructOrderParams([m.kind], parameters=[m.params]) for m in motifs]
            for cn, motifs in self.preset.items()
        }
        self._thresholds = {
            cn: ([a for m in motifs for a in _thresholds(m)[0]], [a for m in motifs for a in _thresholds(m)[1]])
            for cn, motifs in self.preset.items()
        }
        self.routes: Counter[str] = Counter()
        """Sites by route: ``"arrays"``, or the reason they went to pymatgen's CrystalNN."""
        self.fallbacks = 0  # shells of pymatgen's neighbours handed to its order-parameter loop (near a threshold)

    def labels(self) -> list[str]:
        """Matminer's feature names, e.g. ``"wt CN_1"``, ``"octahedral CN_6"``."""
        return [f"{name} CN_{cn}" for cn, motifs in self.preset.items() for name in ["wt", *(m.name for m in motifs)]]

    def structure(self, structure: Structure) -> np.ndarray:
        """Fingerprints ``[n_sites, 61]`` of every site (float64)."""
        from crystalforge.representations.crystalnn_neighbours import StructureShells, supported

        own = StructureShells(structure) if supported(structure) else None
        rows = []
        for index in range(len(structure)):
            shells = own.shells(index) if own is not None else "oxidation states or disorder"
            row = shells if isinstance(shells, str) else self._fingerprint(shells, library=False)
            self.routes["arrays" if not isinstance(row, str) else row] += 1
            if isinstance(row, str):  # pymatgen decides (a discontinuity, or an order the bcc value depends on)
                row = self._library_fingerprint(structure, index)
            rows.append(row)
        return np.vstack(rows)

    def _library_fingerprint(self, structure: Structure, index: int) -> np.ndarray:
        row = self._fingerprint(self._library_shells(structure, index), library=True)
        assert not isinstance(row, str)  # pymatgen's own neighbours never need a second opinion
        return row

    def _library_shells(self, structure: Structure, index: int) -> Shells:
        from crystalforge.representations.crystalnn_neighbours import Shells

        data = self.cnn.get_nn_data(structure, index)
        centre = structure[index].coords
        bonds = {
            cn: np.array([info["site"].coords - centre for info in infos], dtype=np.float64).reshape(-1, 3)
            for cn, infos in data.cn_nninfo.items()
        }
        return Shells(dict(data.cn_weights), bonds)

    def _fingerprint(self, shells: Shells, *, library: bool) -> np.ndarray | str:
        """The 61 values, or why shells not from pymatgen (``library``) need pymatgen's neighbours.

        That is when the bcc value depends on the order of tied neighbours, or when an angle lies
        near a branch threshold: pymatgen's loop decides the branch then, on its own bond vectors.
        """
        out: list[float] = []
        for cn in range(1, MAX_CN + 1):
            weight = shells.weights.get(cn, 0)
            out.append(weight)
            motifs = self.preset[cn]
            if not motifs:
                continue
            if weight == 0:
                out += [0.0] * len(motifs)
                continue
            ties = None if shells.ties is None else shells.ties[:cn]
            values = self._shell(cn, shells.bonds[cn], ties, library=library)
            if isinstance(values, str):
                return values
            out += [weight * v for v in values]
        return np.asarray(out, dtype=np.float64)

    def _shell(self, cn: int, bonds: np.ndarray, ties: np.ndarray | None, *, library: bool) -> list[float] | str:
        """The motif values of one shell, or why pymatgen's neighbours must decide (never with ``library``)."""
        dist = np.linalg.norm(bonds, axis=1)
        unit = bonds / dist[:, None]
        g = _Geometry(unit)
        if ties is not None and any(m.kind == "bcc" and not _order_free(m, g, ties) for m in self.preset[cn]):
            return "tied neighbours whose order changes the bcc value"
        if g.n > 1 and g.near(*self._thresholds[cn]):
            if not library:
                return "an angle at a branch threshold"
            from pymatgen.core.sites import Site

            self.fallbacks += 1
            sites = [Site("H", np.zeros(3)), *(Site("H", b) for b in bonds)]
            idx = list(range(1, len(sites)))
            # with indices_neighs given, pymatgen reads only sites[i].coords: a list of sites will do
            values = [op.get_order_parameters(sites, 0, indices_neighs=idx)[0] for op in self._library[cn]]  # type: ignore[arg-type]
            return [float(v or 0) for v in values]
        return [order_parameter(motif, unit, dist, g) for motif in self.preset[cn]]
