"""The wire models parse what the API sends, keep what they do not know, and errors map from problem codes."""

from __future__ import annotations

import inspect

import httpx
import pytest
import tessera_client as tc
from samples import job, problem
from tessera_client.errors import error_for, retry_after_seconds


def test_output_is_typed_by_the_jobs_kind() -> None:
    image = {"file_id": "file_a", "url": "http://x/o", "expires_at": "2026-01-01T01:00:00Z", "width": 64, "height": 64}
    generation = tc.Job.model_validate(job(kind="generation", status="succeeded", output={"images": [image]}))
    assert isinstance(generation.output, tc.GenerationOutput)
    assert generation.generation_output.images[0].width == 64
    with pytest.raises(ValueError, match="no training output"):
        _ = generation.training_output

    training = tc.Job.model_validate(
        job(kind="training", status="succeeded", output={"concept_id": "cpt_1", "masks": [], "diagnostics": {"a": 1}})
    )
    assert training.training_output.concept_id == "cpt_1"
    assert training.terminal and not tc.Job.model_validate(job(status="running")).terminal


def test_a_training_output_never_parses_as_a_generations() -> None:
    # The output model is chosen by the job's kind, not by whichever model happens to fit.
    with pytest.raises(ValueError):
        tc.Job.model_validate(job(kind="generation", status="succeeded", output={"concept_id": "cpt_1"}))


def test_unknown_fields_are_kept_not_refused() -> None:
    body = job(
        status="running",
        progress={"fraction": 0.4, "stage": "training", "stage_fraction": 0.8, "eta_seconds": 3.0, "weights": [1]},
        something_new={"x": 1},
    )
    parsed = tc.Job.model_validate(body)
    assert parsed.progress is not None and parsed.progress.fraction == 0.4 and parsed.progress.stage_fraction == 0.8
    assert parsed.progress.model_extra == {"weights": [1]}
    assert parsed.model_extra == {"something_new": {"x": 1}}


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://api/v1/files")
    return httpx.Response(status, content=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (415, "unsupported_media_type", tc.InvalidImage),
        (422, "invalid_image", tc.InvalidImage),
        (413, "file_too_large", tc.InvalidImage),
        (422, "image_too_large", tc.InvalidImage),
        (422, "unknown_concept", tc.UnknownConcept),
        (422, "validation_error", tc.InvalidRequest),
        (401, "unauthorized", tc.AuthenticationError),
        (403, "forbidden", tc.PermissionDenied),
        (404, "not_found", tc.NotFound),
        (409, "concept_name_taken", tc.ConceptNameTaken),
        (409, "idempotency_request_in_flight", tc.IdempotencyInFlight),
        (429, "quota_exceeded", tc.QuotaExceeded),
        (429, "rate_limited", tc.RateLimited),
        (503, "redis_unavailable", tc.ServiceUnavailable),
        (500, "internal_error", tc.ServerError),
    ],
)
def test_errors_are_typed_by_problem_code(status: int, code: str, expected: type[tc.TesseraError]) -> None:
    error = error_for(_response(status, problem(status, code, errors=[{"field": "file", "message": "bad"}])))
    assert type(error) is expected
    assert (error.status, error.code, error.detail) == (status, code, "refused")
    assert error.problem.errors is not None and error.problem.errors[0].field == "file"


def test_a_body_that_is_not_a_problem_still_gives_a_typed_error() -> None:
    error = error_for(_response(502, b"<html>bad gateway</html>", {"content-type": "text/html"}))
    assert isinstance(error, tc.ServerError) and error.code == "http_error" and "bad gateway" in error.detail


def test_retry_after_in_seconds_and_as_a_date() -> None:
    assert retry_after_seconds(_response(429, b"", {"Retry-After": "7"})) == 7.0
    in_a_minute = httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})
    assert (retry_after_seconds(in_a_minute) or 0) > 1e6
    assert retry_after_seconds(_response(429, b"", {"Retry-After": "soon"})) is None
    assert retry_after_seconds(_response(429, b"")) is None


def test_sync_and_async_clients_have_the_same_methods_and_arguments() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_") and name not in ("close", "aclose")
        }

    sync, not_sync = public(tc.TesseraClient), public(tc.AsyncTesseraClient)
    assert sorted(sync) == sorted(not_sync)
    for name, signature in sync.items():
        assert list(signature.parameters.values()) == list(not_sync[name].parameters.values()), name
    for name in not_sync:
        member = getattr(tc.AsyncTesseraClient, name)
        assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), name
    assert {"list_jobs", "get_file", "get_concept", "delete_concept", "webhook_secret", "wait", "events"} <= set(sync)
