"""The papers' evaluation and the checks around it: Table 1, probes, map scoring, seed tables, season transfer
and the S1 bi-modal comparison.

``python -m training.evaluate`` runs :mod:`training.evaluate.run`.
"""
