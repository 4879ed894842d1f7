"""The local cluster's worker plugin that keeps a closing worker's shutdown races off stderr.

Imported by :func:`cropmap.batch.local_cluster` only, so that ``cropmap.batch`` does not import
dask.distributed at start.
"""

from __future__ import annotations

import asyncio
import logging

from distributed import Worker, WorkerPlugin
from distributed.comm.core import CommClosedError
from distributed.core import Status


class QuietClose(WorkerPlugin):
    """Worker plugin of the local cluster: a worker being closed keeps its shutdown races off stderr.

    The local cluster's worker processes write their log to the batch's stderr (a region's warnings
    reach the user that way). Closing a worker that is still classifying a region (Ctrl-C, SIGTERM, an
    error elsewhere) cancels the region and closes its connections; dask.distributed then logs that
    cancellation, and a heartbeat caught by the closing connection pool, with a traceback. Only those
    records of a worker that is closing are dropped: a connection closed, or a cancellation. Every
    other record passes, and while the worker runs everything passes.
    """

    name = "cropmap-quiet-close"

    def setup(self, worker: Worker) -> None:
        closing = {Status.closing, Status.closing_gracefully, Status.closed}

        def keep(record: logging.LogRecord) -> bool:
            if worker.status not in closing:
                return True
            err = record.exc_info[1] if record.exc_info else None
            if isinstance(err, (CommClosedError, asyncio.CancelledError)):
                return False
            return not record.getMessage().endswith("ended with CancelledError")

        for handler in logging.getLogger("distributed").handlers:  # they end with the worker's process
            handler.addFilter(keep)
