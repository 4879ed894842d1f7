"""Training backend of cropmap: contrastive pre-training, downstream base models and evaluation.

Subpackages follow the pipeline: :mod:`training.data` (labelled series, pre-training pairs, readers),
:mod:`training.simulate` (simulated scenes), :mod:`training.pretrain` (the encoder), :mod:`training.downstream`
(base models, trees, selection, studies) and :mod:`training.evaluate` (the papers' protocol and its checks);
:mod:`training.models`, :mod:`training.config`, :mod:`training.checkpoint` and :mod:`training.device` are shared.

Its programs are the ``cropmap data``, ``cropmap train`` and ``cropmap evaluate`` command groups (:mod:`training.cli`,
registered as ``cropmap.commands`` entry points; each subpackage's torch-free ``cli.py`` holds its commands, with the
shared options and exit codes of :mod:`cropmap.cli_common`); ``python -m training.pretrain`` and the other
``python -m`` forms are aliases of them (docs/cli.md).

Needs the ``train`` extra (torch, optuna). What it may import from the deployable package (docs/architecture.md,
enforced by tests/test_layering.py):

- every module: the contract package :mod:`cropmap.contract` (band names, the bundle metadata and its JSON, the
  time grid and gap fill, the cloud rule; it loads neither ONNX Runtime nor torch), :mod:`cropmap.errors` and the
  one atomic-write helper, :mod:`cropmap.safeio.atomic`;
- the readers of inference's inputs, ``training/data/extract.py`` and ``training/data/pairs.py``, also inference's
  input side: :mod:`cropmap.stack`, :mod:`cropmap.mask`, :mod:`cropmap.tiling`, :mod:`cropmap.sanity` and
  :mod:`cropmap.safeio` (its modules), so that training data are read exactly as ``cropmap classify`` reads them.
- the executor of the downstream protocol on a cluster, ``training/downstream/cluster.py``, also
  :mod:`cropmap.batch`, whose local / existing / HPC Dask cluster it reuses (one cluster construction).

Never :mod:`exporters`: training writes run directories, which the exporters read.
"""
