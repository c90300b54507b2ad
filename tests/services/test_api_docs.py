"""docs/api.md and docs/problems.md against what the service serves: every route, parameter, status and object
field of the OpenAPI document is documented, and nothing documented is missing from the document."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.notifier import EVENT_TYPES
from services.api.app import create_app
from services.api.errors import PROBLEM_TYPES

DOCS = Path(__file__).resolve().parents[2] / "docs"
_ROUTE = re.compile(r"^### (GET|POST|PUT|PATCH|DELETE) (/\S*)$")
_OBJECT = re.compile(r"^### ([A-Za-z][A-Za-z0-9_]*)$")
_CELL = re.compile(r"^\|\s*`?([^`|]+?)`?\s*\|")


@dataclass
class Section:
    """One ``### `` section of docs/api.md: its tables, by their first column's header."""

    title: str
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    body_schema: str | None = None


def _cells(line: str) -> list[str]:
    # Split on | not escaped as \| (types like `"a"` \| `"b"` stay in one cell).
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().strip("`") for p in parts]


def parse_sections(text: str) -> dict[str, Section]:
    """``"POST /v1/files"`` or ``"Job"`` → its section, from the ``### `` headings of the Routes and Objects parts."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    part = ""
    header: str | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            part, current, header = line[3:].strip(), None, None
            continue
        if line.startswith("### ") and part in ("Routes", "Objects"):
            title = line[4:].strip()
            assert title not in sections, f"docs/api.md documents {title} twice"
            current = sections[title] = Section(title)
            header = None
            continue
        if current is None:
            continue
        if line.startswith("Body: ["):
            current.body_schema = line[len("Body: [") : line.index("]")]
        elif line.startswith("|"):
            cells = _cells(line)
            if header is None:
                header = cells[0]
                current.tables[header] = []
            elif not set(cells[0]) <= {"-"}:
                current.tables[header].append(cells)
        else:
            header = None
    return sections


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # Building the document needs no Redis connection (the client connects lazily).
    settings = Settings(redis={"url": "redis://127.0.0.1:1/0"}, storage={"backend": "local", "root": "/nonexistent"})
    return create_app(settings, enqueue=lambda _record: None).openapi()


@pytest.fixture(scope="module")
def sections() -> dict[str, Section]:
    return parse_sections((DOCS / "api.md").read_text())


def _diff(what: str, in_openapi: set[Any], in_docs: set[Any]) -> list[str]:
    problems = []
    if in_openapi - in_docs:
        problems.append(f"{what} in the OpenAPI document but not in docs/api.md: {sorted(in_openapi - in_docs)}")
    if in_docs - in_openapi:
        problems.append(f"{what} in docs/api.md but not in the OpenAPI document: {sorted(in_docs - in_openapi)}")
    return problems


def test_every_route_is_documented_and_nothing_else(document: dict[str, Any], sections: dict[str, Section]) -> None:
    served = {f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops}
    documented = {title for title in sections if _ROUTE.match(f"### {title}")}
    assert not _diff("routes", served, documented)


def test_route_parameters_statuses_and_bodies_match(document: dict[str, Any], sections: dict[str, Section]) -> None:
    schemas = document["components"]["schemas"]
    problems: list[str] = []
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            title = f"{method.upper()} {path}"
            section = sections.get(title)
            if section is None:
                continue  # reported by the route test
            params = {(p["name"], p["in"]) for p in op.get("parameters", [])}
            content = op.get("requestBody", {}).get("content", {})
            if "multipart/form-data" in content:
                form = content["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
                params |= {(name, "form") for name in schemas[form]["properties"]}
            documented = {(row[0], row[1]) for row in section.tables.get("Parameter", [])}
            problems += _diff(f"{title} parameters", params, documented)

            statuses = set(op["responses"])
            documented_statuses = {row[0] for row in section.tables.get("Status", [])}
            problems += _diff(f"{title} statuses", statuses, documented_statuses)

            body = None
            if "application/json" in content:
                body = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
            if body != section.body_schema:
                problems.append(f"{title}: the body is {body} but docs/api.md says {section.body_schema}")
    assert not problems, "\n".join(problems)


def test_every_object_and_field_is_documented_and_nothing_else(
    document: dict[str, Any], sections: dict[str, Section]
) -> None:
    # Body_* are FastAPI's wrappers of multipart forms, documented as the route's form parameters.
    schemas = {name: s for name, s in document["components"]["schemas"].items() if not name.startswith("Body_")}
    documented = {title for title in sections if _OBJECT.match(f"### {title}")}
    problems = _diff("objects", set(schemas), documented)
    for name, schema in schemas.items():
        if name not in sections:
            continue
        fields = set(schema.get("properties", {}))
        rows = sections[name].tables.get("Field", [])
        problems += _diff(f"{name} fields", fields, {row[0] for row in rows})
        required = set(schema.get("required", []))
        marked = {row[0] for row in rows if len(row) > 2 and row[2] == "yes"}
        problems += _diff(f"{name} required fields", required, marked)
    assert not problems, "\n".join(problems)


def test_the_parser_sees_a_missing_field() -> None:
    """The checks above compare what parse_sections reads; make sure it reads a field table row by row."""
    text = (DOCS / "api.md").read_text()
    assert "| `concept_id` |" in text
    parsed = parse_sections(text.replace("| `concept_id` |", "| `concept_idx` |", 1))
    fields = {row[0] for row in parsed["TrainingOutput"].tables["Field"]}
    assert "concept_idx" in fields and "concept_id" not in fields


def test_problems_md_documents_every_problem_code() -> None:
    text = (DOCS / "problems.md").read_text()
    documented: dict[str, int] = {}
    for match in re.finditer(r"^### ([a-z_]+)\n\nStatus: (\d{3})\.", text, flags=re.M):
        documented[match.group(1)] = int(match.group(2))
    served = {code: kind.status for code, kind in PROBLEM_TYPES.items()}
    assert documented == served


def test_docs_cross_links_resolve() -> None:
    """Every [text](#anchor) in docs/api.md points at a heading of that page."""
    text = (DOCS / "api.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 _-]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in text.splitlines()
        if line.startswith("#")
    }
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links <= anchors, sorted(links - anchors)


def test_webhook_and_event_sections_name_what_is_sent() -> None:
    text = (DOCS / "api.md").read_text()
    webhooks = text[text.index("## Webhooks") : text.index("## Objects")]
    for event, kind in EVENT_TYPES.items():
        assert f'`"{kind}"`' in webhooks and f'"{event}"' in webhooks, (event, kind)
    events = text[text.index("## Server-sent events") : text.index("## Webhooks")]
    assert "event: job" in events and "Last-Event-ID" in events


def _job_error_codes(text: str) -> set[str]:
    table = text[text.index("## Job error codes") :]
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M))


