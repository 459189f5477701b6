"""Settings are validated once, at boot, with messages that name the setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from connector import create_app
from connector.config import ConfigError, load_settings
from tests.conftest import app_overrides

KEY = Fernet.generate_key().decode()
SECRET = "s" * 40


def env(**extra: str) -> dict[str, str]:
    return {"KEYGATE_MASTER_KEY": KEY, "KEYGATE_SECRET_KEY": SECRET, **extra}


def test_defaults_are_the_embedded_ones(tmp_path: Path) -> None:
    settings = load_settings(environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path)))
    assert settings.database_url == f"sqlite:///{tmp_path / 'keygate.db'}"
    assert settings.storage_dir == tmp_path / "files"
    assert settings.mail_backend == "auto"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.ratelimit_license_per_key == "60/minute"
    # Longer than product sync's 30-day re-read of unlicensed sales.
    assert settings.retention_unlicensed_order_days == 90
    assert settings.retention_audit_days == 730
    # A store's R2 endpoint_url may not point into the instance's own network.
    assert settings.allow_private_endpoints is False


def test_private_endpoints_are_allowed_by_the_setting(tmp_path: Path) -> None:
    settings = load_settings(
        environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path), KEYGATE_ALLOW_PRIVATE_ENDPOINTS="true")
    )
    assert settings.allow_private_endpoints is True


def test_master_keys_newest_first(tmp_path: Path) -> None:
    older = Fernet.generate_key().decode()
    settings = load_settings(
        environ={
            "KEYGATE_MASTER_KEYS": f"{KEY}, {older}",
            "KEYGATE_SECRET_KEY": SECRET,
            "KEYGATE_INSTANCE_DIR": str(tmp_path),
        }
    )
    assert settings.master_keys == (KEY, older)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"KEYGATE_MAX_BODY_BYTES": "lots"}, "KEYGATE_MAX_BODY_BYTES"),
        ({"KEYGATE_WORKER": "sometimes"}, "KEYGATE_WORKER"),
        ({"KEYGATE_MAIL_ECHO": "maybe"}, "KEYGATE_MAIL_ECHO"),
        ({"KEYGATE_ALLOW_PRIVATE_ENDPOINTS": "sometimes"}, "KEYGATE_ALLOW_PRIVATE_ENDPOINTS"),
        ({"KEYGATE_BASE_URL": "ftp://x"}, "KEYGATE_BASE_URL"),
        ({"KEYGATE_BASE_URL": "https://owner:pw@keys.example"}, "without a user, password"),
        ({"KEYGATE_BASE_URL": "https://keys.example/?via=mail"}, "KEYGATE_BASE_URL"),
        ({"KEYGATE_BASE_URL": "https://keys.example/#top"}, "KEYGATE_BASE_URL"),
        ({"KEYGATE_BASE_URL": "https://"}, "KEYGATE_BASE_URL"),
        ({"KEYGATE_BASE_URL": "https://keys.example:99999"}, "KEYGATE_BASE_URL"),
        ({"KEYGATE_BASE_URL": "https://keys example"}, "KEYGATE_BASE_URL"),
        ({"KEYGATE_MASTER_KEY": "not-a-key"}, "master key #1"),
        ({"KEYGATE_MASTER_KEYS": " , "}, "^KEYGATE_MASTER_KEYS names no key: Fernet keys"),
        ({"KEYGATE_SECRET_KEY": "short"}, "secret key .* is shorter than 32"),
        ({"KEYGATE_LOG_LEVEL": "verbose"}, "KEYGATE_LOG_LEVEL must be one of DEBUG"),
        ({"KEYGATE_RATELIMIT_LICENSE_PER_KEY": "lots"}, "KEYGATE_RATELIMIT_LICENSE_PER_KEY"),
        ({"KEYGATE_RATELIMIT_LICENSE_PER_IP": "5/fortnight"}, "KEYGATE_RATELIMIT_LICENSE_PER_IP"),
        ({"KEYGATE_RATELIMIT_STORAGE_URI": "bogus://x"}, "KEYGATE_RATELIMIT_STORAGE_URI"),
        ({"KEYGATE_DATABASE_URL": "garbage"}, "KEYGATE_DATABASE_URL"),
        ({"KEYGATE_DATABASE_URL": "mysql://db/keygate"}, "KEYGATE_DATABASE_URL"),
        ({"KEYGATE_WORKER_POLL_SECONDS": "0"}, "KEYGATE_WORKER_POLL_SECONDS"),
        # Past the longest wait a thread can be given, the worker died of an OverflowError
        # at its first idle poll (the job thread of `keygate run` silently).
        ({"KEYGATE_WORKER_POLL_SECONDS": "1e10"}, "KEYGATE_WORKER_POLL_SECONDS must be at most"),
        ({"KEYGATE_JOB_MAX_ATTEMPTS": "0"}, "KEYGATE_JOB_MAX_ATTEMPTS"),
        ({"KEYGATE_RETENTION_JOBS_DAYS": "0"}, "KEYGATE_RETENTION_JOBS_DAYS"),
        ({"KEYGATE_RETENTION_AUDIT_DAYS": "0"}, "KEYGATE_RETENTION_AUDIT_DAYS must be at least 1"),
        (
            {"KEYGATE_RECONCILE_INTERVAL_SECONDS": "0"},
            "RECONCILE_INTERVAL_SECONDS must be at least 60",
        ),
        (
            {"KEYGATE_PRODUCT_SYNC_INTERVAL_SECONDS": "5"},
            "PRODUCT_SYNC_INTERVAL_SECONDS .* at least 60",
        ),
        ({"KEYGATE_MAX_BODY_BYTES": "0"}, "KEYGATE_MAX_BODY_BYTES must be at least 1024"),
        (
            {"KEYGATE_LEAK_LOOKUP_MAX_BYTES": "0"},
            "KEYGATE_LEAK_LOOKUP_MAX_BYTES must be at least 1024",
        ),
        (
            {"KEYGATE_MAX_BODY_BYTES": str(64 * 1024 * 1024 + 1)},
            "KEYGATE_MAX_BODY_BYTES must be at most 67108864",
        ),
        ({"KEYGATE_BREVO_API_HOST": "notaurl"}, "KEYGATE_BREVO_API_HOST must be an http"),
        ({"KEYGATE_BREVO_API_HOST": "ftp://brevo.example"}, "KEYGATE_BREVO_API_HOST"),
        ({"KEYGATE_BREVO_API_HOST": "http://[::1"}, "KEYGATE_BREVO_API_HOST"),
        ({"KEYGATE_BREVO_API_HOST": "https://api.brevo.com:99999/v3"}, "KEYGATE_BREVO_API_HOST"),
        (
            {"KEYGATE_RETENTION_UNLICENSED_ORDER_DAYS": "0"},
            "KEYGATE_RETENTION_UNLICENSED_ORDER_DAYS must be at least 1",
        ),
        ({"KEYGATE_R2_BUCKET": "Bad_Bucket"}, "KEYGATE_R2_BUCKET must be a bucket name"),
        (
            {"KEYGATE_WATERMARK_TEMPLATE": "Licensed to {name.first}"},
            r"KEYGATE_WATERMARK_TEMPLATE has the field \{name.first\}; the fields are \{name\}",
        ),
        ({"KEYGATE_WATERMARK_TEMPLATE": "For {nmae}"}, r"has the field \{nmae\}"),
        (
            {"KEYGATE_WATERMARK_TEMPLATE": "For {name"},
            "KEYGATE_WATERMARK_TEMPLATE is not a valid template",
        ),
        ({"KEYGATE_WATERMARK_TEMPLATE": "On {date:%Y}"}, "KEYGATE_WATERMARK_TEMPLATE cannot be"),
        (
            {"KEYGATE_R2_BUCKET": "files", "KEYGATE_R2_ACCOUNT_ID": "a b"},
            "KEYGATE_R2_ACCOUNT_ID",
        ),
    ],
)
def test_bad_values_fail_at_boot(tmp_path: Path, variables: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path), **variables))
    # The offending secret itself is never part of the message.
    assert "not-a-key" not in str(caught.value)


def test_missing_master_key_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keygate init"):
        load_settings(environ={"KEYGATE_INSTANCE_DIR": str(tmp_path), "KEYGATE_SECRET_KEY": SECRET})


def test_instance_file_is_read_and_env_wins(tmp_path: Path) -> None:
    (tmp_path / "keygate.toml").write_text(
        'base_url = "https://keys.example"\nmax_body_bytes = 2048\n'
    )
    settings = load_settings(
        environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path), KEYGATE_MAX_BODY_BYTES="4096")
    )
    assert settings.base_url == "https://keys.example"
    assert settings.max_body_bytes == 4096


def test_a_redis_password_is_never_in_the_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            environ=env(
                KEYGATE_INSTANCE_DIR=str(tmp_path),
                KEYGATE_RATELIMIT_STORAGE_URI="redix://:hunter2-secret@cache:6379",
            )
        )
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(("given", "level"), [("warn", "WARNING"), ("FATAL", "CRITICAL")])
def test_logging_s_other_level_names_are_taken(tmp_path: Path, given: str, level: str) -> None:
    where = env(KEYGATE_INSTANCE_DIR=str(tmp_path), KEYGATE_LOG_LEVEL=given)
    assert load_settings(environ=where).log_level == level


def test_a_variable_set_but_empty_is_unset(tmp_path: Path) -> None:
    """VAR= in a compose file or a unit: the default (or keygate.toml) applies."""
    (tmp_path / "keygate.toml").write_text('base_url = "https://keys.example"\n')
    where = env(KEYGATE_INSTANCE_DIR=str(tmp_path), KEYGATE_BASE_URL="", KEYGATE_LOG_LEVEL="")
    settings = load_settings(environ=where)
    assert (settings.base_url, settings.log_level) == ("https://keys.example", "INFO")


def test_good_values_pass_and_the_log_level_is_any_case(tmp_path: Path) -> None:
    settings = load_settings(
        environ=env(
            KEYGATE_INSTANCE_DIR=str(tmp_path),
            KEYGATE_LOG_LEVEL="warning",
            KEYGATE_RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/0",
            KEYGATE_RATELIMIT_LICENSE_PER_KEY="10/second;100/minute",
            KEYGATE_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/keygate",
            KEYGATE_WATERMARK_TEMPLATE="{name:.40} ({email}), order {order!s}",
        )
    )
    assert settings.log_level == "WARNING"
    assert settings.watermark_template == "{name:.40} ({email}), order {order!s}"


def test_defaults_give_way_to_the_instance_file_and_the_environment(tmp_path: Path) -> None:
    """`keygate run` passes its own address as a default base URL: a base_url in
    keygate.toml or KEYGATE_BASE_URL wins over it."""
    own = {"base_url": "http://127.0.0.1:18401"}
    where = env(KEYGATE_INSTANCE_DIR=str(tmp_path))
    assert load_settings(environ=where, defaults=own).base_url == "http://127.0.0.1:18401"
    (tmp_path / "keygate.toml").write_text('base_url = "https://keys.example"\n')
    assert load_settings(environ=where, defaults=own).base_url == "https://keys.example"
    where["KEYGATE_BASE_URL"] = "https://env.example"
    assert load_settings(environ=where, defaults=own).base_url == "https://env.example"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('log_levl = "DEBUG"', "unknown setting.*log_levl"),
        ('master_key = "x"', "master_key cannot be set here"),
        ('secret_key = "x"', "secret_key cannot be set here"),
    ],
)
def test_the_instance_file_refuses_keys_it_cannot_set(
    tmp_path: Path, line: str, message: str
) -> None:
    """A typo or a key there would be silently ignored: it stops Keygate with the reason."""
    (tmp_path / "keygate.toml").write_text(line + "\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path)))
    assert '"x"' not in str(caught.value)


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('watermark_template = ["Licensed to {name}"]', "a list"),
        ("r2_account_id = true", "a boolean"),
        ("r2_secret_access_key = 12345", "a number"),
        ("brevo_api_host = { url = 'https://api.brevo.com/v3' }", "a table"),
        ("r2_bucket = 2026-11-01", "a date"),
    ],
)
def test_a_text_setting_given_another_type_in_the_instance_file_stops_keygate(
    tmp_path: Path, line: str, shown: str
) -> None:
    """TOML says what type a value is: a list, a table, a boolean, a number or a date where
    text is meant (quotes forgotten, brackets added) is refused, not made into its Python
    spelling (a watermark reading "['Licensed to …']" on every PDF)."""
    (tmp_path / "keygate.toml").write_text(line + "\n")
    name = line.split(" ", 1)[0]
    with pytest.raises(ConfigError, match=f"^KEYGATE_{name.upper()} must be text") as caught:
        load_settings(environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path)))
    assert shown in str(caught.value)
    assert "12345" not in str(caught.value)  # a secret's value is never shown


def test_an_instance_file_that_cannot_be_read_says_why(tmp_path: Path) -> None:
    """keygate.toml saved in Latin-1 by an editor, or a folder of that name: a line naming
    the file and why, not a traceback (UnicodeDecodeError, IsADirectoryError)."""
    config = tmp_path / "keygate.toml"
    named = re.escape(str(config))
    config.write_bytes('base_url = "https://bücher.example"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"^{named} is not UTF-8"):
        load_settings(environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path)))
    config.unlink()
    config.mkdir()
    with pytest.raises(ConfigError, match=f"^cannot read {named}: Is a directory$"):
        load_settings(environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path)))


def test_forwarded_for_is_trusted_only_behind_configured_proxies(tmp_path: Path) -> None:
    from connector import create_app
    from connector.extensions import client_ip

    for hops, expected in ((0, "127.0.0.1"), (1, "198.51.100.9")):
        app = create_app(
            {
                "instance_dir": tmp_path,
                "database_url": f"sqlite:///{tmp_path / 'x.db'}",
                "master_keys": [KEY],
                "secret_key": SECRET,
                "proxy_hops": hops,
                "start_worker": False,
                "check_database": False,  # no database needed to read a header
            }
        )
        app.add_url_rule("/ip", "ip", client_ip)
        answer = app.test_client().get(
            "/ip",
            headers={"X-Forwarded-For": "198.51.100.9"},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        )
        assert answer.get_data(as_text=True) == expected
        app.extensions["keygate.db"].engine.dispose()


def test_an_app_whose_watermark_template_cannot_be_filled_in_does_not_start(
    tmp_path: Path,
) -> None:
    """Not a 500 on every click of a watermarked file: the app refuses to start, and the
    one line it gives names the setting, the field and the fields there are."""
    with pytest.raises(ConfigError) as caught:
        create_app(
            app_overrides(
                tmp_path,
                f"sqlite:///{tmp_path / 'keygate.db'}",
                watermark_template="Licensed to {name.first}",
            )
        )
    assert str(caught.value) == (
        "KEYGATE_WATERMARK_TEMPLATE has the field {name.first}; the fields are {name} {email}"
        " {order} {date}"
    )


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_a_blank_watermark_template_in_the_instance_file_stops_the_app(
    tmp_path: Path, blank: str
) -> None:
    """An empty variable is unset (the default line applies), but keygate.toml can say
    watermark_template = "": every stamp would then carry the hidden fingerprint alone and
    show the buyer nothing, so Keygate refuses to start, saying what to do."""
    (tmp_path / "keygate.toml").write_text(f'watermark_template = "{blank}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path)))
    assert str(caught.value) == (
        "KEYGATE_WATERMARK_TEMPLATE is blank; leave it unset for the default line or give one,"
        " such as Licensed to {name}"
    )


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"KEYGATE_R2_ACCESS_KEY_ID": "R2KEYID"}, "KEYGATE_R2_SECRET_ACCESS_KEY"),
        ({"KEYGATE_R2_SECRET_ACCESS_KEY": "R2SECRETVALUE"}, "KEYGATE_R2_ACCESS_KEY_ID"),
        ({}, "KEYGATE_R2_ACCESS_KEY_ID and KEYGATE_R2_SECRET_ACCESS_KEY"),
    ],
)
def test_a_bucket_without_its_keys_stops_keygate_instead_of_the_embedded_folder(
    tmp_path: Path, given: dict[str, str], missing: str
) -> None:
    """KEYGATE_R2_BUCKET set with a key left out (or its variable misspelt): Keygate kept
    every file in the embedded folder, silently, and lost them all from sight on the day
    the key was given."""
    where = env(
        KEYGATE_INSTANCE_DIR=str(tmp_path),
        KEYGATE_R2_BUCKET="files",
        KEYGATE_R2_ACCOUNT_ID="0123456789abcdef",
        **given,
    )
    with pytest.raises(ConfigError, match=f"^KEYGATE_R2_BUCKET is set, but not {missing}:") as e:
        load_settings(environ=where)
    assert "R2KEYID" not in str(e.value) and "R2SECRETVALUE" not in str(e.value)


def test_repr_shows_no_secret(tmp_path: Path) -> None:
    """Settings end up in tracebacks (a frame's locals): keys, secrets and URLs that may hold
    a password are left out of their repr."""
    settings = load_settings(
        environ=env(
            KEYGATE_INSTANCE_DIR=str(tmp_path),
            KEYGATE_DATABASE_URL="postgresql+psycopg://keygate:DBPASSWORD@127.0.0.1/keygate",
            KEYGATE_RATELIMIT_STORAGE_URI="redis://:REDISPASSWORD@127.0.0.1:6379/0",
            KEYGATE_R2_ACCESS_KEY_ID="R2KEYID",
            KEYGATE_R2_SECRET_ACCESS_KEY="R2SECRETVALUE",
        )
    )
    shown = repr(settings)
    assert "instance_dir" in shown
    for secret in (KEY, SECRET, "DBPASSWORD", "REDISPASSWORD", "R2KEYID", "R2SECRETVALUE"):
        assert secret not in shown, secret


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://keygate:pw-secret@[::1/keygate", "must be a sqlite:/// or postgresql://"),
        ("postgresql://keygate:pw-secret@db:54x2/keygate", "a port that is not a number"),
        (
            "postgresql://keygate:pw-secret@db/keygate?connect_timeout=abc",
            r"the database driver refuses \(bad value for connect_timeout: 'abc'\)$",
        ),
        (
            "postgresql://keygate:pw-secret@db/keygate?conect_timeout=5",
            r'refuses \(invalid connection option "conect_timeout"\)$',
        ),
        (
            "postgresql://keygate:pw-secret@db1,db2/keygate?port=5432,5433,5434",
            "refuses .number of hosts and ports",
        ),
        # The driver's reason would show the password: it is left out.
        (
            "postgresql://keygate@db/keygate?password=pw-secret&connect_timeout=pw-secret",
            "the database driver refuses$",
        ),
        ("sqlite:///keygate.db?timeout=soon", r"refuses \(could not convert"),
        ("sqlite://", "must name the SQLite database's file"),
    ],
)
def test_a_database_url_the_engine_or_driver_would_refuse_fails_at_boot(
    tmp_path: Path, url: str, message: str
) -> None:
    """A KEYGATE_DATABASE_URL that SQLAlchemy cannot parse (a bracket left open), or whose
    options the driver refuses before it connects (a connect_timeout that is no number, a
    misspelt option), stops Keygate at boot with a line naming the setting and never its
    password, not a traceback from every command at the first connection."""
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path), KEYGATE_DATABASE_URL=url))
    assert str(caught.value).startswith("KEYGATE_DATABASE_URL ")
    assert "pw-secret" not in str(caught.value)


def test_a_database_url_is_checked_without_connecting(tmp_path: Path) -> None:
    """The check reads the URL as the engine and the driver will: a server that is not
    there (port 1) is no reason to refuse the settings (it may come up after Keygate)."""
    url = "postgresql://keygate:pw@127.0.0.1:1/keygate?connect_timeout=5&sslmode=require"
    where = env(KEYGATE_INSTANCE_DIR=str(tmp_path), KEYGATE_DATABASE_URL=url)
    assert load_settings(environ=where).database_url == url


@pytest.mark.parametrize(
    "url", ["https://keys.example:8443/keygate/", "http://[::1]:8000", "http://127.0.0.1:8000"]
)
def test_a_base_url_with_a_port_and_path_is_taken(tmp_path: Path, url: str) -> None:
    """Behind a proxy Keygate may live under a path and a port of its own."""
    settings = load_settings(environ=env(KEYGATE_INSTANCE_DIR=str(tmp_path), KEYGATE_BASE_URL=url))
    assert settings.base_url == url.rstrip("/")
