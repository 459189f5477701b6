"""The README's reference parts against the code they describe: the settings table (every
setting named, with its default) and the commands (every command and option named, and
none named that the CLI does not have). An operator reads the README, not config.py: a
setting or option added without its line, or renamed in one place only, fails here."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import MISSING, fields
from pathlib import Path

import click

from connector.cli import main
from connector.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
# Read on their own (keys, the folder), or no setting an operator gives.
NOT_TABLE_DEFAULTS = {"instance_dir", "database_url", "master_keys", "secret_key"}
NOT_SETTINGS = {"master_key_file", "extra"}


def _settings_table() -> list[tuple[list[str], str]]:
    """The Settings section's rows: the variables a row names, and its default cell."""
    section = README.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    known = {f"KEYGATE_{f.name.upper()}" for f in fields(Settings)}
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`KEYGATE_"):
            continue
        names = re.findall(r"`([A-Z0-9_*]+)`", cells[0])
        first = names[0]
        expanded = [first]
        for short in names[1:]:  # `_PER_IP` after `KEYGATE_RATELIMIT_LICENSE_PER_KEY`
            if short.startswith("KEYGATE_"):
                expanded.append(short)
                continue
            cuts = [i for i, ch in enumerate(first) if ch == "_" and first[:i] + short in known]
            expanded.append(first[: cuts[-1]] + short if cuts else short)
        rows.append((expanded, cells[1]))
    return rows


def _table_default(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_is_in_the_readmes_settings_table_with_its_default() -> None:
    settings = {f"KEYGATE_{f.name.upper()}": f for f in fields(Settings)}
    named: dict[str, str] = {}
    for names, default in _settings_table():
        if names == ["KEYGATE_RETENTION_*_DAYS"]:  # "webhook 90, jobs 30, …"
            for kind, days in re.findall(r"([a-z_]+) (\d+)", default):
                named[f"KEYGATE_RETENTION_{kind.upper()}_DAYS"] = f"`{days}`"
            continue
        values = default.split(" / ") if len(names) > 1 and " / " in default else [default]
        for i, name in enumerate(names):
            named[name] = values[i] if len(values) == len(names) else default
    unknown = set(named) - set(settings) - {"KEYGATE_MASTER_KEY"}
    assert unknown == set(), "the README's settings table names settings Keygate does not read"
    missing = {name for name, spec in settings.items() if spec.name not in NOT_SETTINGS} - set(
        named
    )
    assert missing == set(), "settings missing from the README's settings table"
    wrong = {}
    for name, cell in named.items():
        spec = settings.get(name)
        if spec is None or spec.name in NOT_TABLE_DEFAULTS or spec.default is MISSING:
            continue
        expected = "empty" if spec.default == "" else f"`{_table_default(spec.default)}`"
        if cell != expected:
            wrong[name] = (cell, expected)
    assert wrong == {}, "defaults in the README's settings table (README, config.py)"


def test_every_keygate_variable_the_readme_names_is_read() -> None:
    """Anywhere in the README (the storage and watermark tables, the deployment notes)."""
    read = {f"KEYGATE_{f.name.upper()}" for f in fields(Settings)} | {
        "KEYGATE_MASTER_KEY",  # the one-key spelling of KEYGATE_MASTER_KEYS
        "KEYGATE_ADMIN_PASSWORD",  # `keygate init`, `keygate admin add|password`
    }
    named = set(re.findall(r"KEYGATE_[A-Z0-9_*]*[A-Z0-9]", README))
    tooling = {name for name in named if name.startswith(("KEYGATE_TEST_", "KEYGATE_BENCH_"))}
    patterns = {name for name in named if "*" in name and fnmatch.filter(read, name)}
    assert named - tooling - patterns - read == set(), (
        "variables the README names that Keygate never reads"
    )


def _commands(group: click.Group, prefix: str = "keygate") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        found[path] = command
        if isinstance(command, click.Group):
            found.update(_commands(command, path))
    return found


def test_every_command_and_option_is_in_the_readme() -> None:
    commands = _commands(main)
    missing = {path for path in commands if f"`{path}" not in README}
    assert missing == set(), "commands the README never names"
    options = {
        f"{path} {opt}"
        for path, command in commands.items()
        for param in command.params
        if isinstance(param, click.Option)
        for opt in param.opts
        if opt.startswith("--") and opt != "--help"
    }
    unnamed = {option for option in options if option.rsplit(" ", 1)[1] not in README}
    assert unnamed == set(), "options the README never names"


