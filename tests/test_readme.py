"""The README's configuration reference is the one the Settings class generates."""

from __future__ import annotations

from pathlib import Path

from core.config import settings_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_configuration_reference_matches_settings() -> None:
    text = README.read_text()
    embedded = text.split("<!-- settings:begin -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert embedded == settings_reference(), "regenerate the README table from core.config.settings_reference()"


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
