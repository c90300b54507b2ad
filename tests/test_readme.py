"""The README's configuration reference is the one the Settings class generates, and every command, make target and
environment variable it names exists (commands parse, with ``--help`` and as given)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import typer

from core.config import settings_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_configuration_reference_matches_settings() -> None:
    text = README.read_text()
    embedded = text.split("<!-- settings:begin -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert embedded == settings_reference(), "regenerate the README table from core.config.settings_reference()"


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text


# ---- every command, make target and variable the README names exists --------------------------------------------

_FENCED = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# Where a shell line stops being the command: comments, pipes, chains, background.
_SHELL_BREAKS = {"#", "|", "||", "&&", "&", ";"}
# Words that stand for a value the reader fills in: `tessera keys revoke KEY_ID`, `--dest <models root>`, `…`.
_PLACEHOLDER = re.compile(r"^(…|\.\.\.|<.*|.*>|[A-Z][A-Z0-9_]*)$")


def _code() -> list[str]:
    """Every line of every fenced block, and every inline code span outside them, continuations joined."""
    text = README.read_text()
    lines = []
    for block in _FENCED.findall(text):
        lines += block.replace("\\\n", " ").splitlines()
    lines += _INLINE.findall(_FENCED.sub("", text))
    return lines


def _commands(program: str) -> list[list[str]]:
    """The arguments of every ``program ...`` command the README shows (also as ``.venv/bin/program``)."""
    found = []
    for line in _code():
        try:
            words = shlex.split(line, comments=False)
        except ValueError:
            continue
        for i, word in enumerate(words):
            if word in (program, f".venv/bin/{program}") and (i == 0 or words[i - 1] in _SHELL_BREAKS | {"or:"}):
                args = []
                for arg in words[i + 1 :]:
                    if arg in _SHELL_BREAKS or arg.startswith("#"):
                        break
                    args.append(arg)
                found.append(args)
    return found


def _parse(command: Any, args: list[str], parent: typer.Context | None = None) -> None:
    """Parse ``args`` as the CLI would (types, choices, extra arguments) without running the command.

    ``command`` is the Click command typer builds (typer vendors its own Click, so it is typed loosely here).
    """
    with command.make_context(command.name or "tessera", list(args), parent=parent) as ctx:
        if hasattr(command, "resolve_command"):  # a group
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if rest:
                name, sub, sub_args = command.resolve_command(ctx, rest)
                assert sub is not None, f"no command {name}"
                _parse(sub, sub_args, ctx)


def test_readme_tessera_commands_parse() -> None:
    from typer.main import get_command
    from typer.testing import CliRunner

    from services.cli import app

    commands = _commands("tessera")
    assert len(commands) >= 5, commands
    cli = get_command(app)
    runner = CliRunner()
    failures = []
    for args in commands:
        if not args:
            continue  # the program's name in prose, not a command
        shown = " ".join(["tessera", *args])
        # With a placeholder, what comes before it must still be a command (its --help), minus a dangling option.
        concrete = next((i for i, a in enumerate(args) if _PLACEHOLDER.match(a)), len(args))
        known = args[:concrete]
        if concrete < len(args) and known and known[-1].startswith("-"):
            known = known[:-1]
        result = runner.invoke(app, [*known, "--help"], prog_name="tessera")
        if result.exit_code != 0 or "usage:" not in result.output.lower():
            failures.append(f"{shown} --help: exit {result.exit_code}: {result.output.strip()[-300:]}")
            continue
        if concrete < len(args):
            continue
        # --help stops parsing before values are checked, so parse the command itself too (nothing runs).
        try:
            _parse(cli, args)
        except typer.Exit as exc:  # an eager option that answers and exits (--help, --version)
            if exc.exit_code != 0:
                failures.append(f"{shown}: exit {exc.exit_code}")
        except typer.TyperException as exc:
            if type(exc).__name__ != "NoArgsIsHelpError":  # a group named alone answers with its help
                failures.append(f"{shown}: {getattr(exc, 'format_message', exc.__str__)()}")
    assert not failures, "\n".join(failures)


def _make_targets() -> set[str]:
    targets = set()
    for line in (README.parent / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_./ -]+?)\s*:(?![=:])", line)
        if match and not line.startswith("\t"):
            targets |= set(match.group(1).split())
    return targets


def test_readme_make_targets_exist() -> None:
    named = {args[0] for args in _commands("make") if args and not args[0].startswith("-")}
    named |= set(re.findall(r"`make ([A-Za-z0-9_-]+)", README.read_text()))
    assert {"demo", "test"} <= named
    missing = named - _make_targets()
    assert not missing, f"the README names make targets the Makefile lacks: {sorted(missing)}"


def _compose_variables() -> set[str]:
    """Variables docker-compose.yml interpolates (``${NAME:-default}``): set in the shell, not read by Settings."""
    return set(re.findall(r"\$\{(TESSERA_[A-Z0-9_]+)", (README.parent / "docker-compose.yml").read_text()))


def _cli_variables() -> set[str]:
    """Environment variables the CLI's options read (``envvar=``)."""
    from typer.main import get_command

    from services.cli import app

    found: set[str] = set()

    def walk(command: Any) -> None:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            found.update([envvar] if isinstance(envvar, str) else list(envvar or []))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(get_command(app))
    return found


def test_readme_environment_variables_exist() -> None:
    settings = set(re.findall(r"^\| `(TESSERA_[A-Z0-9_]+)`", settings_reference(), re.M))
    assert "TESSERA_REDIS__URL" in settings
    named = set(re.findall(r"\bTESSERA_[A-Z0-9_]*[A-Z0-9]", README.read_text()))
    unknown = named - settings - _cli_variables() - _compose_variables()
    assert not unknown, f"the README names variables nothing reads: {sorted(unknown)}"
