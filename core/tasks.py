"""Names of the queues and tasks, defined once for the API (which sends) and the worker (which runs).

Names are explicit and stable so that moving a module can never orphan queued messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

TRAIN_QUEUE: Final = "train"
GENERATE_QUEUE: Final = "generate"
# Webhook deliveries never run on a GPU worker: they have their own queue and worker.
WEBHOOK_QUEUE: Final = "webhooks"
GPU_QUEUES: Final = (TRAIN_QUEUE, GENERATE_QUEUE)
QUEUES: Final = (TRAIN_QUEUE, GENERATE_QUEUE, WEBHOOK_QUEUE)

TRAIN_TASK: Final = "tessera.train"
GENERATE_TASK: Final = "tessera.generate"
WEBHOOK_TASK: Final = "tessera.webhook.deliver"

TASK_FOR_KIND: Final = {"training": TRAIN_TASK, "generation": GENERATE_TASK}
QUEUE_FOR_KIND: Final = {"training": TRAIN_QUEUE, "generation": GENERATE_QUEUE}


@dataclass(frozen=True)
class QueueMessage:
    """A broker message that ``JobStore.create`` pushes (LPUSH) with the record, in the same atomic step.

    Args:
        key: the Redis list the broker's consumers pop from (the job's queue).
        payload: the message exactly as the broker stores it; the store does not read it.
    """

    key: str
    payload: str
