"""Python client of the Tessera API: sync ``TesseraClient`` and async ``AsyncTesseraClient``, typed models,
typed errors, resumable job events and retries with backoff.

```python
from tessera_client import TesseraClient

with TesseraClient("http://127.0.0.1:8000", api_key="...") as client:
    file = client.upload_file(open("dog.png", "rb").read())
    job = client.create_training({"concept": {"name": "rex", "class_word": "dog"}, "images": [file.id]})
    for event in client.events(job.id):
        print(event.job.status, event.job.progress)
```
"""

from __future__ import annotations

__version__ = "0.1.0"

from tessera_client.async_client import AsyncTesseraClient
from tessera_client.errors import (
    AuthenticationError,
    ConceptNameTaken,
    Conflict,
    IdempotencyInFlight,
    InvalidImage,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    StreamDropped,
    TesseraError,
    UnknownConcept,
)
from tessera_client.models import (
    AdapterInfo,
    Concept,
    ConceptList,
    DeliveryAttempt,
    DeliveryList,
    FieldError,
    File,
    GenerationOutput,
    Job,
    JobError,
    JobEvent,
    JobList,
    JobMetrics,
    JobProgress,
    JobUrls,
    OutputImage,
    Problem,
    TrainingOutput,
    WebhookSecret,
)
from tessera_client.retry import NO_RETRY, RetryPolicy
from tessera_client.sync_client import TesseraClient

__all__ = [
    "NO_RETRY",
    "AdapterInfo",
    "AsyncTesseraClient",
    "AuthenticationError",
    "Concept",
    "ConceptList",
    "ConceptNameTaken",
    "Conflict",
    "DeliveryAttempt",
    "DeliveryList",
    "FieldError",
    "File",
    "GenerationOutput",
    "IdempotencyInFlight",
    "InvalidImage",
    "InvalidRequest",
    "Job",
    "JobError",
    "JobEvent",
    "JobList",
    "JobMetrics",
    "JobProgress",
    "JobUrls",
    "NotFound",
    "OutputImage",
    "PermissionDenied",
    "Problem",
    "QuotaExceeded",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "StreamDropped",
    "TesseraClient",
    "TesseraError",
    "TrainingOutput",
    "UnknownConcept",
    "WebhookSecret",
    "__version__",
]
