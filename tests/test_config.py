"""Settings: defaults, the .env file, strict errors that name the setting, secrets kept out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from maildesk.config import DEVELOPMENT_SECRET, SETTINGS, ConfigError, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.env"


def test_every_setting_is_documented_in_config_example_env() -> None:
    documented = set(re.findall(r"^(MAILDESK_[A-Z_]+)=", EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE))
    assert documented == {"MAILDESK_" + setting.name for setting in SETTINGS}


def test_the_example_file_itself_loads(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert settings.support_address == "support@localhost" and settings.language == "lv"


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.database_url == "sqlite:///var/maildesk.db"
    assert (settings.ticket_prefix, settings.timezone, settings.secret_key) == ("SD", "Europe/Riga",
                                                                                  DEVELOPMENT_SECRET)


def test_the_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    env = tmp_path / "maildesk.env"
    env.write_text("MAILDESK_LANGUAGE=en\nMAILDESK_TICKET_PREFIX=HELP\n")
    settings = load_settings(env, environ={"MAILDESK_LANGUAGE": "lv"})
    assert (settings.language, settings.ticket_prefix) == ("lv", "HELP")


@pytest.mark.parametrize("name, value", [
    ("MAILDESK_LANGUAGE", "de"), ("MAILDESK_TIMEZONE", "Mars/Olympus"), ("MAILDESK_SUPPORT_ADDRESS", "nobody"),
    ("MAILDESK_TICKET_PREFIX", "S D"), ("MAILDESK_IMAP_PORT", "99999"), ("MAILDESK_IMAP_SSL", "maybe"),
    ("MAILDESK_DATABASE_URL", "mysql://x"), ("MAILDESK_REOPEN_DAYS", "soon"),
])
def test_a_wrong_value_names_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={name: value})
    assert error.value.setting == name and str(error.value).startswith(name)


def test_production_refuses_a_missing_or_placeholder_secret() -> None:
    for secret in ("", "changethis", "short"):
        with pytest.raises(ConfigError) as error:
            load_settings(environ={"MAILDESK_ENVIRONMENT": "production", "MAILDESK_SECRET_KEY": secret})
        assert error.value.setting == "MAILDESK_SECRET_KEY"
        assert secret not in str(error.value).replace("MAILDESK_SECRET_KEY", "") or not secret


def test_secrets_come_from_files_and_never_show(tmp_path: Path) -> None:
    (tmp_path / "imap").write_text("hunter2-imap\n")
    settings = load_settings(environ={"MAILDESK_IMAP_HOST": "imap.example.com", "MAILDESK_IMAP_USER": "desk",
                                      "MAILDESK_IMAP_PASSWORD_FILE": str(tmp_path / "imap")})
    assert settings.imap_password == "hunter2-imap"
    assert "hunter2" not in repr(settings)


def test_under_systemd_the_secrets_come_from_the_units_credentials(tmp_path: Path) -> None:
    """`LoadCredential=secret-key:...` and the rest: the example file's empty secrets stay empty
    lines, and neither the unit nor `systemd/maildesk-admin` has to name each file."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "secret-key").write_text("k" * 40 + "\n")
    (credentials / "imap-password").write_text("hunter2-imap")
    (credentials / "smtp-password").write_text("hunter2-smtp")
    env = tmp_path / "maildesk.env"
    env.write_text("MAILDESK_ENVIRONMENT=production\nMAILDESK_SECRET_KEY=\nMAILDESK_IMAP_PASSWORD=\n"
                   "MAILDESK_IMAP_HOST=imap.example.com\nMAILDESK_IMAP_USER=desk\n")
    settings = load_settings(env, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert (settings.secret_key, settings.imap_password, settings.smtp_password) == (
        "k" * 40, "hunter2-imap", "hunter2-smtp")


def test_a_named_secret_wins_over_the_units_credentials(tmp_path: Path) -> None:
    (tmp_path / "secret-key").write_text("from-credentials-" + "c" * 32)
    (tmp_path / "own").write_text("from-own-file-" + "o" * 32)
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), "MAILDESK_ENVIRONMENT": "production"}
    assert load_settings(environ={**environ, "MAILDESK_SECRET_KEY_FILE": str(tmp_path / "own")}
                         ).secret_key.startswith("from-own-file-")
    assert load_settings(environ={**environ, "MAILDESK_SECRET_KEY": "from-environment-" + "e" * 32}
                         ).secret_key.startswith("from-environment-")


def test_under_systemd_an_unset_data_folder_is_the_units_state_directory(tmp_path: Path) -> None:
    """The example file's empty MAILDESK_DATA_DIR, copied to /etc/maildesk/maildesk.env, overrides
    the unit's Environment= (systemd gives EnvironmentFile= the last word): it must still mean the
    state directory, the one place the unit may write."""
    env = tmp_path / "maildesk.env"
    env.write_text("MAILDESK_DATA_DIR=\n")
    state = tmp_path / "state"
    settings = load_settings(env, environ={"STATE_DIRECTORY": str(state)})
    assert settings.data_dir == state and settings.database_url == f"sqlite:///{state}/maildesk.db"
    named = load_settings(environ={"STATE_DIRECTORY": str(state), "MAILDESK_DATA_DIR": str(tmp_path / "own")})
    assert named.data_dir == tmp_path / "own"
    assert load_settings(EXAMPLE, environ={}).data_dir == Path("var")


def test_imap_without_a_password_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"MAILDESK_IMAP_HOST": "imap.example.com", "MAILDESK_IMAP_USER": "desk"})
    assert error.value.setting == "MAILDESK_IMAP_PASSWORD"


def test_a_named_env_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(tmp_path / "missing.env", environ={})
    assert "missing.env" in str(error.value)
