"""The worker's main process follows producers.toml: a producer listed while it runs gets its
own queue consumed without a restart (`worker.live_config` gives it its rights)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import ConfigurationError
from core.files import file_version
from core.queue import producer_queue
from worker.access import listed_producer_names

log = logging.getLogger("casign.worker")

LOOK_SECONDS = 1.0


class ProducerQueueWatcher:
    """Adds the queue of each producer newly listed in `path` to the queues consumed.

    `add_queue` asks the worker's own consumer to take from a queue (Celery's remote control
    `add_consumer`, addressed to this worker alone), so it runs in the consumer's loop, not in
    this thread. A producer removed from the file keeps its queue consumed until the worker
    restarts; its batches are refused, since its rights went with its entry.
    """

    def __init__(
        self,
        path: Path,
        queue: str,
        consumed: set[str],
        add_queue: Callable[[str], None],
        stopped: Callable[[], bool],
    ) -> None:
        self._path = path
        self._queue = queue
        self._consumed = consumed
        self._add_queue = add_queue
        self._stopped = stopped
        self._stamp = file_version(self._path)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="casign-producer-queues", daemon=True)
        thread.start()
        return thread

    def look(self) -> list[str]:
        """Add the queues of producers listed since the last look; the queues added."""
        stamp = file_version(self._path)
        if stamp == self._stamp:
            return []
        self._stamp = stamp
        try:
            names = listed_producer_names(self._path)
        except ConfigurationError:
            return []  # the signing processes log why the file is not applied
        added = []
        for name in names:
            try:
                queue = producer_queue(self._queue, name)
            except ConfigurationError as exc:
                log.error("producer %r gets no queue: %s", name, exc)
                continue
            if queue not in self._consumed:
                self._add_queue(queue)
                self._consumed.add(queue)
                added.append(queue)
                log.info("producer %s is listed now: consuming its queue %s", name, queue)
        return added

    def _run(self) -> None:
        while not self._stopped():
            time.sleep(LOOK_SECONDS)
            try:
                self.look()
            except Exception:  # never let a look end the thread; the next one tries again
                log.exception("could not follow %s", self._path)