def test_every_code_the_api_raises_is_documented() -> None:
    """Codes named in the API's and core's code (``code="…"`` and the error classes' own) are problem types or job
    error codes, so a new one cannot reach a client undocumented."""
    from core import errors

    root = Path(__file__).resolve().parents[2]
    sources = [*root.joinpath("core").glob("*.py"), *root.joinpath("core", "stores").glob("*.py")]
    sources += list(root.joinpath("services", "api").rglob("*.py"))
    raised = {code for path in sources for code in re.findall(r'\bcode="([a-z_]+)"', path.read_text())}

    def subclasses(cls: type[errors.ServiceError]) -> list[type[errors.ServiceError]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in subclasses(child))]

    from core.webhook_security import WebhookVerificationError

    # Bases raised only through a subclass (or with a code= of their own) never reach a client as themselves, and
    # WebhookVerificationError is for webhook receivers, not an API answer.
    unseen = {errors.ConflictError, errors.AuthError, errors.LimitExceededError, errors.JobCanceledError}
    unseen.add(WebhookVerificationError)
    # Only classes of core and the API: which worker modules a test run has imported must not change the answer
    # (the worker's HandedBack puts a job back in the queue; no client ever sees its code).
    ours = ("core.", "services.api")
    raised |= {
        cls.code for cls in subclasses(errors.ServiceError) if cls not in unseen and cls.__module__.startswith(ours)
    }
    documented = set(PROBLEM_TYPES) | _job_error_codes((DOCS / "problems.md").read_text())
    assert raised - documented == set()
