"""Safe file handling shared by ``classify``, ``batch``, training and the exporters, one concern per module.

* :mod:`cropmap.safeio.oserrors`: one-line I/O errors (:func:`~cropmap.safeio.oserrors.io_step`), GDAL's C
  messages captured to name the cause.
* :mod:`cropmap.safeio.temporaries`: owned temporary names (host and PID in the name) and the removal of what a
  killed run left.
* :mod:`cropmap.safeio.atomic`: the one atomic-write helper, :func:`~cropmap.safeio.atomic.atomic_path`.
* :mod:`cropmap.safeio.commit`: a set of outputs moved into place all or none, through a journal.
* :mod:`cropmap.safeio.locks`: one run at a time per output (:class:`~cropmap.safeio.locks.RunLock`).
* :mod:`cropmap.safeio.overlap`: inputs are never outputs; inputs that are FIFOs or devices are refused.
* :mod:`cropmap.safeio.folders`: output folders made and removed again on failure; the free-space check.
* :mod:`cropmap.safeio.signals`: SIGTERM as Ctrl-C, interrupts held to a safe point, and the exit status of an interrupt.

Import from the module that owns a name; this package re-exports nothing.
"""
