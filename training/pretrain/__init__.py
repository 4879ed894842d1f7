"""Contrastive pre-training of the Sentinel-2 encoder: SimCLR with SCARF corruption, point- and time-wise,
uni- and bi-modal (PAPER.md sections 2-3); one process, the fast GPU path, or data-parallel under torchrun.

``cropmap train pretrain`` (:mod:`training.pretrain.cli`; alias ``python -m training.pretrain``) runs
:mod:`training.pretrain.run`.
"""
