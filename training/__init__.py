"""Training backend of cropmap: contrastive pre-training, downstream base models and evaluation.

Needs the ``train`` extra (torch, optuna). May import only :mod:`cropmap.bands` and
:mod:`cropmap.bundle` from the deployable package.
"""
