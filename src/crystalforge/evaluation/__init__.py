"""Evaluation of generated crystals: one pinned protocol; never imports generative code.

Layout: ``run`` (``evaluate_candidates``: settings, CSP linking, cutoffs, hull, files), ``suite``
(assembles and runs the metrics), ``context`` (inputs and shared results, CSP links), ``report``
(``MetricReport`` and its files), ``features`` (fingerprint cache), ``hull`` (``ReferenceHull``),
and ``metrics/``: one module per metric with its suite adapter (``validity`` with ``smact_rule``,
``coverage``, ``distribution``, ``csp``, ``uniqueness``, ``novelty``, ``stability``, ``symmetry``,
``targeting``), ``structure_matcher`` (shared pymatgen plumbing) and ``base`` (``Metric``,
``MetricResult``).
"""