def test_every_command_the_readme_shows_exists_with_its_options() -> None:
    """A `keygate …` the README shows (in backticks or a shell block) runs: its command
    exists and takes the options written after it."""
    commands = _commands(main)
    spans = re.findall(r"`(?:\.venv/bin/)?keygate ([^`\n]+)`", README)
    spans += re.findall(r"^(?:\.venv/bin/)?keygate (.+)$", README, flags=re.M)  # shell blocks
    wrong = set()
    for span in spans:
        words = span.split()
        path = "keygate"
        for word in words:
            if f"{path} {word}" not in commands:
                break
            path = f"{path} {word}"
        if path == "keygate" and not words[0].startswith("--"):
            wrong.add(f"keygate {words[0]}")  # no such command
            continue
        command = commands.get(path, main)
        after = words[len(path.split()) - 1 :]
        if isinstance(command, click.Group) and after and not after[0].startswith("-"):
            wrong.add(f"{path} {after[0]}")  # no such subcommand
            continue
        takes = {opt for param in command.params for opt in param.opts} | {"--help"}
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", span):
            if option not in takes:
                wrong.add(f"{path} {option}")
    assert wrong == set(), "commands or options the README shows that the CLI does not have"


# Handed out in answers (update-check's download_url), never called by name.
NOT_CALLED_BY_NAME = {"/api/v1/releases/download/<>"}


def _readme_calls() -> set[tuple[str, str]]:
    """(method, path) of every call the README writes as `METHOD /path`: parameters as
    ``<>``, ``a|b`` segments spelt out, ``…/tail`` kept as a suffix."""
    calls = set()
    pattern = r"\b((?:GET|POST|PUT|DELETE)(?:\|(?:GET|POST|PUT|DELETE))*)\s+(…?/[^\s`),;?\[]+)"
    for methods, path in re.findall(pattern, README):
        paths = [""]
        for segment in path.split("/")[1:]:
            paths = [f"{p}/{alternative}" for p in paths for alternative in segment.split("|")]
        prefix = "…" if path.startswith("…") else ""
        calls |= {
            (m, prefix + re.sub(r"<[^>]*>", "<>", p)) for m in methods.split("|") for p in paths
        }
    return calls


def _named(method: str, rule: str, calls: set[tuple[str, str]]) -> bool:
    shape = re.compile(re.escape(rule).replace("<>", "[^/]+"))
    for called, path in calls:
        if called != method:
            continue
        if path.startswith("…") and rule.endswith(path[1:]):
            return True
        if shape.fullmatch(path):  # `credentials/r2` for `credentials/<kind>`
            return True
    return False


def test_every_api_call_is_in_the_readme_with_its_method(tmp_path: Path) -> None:
    """The license and owner APIs, read off the app's routes: each method of each path is
    written in the README (`GET /api/v1/admin/orders/<id>` was only in a curl line)."""
    from cryptography.fernet import Fernet

    from connector import create_app

    app = create_app(
        {
            "instance_dir": tmp_path,
            "database_url": f"sqlite:///{tmp_path / 'x.db'}",
            "master_keys": [Fernet.generate_key().decode()],
            "secret_key": "s" * 40,
            "start_worker": False,
            "check_database": False,  # the routes only
        }
    )
    app.extensions["keygate.db"].engine.dispose()
    calls = _readme_calls()
    unnamed = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<[^>]*>", "<>", rule.rule)
        if not path.startswith(("/api/", "/webhooks/", "/healthz", "/d/")):
            continue  # pages: the README names them as pages, not calls
        if path in NOT_CALLED_BY_NAME:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if not _named(method, path, calls):
                unnamed.add(f"{method} {rule.rule}")
    assert unnamed == set(), "API calls the README never names"
