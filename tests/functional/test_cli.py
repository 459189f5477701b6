"""The keygate command: init is idempotent and never prompts; store add prints what to paste."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from werkzeug.security import check_password_hash

from connector.cli import main
from tests.conftest import BACKENDS, PG_ADMIN_URL, _truncate_postgres
from tests.licensing_helpers import free_port, wait_until_serving


def cli_env(instance: Path, **settings: str) -> dict[str, str]:
    """This process's environment without its KEYGATE_* settings, for a keygate command on
    ``instance`` with ``settings`` (``WORKER="off"``: KEYGATE_WORKER)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env["KEYGATE_INSTANCE_DIR"] = str(instance)
    return env | {f"KEYGATE_{name}": value for name, value in settings.items()}


def keygate(
    tmp_path: Path, *args: str, database_url: str | None = None, instance: str = "instance"
) -> subprocess.CompletedProcess[str]:
    env = cli_env(tmp_path / instance, WORKER="off")
    if database_url:
        env["KEYGATE_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


MIGRATIONS = Path(__file__).resolve().parents[2] / "connector" / "migrations" / "versions"


def test_init_twice_without_a_terminal(tmp_path: Path) -> None:
    first = keygate(tmp_path, "init")
    assert first.returncode == 0, first.stderr
    # Buyers' names and addresses: the database and its folder are this user's only.
    instance = tmp_path / "instance"
    assert oct(instance.stat().st_mode & 0o777) == "0o700"
    assert oct((instance / "keygate.db").stat().st_mode & 0o777) == "0o600"
    assert "created admin user 'admin'" in first.stdout
    head = sorted(p.name[:4] for p in MIGRATIONS.glob("[0-9]*.py"))[-1]
    assert f"created the database's tables (migration {head})" in first.stdout, first.stdout
    key_file = tmp_path / "instance" / "master.key"
    master = key_file.read_text()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    second = keygate(tmp_path, "init")
    assert second.returncode == 0, second.stderr
    assert "admin user exists" in second.stdout
    assert "database is up to date" in second.stdout
    assert "keygate admin password --username" in second.stdout  # the way back in
    assert key_file.read_text() == master


def test_store_add_prints_json_and_keys_follow_its_format(tmp_path: Path) -> None:
    assert keygate(tmp_path, "init").returncode == 0
    result = keygate(
        tmp_path,
        "store",
        "add",
        "--name",
        "Shop",
        "--url",
        "https://shop.example",
        "--key-prefix",
        "acme",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert set(info) == {"store_id", "webhook_url", "webhook_secret", "api_token", "storage_area"}
    assert info["storage_area"].startswith("stores/") and info["storage_area"].endswith("/")
    assert info["webhook_url"].endswith(f"/webhooks/woocommerce/{info['store_id']}")
    assert info["webhook_secret"].isalnum()
    # The secret is stored encrypted: it is not in the database file.
    db_bytes = (tmp_path / "instance" / "keygate.db").read_bytes()
    assert info["webhook_secret"].encode() not in db_bytes
    assert info["api_token"].encode() not in db_bytes


def test_store_add_notes_the_assumed_address_only_when_none_is_given(tmp_path: Path) -> None:
    """The webhook URL `store add` prints names KEYGATE_BASE_URL: without one it says the
    URL assumes the embedded default; given in keygate.toml (even as that very address, a
    Keygate that really is served there), it says nothing."""
    assert keygate(tmp_path, "init").returncode == 0
    bare = keygate(tmp_path, "store", "add", "--name", "A", "--url", "https://a.example")
    assert bare.returncode == 0, bare.stderr
    assert "webhook_url assumes Keygate is reached at http://127.0.0.1:8000" in bare.stderr
    (tmp_path / "instance" / "keygate.toml").write_text('base_url = "http://127.0.0.1:8000"\n')
    given = keygate(tmp_path, "store", "add", "--name", "B", "--url", "https://b.example")
    assert given.returncode == 0, given.stderr
    assert "webhook_url assumes" not in given.stderr, given.stderr


def test_store_add_refuses_a_bad_url(tmp_path: Path) -> None:
    assert keygate(tmp_path, "init").returncode == 0
    result = keygate(tmp_path, "store", "add", "--name", "Shop", "--url", "shop")
    assert result.returncode != 0
    assert "http(s) URL" in result.stderr


def test_commands_without_init_explain_what_to_do(tmp_path: Path) -> None:
    result = keygate(tmp_path, "store", "add", "--name", "Shop", "--url", "https://x.example")
    assert result.returncode != 0
    assert "keygate init" in result.stderr
    assert "Traceback" not in result.stderr


def test_admin_add_for_one_store(tmp_path: Path) -> None:
    """`keygate admin add --store` makes an admin of that store only; names are unique."""
    assert keygate(tmp_path, "init").returncode == 0
    added = keygate(
        tmp_path, "store", "add", "--name", "Shop", "--url", "https://s.example", "--json"
    )
    store_id = json.loads(added.stdout)["store_id"]
    result = keygate(tmp_path, "admin", "add", "--username", "ana", "--store", store_id)
    assert result.returncode == 0, result.stderr
    assert f"created admin user 'ana' (store {store_id} only)" in result.stdout
    password = result.stdout.split("initial password: ")[1].split()[0]
    assert len(password) >= 16
    db_bytes = (tmp_path / "instance" / "keygate.db").read_bytes()
    assert password.encode() not in db_bytes  # only its hash is kept
    again = keygate(tmp_path, "admin", "add", "--username", "ana")
    assert again.returncode != 0 and "exists" in again.stderr
    unknown = keygate(tmp_path, "admin", "add", "--username", "bo", "--store", "nope")
    assert unknown.returncode != 0 and "no store" in unknown.stderr


def test_admin_password_sets_a_new_password_once_shown(tmp_path: Path) -> None:
    """`keygate admin password` prints a new password once; the old one stops working."""
    created = keygate(tmp_path, "init")
    old = re.search(r"initial password: (\S+)", created.stdout)
    assert old, created.stdout
    assert "/admin/password" in created.stdout
    reset = keygate(tmp_path, "admin", "password", "--username", " admin ")
    assert reset.returncode == 0, reset.stderr
    assert "new password set for 'admin'" in reset.stdout  # the name as kept
    new = re.search(r"password: (\S+)", reset.stdout.split("\n", 1)[1])
    assert new and new.group(1) != old.group(1)
    database = sqlite3.connect(tmp_path / "instance" / "keygate.db")
    stored, generation = database.execute(
        "SELECT password_hash, session_generation FROM admin_users WHERE username = 'admin'"
    ).fetchone()
    database.close()
    assert check_password_hash(stored, new.group(1))
    assert not check_password_hash(stored, old.group(1))
    assert generation == 1
    unknown = keygate(tmp_path, "admin", "password", "--username", "nobody")
    assert unknown.returncode != 0 and "no admin user 'nobody'" in unknown.stderr


def test_who_may_sign_in_is_audited_by_name(tmp_path: Path) -> None:
    """Each admin made from the server (the first one by `keygate init`, more with `keygate
    admin add`) and each password set there leaves an audit entry naming the admin, in the
    log of the store they see (none: every store's). An admin of every store added from a
    shell used to leave no trace, and a password set there did not say whose."""
    assert keygate(tmp_path, "init").returncode == 0
    added = keygate(
        tmp_path, "store", "add", "--name", "Shop", "--url", "https://s.example", "--json"
    )
    store_id = json.loads(added.stdout)["store_id"]
    assert (
        keygate(tmp_path, "admin", "add", "--username", "ana", "--store", store_id).returncode == 0
    )
    assert keygate(tmp_path, "admin", "add", "--username", "bo").returncode == 0
    assert keygate(tmp_path, "admin", "password", "--username", "ana").returncode == 0
    database = sqlite3.connect(tmp_path / "instance" / "keygate.db")
    entries = database.execute(
        "SELECT s.public_id, a.actor, a.action, a.subject FROM audit_events a"
        " LEFT JOIN stores s ON s.id = a.store_id"
        " WHERE a.action LIKE 'admin.%' ORDER BY a.id"
    ).fetchall()
    database.close()
    assert entries == [
        (None, "cli", "admin.added", "admin:admin"),
        (store_id, "cli", "admin.added", "admin:ana"),
        (None, "cli", "admin.added", "admin:bo"),
        (store_id, "cli", "admin.password", "admin:ana"),
    ]


def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`keygate run` stopped by SIGTERM (a service manager, a container) stops serving and
    lets its job worker finish the job in hand, exiting 0 instead of being killed. Listening
    on every address, it names one a browser can open."""
    assert keygate(tmp_path, "init").returncode == 0
    port = free_port()
    returncode, out = run_until_sigterm(tmp_path, "--host", "0.0.0.0", "--port", str(port))  # noqa: S104
    assert returncode == 0
    assert (
        f"Keygate on http://127.0.0.1:{port}  (listening on every address)"
        f"  (admin: http://127.0.0.1:{port}/admin)"
    ) in out, out
    assert "Add a store:" in out and "store add --name" in out  # none yet


def run_until_sigterm(tmp_path: Path, *args: str) -> tuple[int, str]:
    """``keygate run`` with ``args`` (``--port`` among them) once it serves, stopped by
    SIGTERM: its exit status and what it printed."""
    port = int(args[args.index("--port") + 1])
    command = [sys.executable, "-m", "connector.cli", "run", *args]
    returncode, out, _ = serve_until_sigterm(command, cli_env(tmp_path / "instance"), port)
    return returncode, out


def serve_until_sigterm(
    command: list[str], env: dict[str, str], port: int, **popen: Any
) -> tuple[int, str, str]:
    """A server started by ``command``, stopped by SIGTERM once it serves on ``port``: its
    exit status, what it printed and what it logged."""
    server = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    try:
        wait_until_serving(port)
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
        return server.returncode, out, err
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_run_with_stores_counts_them_instead_of_asking_for_one(tmp_path: Path) -> None:
    """Once a store exists the banner says how many are served, not "Add a store"."""
    assert keygate(tmp_path, "init").returncode == 0
    for name in ("One", "Two"):
        url = f"https://{name.lower()}.example"
        assert keygate(tmp_path, "store", "add", "--name", name, "--url", url).returncode == 0
    _, out = run_until_sigterm(tmp_path, "--port", str(free_port()))
    assert "Serving 2 stores" in out, out
    assert "Add a store" not in out, out


def test_a_lost_api_token_is_replaced_from_the_server(tmp_path: Path) -> None:
    """The token is shown once: `keygate store token` gives a new one and the old one stops
    working; `keygate store list` names the stores to pick from."""
    from connector import create_app

    assert keygate(tmp_path, "init").returncode == 0
    added = keygate(tmp_path, "store", "add", "--name", "Shop", "--url", "https://s.example")
    assert "set KEYGATE_BASE_URL" in added.stderr  # the printed webhook URL is a guess
    info = dict(line.split(": ", 1) for line in added.stdout.splitlines() if ": " in line)
    listed = keygate(tmp_path, "store", "list")
    assert listed.stdout.split()[:2] == [info["store_id"], "Shop"]
    replaced = keygate(tmp_path, "store", "token", info["store_id"])
    assert replaced.returncode == 0, replaced.stderr
    new_token = re.search(r"api_token: (\S+)", replaced.stdout).group(1)  # type: ignore[union-attr]
    assert new_token != info["api_token"]
    unknown = keygate(tmp_path, "store", "token", "nope")
    assert unknown.returncode != 0 and "keygate store list" in unknown.stderr

    app = create_app({"instance_dir": tmp_path / "instance", "start_worker": False})
    client = app.test_client()
    for token, status in ((info["api_token"], 401), (new_token, 200)):
        answer = client.get("/api/v1/admin/audit", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == status
    events = client.get(
        "/api/v1/admin/audit?action=store.api_token_replaced",
        headers={"Authorization": f"Bearer {new_token}"},
    ).get_json()["events"]
    assert [e["actor"] for e in events] == ["cli"]
    app.extensions["keygate.db"].engine.dispose()


def test_impossible_server_settings_and_names_are_refused(tmp_path: Path) -> None:
    """A port past 65535 (the socket wrapped it round and mails named the wrong one), no
    threads (a server that never answers), a user name with a line break: refused."""
    assert keygate(tmp_path, "init").returncode == 0
    for args in (("--port", "83073"), ("--port", "0"), ("--threads", "0")):
        refused = keygate(tmp_path, "run", *args)
        assert refused.returncode == 2, args
        assert "is not in the range" in refused.stderr, refused.stderr
    named = keygate(tmp_path, "admin", "add", "--username", "bad\nname")
    assert named.returncode == 1
    assert "printable" in named.stderr


def test_store_secret_replaces_a_hand_wired_stores_webhook_secret(tmp_path: Path) -> None:
    assert keygate(tmp_path, "init").returncode == 0
    added = keygate(
        tmp_path, "store", "add", "--name", "Shop", "--url", "https://shop.example", "--json"
    )
    store = json.loads(added.stdout)
    replaced = keygate(tmp_path, "store", "secret", store["store_id"])
    assert replaced.returncode == 0, replaced.stderr
    secret = re.search(r"webhook_secret: ([A-Za-z0-9]{40})", replaced.stdout)
    assert secret is not None and secret.group(1) != store["webhook_secret"]
    assert keygate(tmp_path, "store", "secret", "nope").returncode == 1


def test_admins_are_listed_and_removed_but_never_the_last_of_every_store(tmp_path: Path) -> None:
    assert keygate(tmp_path, "init").returncode == 0
    assert keygate(tmp_path, "admin", "add", "--username", "ana").returncode == 0
    listed = keygate(tmp_path, "admin", "list")
    assert listed.returncode == 0
    assert [line.split("\t")[:2] for line in listed.stdout.splitlines()] == [
        ["admin", "every store"],
        ["ana", "every store"],
    ]
    assert keygate(tmp_path, "admin", "remove", "--username", "ana").returncode == 0
    last = keygate(tmp_path, "admin", "remove", "--username", "admin")
    assert last.returncode == 1 and "last admin of every store" in last.stderr
    assert keygate(tmp_path, "admin", "remove", "--username", "nobody").returncode == 1
    assert "ana" not in keygate(tmp_path, "admin", "list").stdout


def test_a_database_that_cannot_be_used_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A PostgreSQL database not created yet, or a server not listening: the command says
    which database (no password) and why, and what to do when it does not exist yet."""
    missing = keygate(
        tmp_path,
        "init",
        database_url="postgresql://postgres:pw-secret@127.0.0.1:5432/keygate_never_created",
    )
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr
    # A new instance has no keys yet: the database is named all the same (password hidden).
    assert (
        "cannot use the database at postgresql://postgres:***@127.0.0.1:5432/keygate_never_created:"
        in missing.stderr
    )
    assert "does not exist" in missing.stderr
    assert "createdb" in missing.stderr and "pw-secret" not in missing.stderr
    assert keygate(tmp_path, "init").returncode == 0  # the keys it needs, for the next one
    port = free_port()
    closed = keygate(
        tmp_path,
        "store",
        "list",
        database_url=f"postgresql://postgres@127.0.0.1:{port}/k?password=q-secret",
    )
    assert closed.returncode != 0
    assert "Traceback" not in closed.stderr and "q-secret" not in closed.stderr
    assert closed.stderr.startswith(
        f"Error: cannot use the database at postgresql://postgres@127.0.0.1:{port}/k:"
    ), closed.stderr  # the line alone: no warning that the start-up check was skipped first
    assert len(closed.stderr.strip().splitlines()) == 1, closed.stderr


def test_the_cli_holds_admin_passwords_and_names_to_the_pages_rules(tmp_path: Path) -> None:
    """KEYGATE_ADMIN_PASSWORD shorter than the sign-in page allows, or an empty admin
    name, is refused with the rule; nothing is created."""
    env = cli_env(tmp_path / "instance", WORKER="off")

    def run(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"KEYGATE_ADMIN_PASSWORD": password} if password is not None else {}
        return subprocess.run(
            [sys.executable, "-m", "connector.cli", *args],
            env=env | extra,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    empty_name = run("init", "--admin-user", "  ")
    assert empty_name.returncode != 0 and "username must be 1 to 100" in empty_name.stderr
    short = run("init", password="x")
    assert short.returncode != 0 and "KEYGATE_ADMIN_PASSWORD must be 12" in short.stderr
    assert run("init", password="a long enough secret").returncode == 0
    assert run("admin", "add", "--username", "ana", password="short").returncode != 0
    assert "ana" not in run("admin", "list").stdout
    refused = run("admin", "password", "--username", "admin", password="tiny")
    assert refused.returncode != 0 and "must be 12" in refused.stderr


def test_a_database_migrated_by_a_newer_keygate_says_so_in_a_line(tmp_path: Path) -> None:
    """After a deploy is rolled back, the database is at a migration this Keygate does not
    have: every command, `keygate init` included, says a newer Keygate migrated it and to run
    that version (not "run `keygate init`", which cannot help), in a line, not a traceback."""
    assert keygate(tmp_path, "init").returncode == 0
    database = sqlite3.connect(tmp_path / "instance" / "keygate.db")
    database.execute("UPDATE alembic_version SET version_num = '9999'")
    database.commit()
    database.close()
    for args in (("store", "list"), ("init",)):
        result = keygate(tmp_path, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr[-600:]
        assert "migration 9999" in result.stderr and "a newer Keygate" in result.stderr
        assert "run `keygate init`" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_instance_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    """KEYGATE_INSTANCE_DIR mistyped to name a file (keygate.toml, the database itself), or
    a path under one: `keygate init` names the path in a line, not a traceback from mkdir;
    the file is left as it was."""
    (tmp_path / "instance").write_text("not a folder\n")
    for given in ("instance", "instance/sub"):
        result = keygate(tmp_path, "init", instance=given)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr, result.stderr[-600:]
        assert result.stderr.startswith(f"Error: {tmp_path / given} is a file, not a folder") or (
            result.stderr.startswith(f"Error: cannot make the folder {tmp_path / given}:")
        ), result.stderr
        assert "KEYGATE_INSTANCE_DIR" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (tmp_path / "instance").read_text() == "not a folder\n"


def test_run_on_a_port_in_use_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """`keygate run` on a port another process holds (a second `make run`, a server left
    running) says so in a line naming the address, without first claiming to serve there,
    and exits: no traceback from waitress's bind."""
    assert keygate(tmp_path, "init").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = keygate(tmp_path, "run", "--port", str(port))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: the port is in use")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Keygate on" not in result.stdout


def test_a_mistyped_database_url_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A KEYGATE_DATABASE_URL that SQLAlchemy cannot parse (a bracket left open) or whose
    options the driver refuses (a connect_timeout that is no number): every command says
    so in a line naming the setting, without the password."""
    assert keygate(tmp_path, "init").returncode == 0  # keys in instance/: the URL is next
    for url in (
        "postgresql://keygate:pw-secret@[::1/keygate",
        "postgresql://keygate:pw-secret@127.0.0.1:5432/keygate?connect_timeout=abc",
    ):
        result = keygate(tmp_path, "store", "list", database_url=url)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr, result.stderr[-600:]
        assert result.stderr.startswith("Error: KEYGATE_DATABASE_URL "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "pw-secret" not in result.stderr + result.stdout


def test_gunicorn_with_a_malformed_setting_stops_with_a_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    """Served as "At scale" says (`gunicorn 'connector.wsgi:app'`), a malformed setting
    stops gunicorn with the line the keygate command gives, not a worker's traceback, and
    gunicorn does not fork worker after worker."""
    assert keygate(tmp_path, "init").returncode == 0
    env = cli_env(tmp_path / "instance", WORKER="off", MAX_BODY_BYTES="lots")
    gunicorn = Path(sys.executable).parent / "gunicorn"
    result = subprocess.run(
        [str(gunicorn), "--workers", "1", "-b", f"127.0.0.1:{free_port()}", "connector.wsgi:app"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "keygate: KEYGATE_MAX_BODY_BYTES must be a number" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("Booting worker") == 1


def _options(group: click.Group, prefix: str = "keygate") -> list[tuple[str, click.Option]]:
    found: list[tuple[str, click.Option]] = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found += _options(command, path)
        found += [(path, p) for p in command.params if isinstance(p, click.Option)]
    return found


def test_every_cli_option_says_what_it_does_in_its_help() -> None:
    """`keygate <command> --help` describes each option, not only its type and default."""
    bare = [f"{path} {option.opts[0]}" for path, option in _options(main) if not option.help]
    assert bare == []


def test_a_key_file_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """`keygate init` that cannot write a new key file (a link to a secrets volume not
    mounted, a disk that takes no more) says which file and why in a line, not a traceback
    from os.open; a key file cut short is not left behind for the next start to read."""
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "master.key").symlink_to(tmp_path / "secrets" / "master.key")
    linked = keygate(tmp_path, "init")
    assert linked.returncode == 1, linked.stderr
    assert "Traceback" not in linked.stderr, linked.stderr[-600:]
    assert linked.stderr.startswith(
        f"Error: {instance / 'master.key'} is a link to {tmp_path / 'secrets' / 'master.key'},"
        " which is not there"
    ), linked.stderr
    assert len(linked.stderr.strip().splitlines()) == 1, linked.stderr

    if "postgresql" not in BACKENDS:  # SQLite would need the disk first; PostgreSQL does not
        return
    # No Keygate tables in that database: new keys are welcome.
    env = cli_env(tmp_path / "full", DATABASE_URL=PG_ADMIN_URL)
    full = subprocess.run(
        [sys.executable, "-m", "connector.cli", "init"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # A disk that takes no more (Python ignores SIGXFSZ: the write fails with EFBIG).
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)),
    )
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr, full.stderr[-600:]
    assert full.stderr.startswith(f"Error: cannot write {tmp_path / 'full' / 'master.key'}: ")
    assert len(full.stderr.strip().splitlines()) == 1, full.stderr
    assert not (tmp_path / "full" / "master.key").exists()  # not an empty key file


def test_two_inits_at_once_both_finish_with_one_pair_of_keys_and_one_admin(
    tmp_path: Path, database_url: str
) -> None:
    """A server and a worker that each run `keygate init` as they start, on a new instance:
    the one that finds a key file the other made meanwhile uses it. It said instead that
    the keys were missing from a database in use, or died of a traceback from readlink."""
    for attempt in range(3):
        instance = tmp_path / f"instance{attempt}"
        env = cli_env(instance, WORKER="off")
        if database_url.startswith("postgresql"):  # SQLite: a new one in each instance
            env["KEYGATE_DATABASE_URL"] = database_url
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "connector.cli", "init"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [run.communicate(timeout=60) for run in runs]
        for run, (_out, err) in zip(runs, outputs, strict=True):
            assert run.returncode == 0, err[-800:]
        said = "".join(out for out, _err in outputs)
        assert said.count("created admin user 'admin'") <= 1, said
        assert said.count(f"wrote {instance / 'master.key'}") == 1, said
        again = keygate(
            tmp_path,
            "admin",
            "list",
            database_url=env.get("KEYGATE_DATABASE_URL"),
            instance=instance.name,
        )
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("admin\tevery store"), again.stdout
        if database_url.startswith("postgresql"):  # one database for every attempt
            _truncate_postgres(database_url)


def test_a_worker_without_its_database_says_so_in_a_line_each_try(tmp_path: Path) -> None:
    """`keygate worker` started while its database cannot be reached keeps trying (it may
    come back), saying why in a line each time: not the same traceback every poll, and not
    the URL's password."""
    assert keygate(tmp_path, "init").returncode == 0  # the keys
    env = cli_env(
        tmp_path / "instance",
        DATABASE_URL=f"postgresql://keygate:pw-secret@127.0.0.1:{free_port()}/k",
        WORKER_POLL_SECONDS="0.1",
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        tries = []
        for line in worker.stderr:
            assert "Traceback" not in line and "pw-secret" not in line, line
            if "cannot be reached" in line or "worker loop error" in line:
                tries.append(line)
            if len(tries) == 2:
                break
        worker.send_signal(signal.SIGTERM)
        rest = worker.communicate(timeout=30)[1]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert all("connector.jobs:the database cannot be reached (" in line for line in tries), tries
    assert "Connection refused" in tries[0] and tries[0].endswith("; retrying\n")
    assert "Traceback" not in rest and worker.returncode == 0


def test_a_role_that_does_not_exist_is_not_told_to_create_the_database(tmp_path: Path) -> None:
    """A role that does not exist is no missing database: `createdb` would not help."""
    assert keygate(tmp_path, "init").returncode == 0
    server = PG_ADMIN_URL.rsplit("/", 1)[0].split("@", 1)[1]
    result = keygate(
        tmp_path, "store", "list", database_url=f"postgresql://no_such_role@{server}/postgres"
    )
    assert result.returncode == 1, result.stderr
    assert 'role "no_such_role" does not exist' in result.stderr
    assert "createdb" not in result.stderr


def test_arguments_that_are_not_utf8_are_refused_in_a_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 (a Latin-1 terminal or script) in a store's name or id, an
    admin's name or KEYGATE_ADMIN_PASSWORD: refused in a line naming them (the password
    never shown), not a traceback from the database driver; nothing is created."""
    assert keygate(tmp_path, "init").returncode == 0
    latin1 = os.fsdecode("Café".encode("latin-1"))  # as Python reads b"Caf\xe9" from argv
    for args in (
        ("store", "add", "--name", latin1, "--url", "https://s.example"),
        ("store", "token", latin1),
        ("admin", "remove", f"--username={latin1}"),
    ):
        result = keygate(tmp_path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr[-600:]
        assert result.stderr.strip().splitlines()[-1].startswith("Error: '"), result.stderr
        assert "Caf\\xe9' is not UTF-8 text" in result.stderr
    empty = keygate(tmp_path, "store", "list")
    assert empty.stdout == ""  # a script reading the list reads none; a person is told why
    assert "No stores yet. Add a store:" in empty.stderr, empty.stderr
    env = cli_env(
        tmp_path / "instance", ADMIN_PASSWORD=os.fsdecode("très secret, oui".encode("latin-1"))
    )
    password = subprocess.run(
        [sys.executable, "-m", "connector.cli", "admin", "add", "--username", "ana"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert password.returncode == 1, password.stderr
    assert password.stderr == (
        "Error: KEYGATE_ADMIN_PASSWORD is not UTF-8 text: set it from a UTF-8 terminal or file\n"
    )
    assert "ana" not in keygate(tmp_path, "admin", "list").stdout


def test_a_worker_shows_what_jobs_log_at_info(tmp_path: Path) -> None:
    """`keygate worker` shows Keygate's INFO lines (a shop note written, a copy restamped),
    as `keygate run` does: without a handler, Python prints warnings alone."""
    assert keygate(tmp_path, "init").returncode == 0
    env = cli_env(tmp_path / "instance")
    script = (
        "import logging, sys\n"
        "import connector.jobs\n"
        "def work(app, stop):\n"
        "    logging.getLogger('connector.orders.writeback').info('order 7: shop note written')\n"
        "connector.jobs.work_forever = work\n"
        "from connector.cli import main\n"
        "main(['worker'])\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert "INFO:connector.orders.writeback:order 7: shop note written" in ran.stderr, ran.stderr


def test_keygate_version_names_the_installed_release(tmp_path: Path) -> None:
    """What an owner quotes when asking for help: the release installed, nothing touched
    (no instance folder made, no database opened)."""
    from importlib.metadata import version

    shown = keygate(tmp_path, "--version")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"keygate {version('keygate')}\n"
    assert not (tmp_path / "instance").exists()


def test_an_admin_kept_in_another_unicode_form_is_reached_by_its_own_spelling(
    tmp_path: Path,
) -> None:
    """Migration 0026 leaves "Zoe" + combining diaeresis when "Zoë" is taken: the commands
    still reach each by the spelling it is kept in (NFC alone would always find "Zoë")."""
    assert keygate(tmp_path, "init").returncode == 0
    database = sqlite3.connect(tmp_path / "instance" / "keygate.db")
    for name in ("Zoe\u0308", "Zo\u00eb"):
        database.execute(
            "INSERT INTO admin_users (username, password_hash, session_generation, created_at)"
            " VALUES (?, 'h', 0, CURRENT_TIMESTAMP)",
            (name,),
        )
    database.commit()
    removed = keygate(tmp_path, "admin", "remove", "--username", "Zoe\u0308")
    assert removed.returncode == 0, removed.stderr
    kept = [row[0] for row in database.execute("SELECT username FROM admin_users")]
    database.close()
    assert "Zo\u00eb" in kept and "Zoe\u0308" not in kept


def _first_lines_of_a_worker(env: dict[str, str]) -> str:
    """What `keygate worker` says up to its "running" line, then stopped by SIGTERM."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    said = []
    try:
        assert worker.stdout is not None
        for line in worker.stdout:
            said.append(line)
            if "keygate worker running" in line:
                break
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    return "".join(said)


def test_a_worker_without_a_base_url_says_its_mails_link_nowhere(tmp_path: Path) -> None:
    """At scale the workers write the buyers' mails: one started without KEYGATE_BASE_URL
    (a service unit given only the database) would mail every buyer links to
    http://127.0.0.1:8000. It says so when it starts; one given the address (environment
    or keygate.toml) does not."""
    assert keygate(tmp_path, "init").returncode == 0
    instance = tmp_path / "instance"
    bare = _first_lines_of_a_worker(cli_env(instance, WORKER_POLL_SECONDS="60"))
    assert "KEYGATE_BASE_URL" in bare and "http://127.0.0.1:8000" in bare, bare
    given = cli_env(instance, WORKER_POLL_SECONDS="60", BASE_URL="https://keys.example.com")
    assert "KEYGATE_BASE_URL" not in _first_lines_of_a_worker(given)
    (instance / "keygate.toml").write_text('base_url = "https://keys.example.com"\n')
    in_file = _first_lines_of_a_worker(cli_env(instance, WORKER_POLL_SECONDS="60"))
    assert "KEYGATE_BASE_URL" not in in_file, in_file


def test_gunicorn_without_a_base_url_says_its_links_lead_nowhere(tmp_path: Path) -> None:
    """Served as "At scale" says, without KEYGATE_BASE_URL the servers' pages and admin
    answers (portal links, webhook URLs) would name http://127.0.0.1:8000: gunicorn's log
    says so."""
    assert keygate(tmp_path, "init").returncode == 0
    port = free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    _, _, said = serve_until_sigterm(
        [str(gunicorn), "--workers", "1", "-b", f"127.0.0.1:{port}", "connector.wsgi:app"],
        cli_env(tmp_path / "instance", WORKER="off"),
        port,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert "KEYGATE_BASE_URL" in said and "http://127.0.0.1:8000" in said, said
