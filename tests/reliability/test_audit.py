"""pip-audit over the locked dependencies (constraints.txt): a known vulnerability fails ``make test`` unless
``audit-exceptions.txt`` documents it. Offline-safe: where the advisory database cannot be reached (no network, or a
package index that mirrors files but not PyPI's vulnerability data), the test skips and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
LOCK = ROOT / "constraints.txt"
EXCEPTIONS = ROOT / "audit-exceptions.txt"


def documented_exceptions(text: str) -> dict[str, str]:
    """``{advisory id: reason}`` from the exceptions file; a line without a reason is an error."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        advisory, _, reason = line.partition(" # ")
        if not reason.strip():
            raise ValueError(f"audit-exceptions.txt line {number}: {advisory.strip()} needs ' # <why>'")
        found[advisory.strip()] = reason.strip()
    return found


def vulnerable(report: dict[str, Any]) -> dict[str, list[str]] | None:
    """``{package==version: advisory ids}`` from pip-audit's JSON; None when it audited no package at all."""
    audited = [d for d in report["dependencies"] if "skip_reason" not in d]
    if not audited:
        return None
    return {f"{d['name']}=={d['version']}": [v["id"] for v in d["vulns"]] for d in audited if d["vulns"]}


def test_a_report_with_a_vulnerability_is_found_and_one_that_audited_nothing_is_told_apart() -> None:
    report = {
        "dependencies": [
            {"name": "a", "version": "1", "vulns": [{"id": "PYSEC-1", "fix_versions": ["2"]}]},
            {"name": "b", "version": "1", "vulns": []},
            {"name": "c", "skip_reason": "Dependency not found on PyPI"},
        ]
    }
    assert vulnerable(report) == {"a==1": ["PYSEC-1"]}
    assert vulnerable({"dependencies": [report["dependencies"][2]]}) is None


def test_the_exceptions_file_needs_a_reason_per_advisory() -> None:
    assert documented_exceptions("# none\nPYSEC-2024-1 # not reachable: we never parse untrusted TOML\n") == {
        "PYSEC-2024-1": "not reachable: we never parse untrusted TOML"
    }
    with pytest.raises(ValueError, match="line 1: GHSA-xxxx needs"):
        documented_exceptions("GHSA-xxxx\n")
    documented_exceptions(EXCEPTIONS.read_text(encoding="utf-8"))  # the shipped file parses


def test_locked_dependencies_have_no_undocumented_known_vulnerability() -> None:
    exceptions = documented_exceptions(EXCEPTIONS.read_text(encoding="utf-8"))
    argv = [sys.executable, "-m", "pip_audit", "-r", str(LOCK), "--no-deps", "--disable-pip", "-f", "json"]
    for advisory in exceptions:
        argv += ["--ignore-vuln", advisory]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("pip-audit: the advisory database did not answer within 300 s")
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"pip-audit could not reach the advisory database: {tail[0][:200]}")
    found = vulnerable(report)
    if found is None:
        dependencies = report["dependencies"]
        reason = dependencies[0]["skip_reason"] if dependencies else "no dependencies read"
        pytest.skip(f"pip-audit audited none of {len(dependencies)} locked packages (e.g. {reason[:120]})")
    assert not found, f"known vulnerabilities (fix, or document in audit-exceptions.txt): {found}"
