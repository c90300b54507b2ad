"""The client package stands alone: it declares only its four dependencies and imports nothing of the server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import requires

ALLOWED = {"httpx", "pydantic", "httpx-sse", "tenacity"}
SERVER_MODULES = ["core", "services", "boto3", "redis", "PIL", "prometheus_client", "fastapi", "celery", "torch"]


def test_declared_dependencies_are_only_http_models_sse_and_retries() -> None:
    declared = requires("tessera-client") or []
    runtime = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in declared if "extra ==" not in r}
    assert runtime == ALLOWED


def test_importing_the_client_loads_nothing_of_the_server() -> None:
    code = (
        "import json, sys, tessera_client, tessera_client.sync_client, tessera_client.async_client, "
        "tessera_client.progress; "
        f"print(json.dumps(sorted(m for m in {SERVER_MODULES!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_the_package_ships_its_type_information() -> None:
    from importlib.resources import files

    import tessera_client

    assert files(tessera_client).joinpath("py.typed").is_file()
