"""Evaluation of generated crystals: one pinned protocol; never imports generative code.

Layout: ``run`` (``evaluate_candidates``: settings, CSP linking, cutoffs, hull, files), ``suite``
(assembles and runs the metrics), ``context`` (inputs, the memo of shared results, CSP links),
``report`` (``MetricReport`` and its files), ``features`` (fingerprint cache), ``hull``
(``ReferenceHull``), and ``metrics/``: one module per metric with its suite adapter and the shared
results it owns (``validity`` with ``smact_rule`` and ``closest_pairs``, ``coverage``,
``distribution``, ``csp``, ``uniqueness``, ``novelty``, ``stability``, ``symmetry``,
``targeting``), ``structure_matcher`` (shared pymatgen plumbing) and ``base`` (``Metric``,
``MetricResult``). The context imports no metric; metrics import the context (for types only)
and each other's shared-result functions, without cycles.
"""
