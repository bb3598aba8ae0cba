"""One-off: regenerate ``src/crystalforge/core/elements.json`` from pymatgen's periodic table.

Run ``python scripts/make_element_table.py`` after a pymatgen upgrade if element data changed.
The table is data, loaded by :mod:`crystalforge.core.elements`; no Python literals hold it.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from pymatgen.core.periodic_table import Element

OUT = Path(__file__).resolve().parents[1] / "src" / "crystalforge" / "core" / "elements.json"


def _number(value: object) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def main() -> None:
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, 119):
            el = Element.from_Z(z)
            rows.append(
                {
                    "Z": z,
                    "symbol": el.symbol,
                    "mass": _number(el.atomic_mass),
                    "electronegativity": _number(el.X),
                    "atomic_radius": _number(el.atomic_radius),
                    "is_metal": bool(el.is_metal),
                }
            )
    lines = ",\n".join(json.dumps(row) for row in rows)
    OUT.write_text('{"source": "pymatgen periodic table",\n"elements": [\n' + lines + "\n]}\n")
    print(f"wrote {len(rows)} elements to {OUT.name}")


if __name__ == "__main__":
    main()
