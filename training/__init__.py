"""Training backend of cropmap: contrastive pre-training, downstream base models and evaluation.

Needs the ``train`` extra (torch, optuna). What it may import from the deployable package (docs/architecture.md,
enforced by tests/test_layering.py):

- every module: the contract, :mod:`cropmap.bands`, :mod:`cropmap.bundle`, :mod:`cropmap.clouds`,
  :mod:`cropmap.timegrid` and :mod:`cropmap.errors`;
- the readers of inference's inputs, ``training/data/extract.py`` and ``training/pairs.py``, also inference's
  input side: :mod:`cropmap.stack`, :mod:`cropmap.mask`, :mod:`cropmap.tiling`, :mod:`cropmap.sanity` and
  :mod:`cropmap.safeio`, so that training data are read exactly as ``cropmap classify`` reads them.

Never :mod:`exporters`: training writes run directories, which the exporters read.
"""
