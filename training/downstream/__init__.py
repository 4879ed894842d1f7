"""Downstream base models on per-date series: the protocol's runs (supervised, uni-modal, bi-modal), the tree
families, honest selection, recipes, variant sampling and shared studies (PAPER.md section 4).

``python -m training.downstream`` runs :mod:`training.downstream.cli`.
"""
