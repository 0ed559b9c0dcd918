"""The one reader of the environment and the `.env` file: typed, strict, documented.

Every setting is a row in SETTINGS; `config.example.env` documents each row (a test holds
the two together). The process environment wins over the `.env` file. A wrong value stops
the command with a ConfigError that names the setting; secrets never appear in messages.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values

ENV_PREFIX = "MAILDESK_"
PLACEHOLDER_SECRETS = frozenset({"", "changethis", "change-me", "changeme", "secret", "please-change-me"})
DEVELOPMENT_SECRET = "development-only-secret-key-not-for-production"


class ConfigError(ValueError):
    """A setting has a wrong value; str() names the setting and says what is expected."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


@dataclass(frozen=True)
class Settings:
    environment: str
    data_dir: Path
    database_url: str
    support_address: str
    ticket_prefix: str
    language: str
    timezone: str
    secret_key: str
    reopen_days: int
    log_level: str
    imap_host: str
    imap_port: int
    imap_user: str
    imap_password: str
    imap_folder: str
    imap_ssl: bool
    imap_processed_folder: str
    imap_quarantine_folder: str
    imap_poll_seconds: int
    imap_batch_size: int
    parse_processes: int
    max_message_bytes: int
    lmtp_host: str
    lmtp_port: int
    smtp_host: str
    smtp_port: int
    smtp_user: str
    smtp_password: str
    smtp_starttls: bool
    smtp_ssl: bool
    smtp_timeout_seconds: int
    send_process: bool
    bounce_address: str
    outbox_retry_hours: int
    worker_id: str
    trusted_authserv_ids: tuple[str, ...]
    require_dmarc_for_approvals: bool
    address_separator: str
    ack_limit_per_hour: int
    answer_limit_per_hour: int
    default_service_level: str
    deadline_warning_minutes: int
    keep_raw_days: int

    def __repr__(self) -> str:
        shown = {field.name: ("***" if _is_secret(field.name) and getattr(self, field.name) else
                              getattr(self, field.name)) for field in fields(self)}
        return f"Settings({shown})"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def support_domain(self) -> str:
        return self.support_address.rpartition("@")[2]

    @property
    def sent_dir(self) -> Path:
        return self.data_dir / "sent"

    @property
    def template_cache_dir(self) -> Path:
        return self.data_dir / "cache" / "templates"

    @property
    def attachments_dir(self) -> Path:
        return self.data_dir / "attachments"

    @property
    def imap_configured(self) -> bool:
        return bool(self.imap_host)

    @property
    def smtp_configured(self) -> bool:
        return bool(self.smtp_host)


def _is_secret(name: str) -> bool:
    return name.endswith("password") or name == "secret_key"


_ADDRESS = re.compile(r"^[A-Za-z0-9._%+\-=]+@[A-Za-z0-9.\-]+$")


def _text(value: str) -> str:
    return value.strip()


def _boolean(value: str) -> bool:
    folded = value.strip().lower()
    if folded in ("1", "true", "yes", "on"):
        return True
    if folded in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _integer(low: int, high: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        if not value.strip().lstrip("-").isdigit():
            raise ValueError(f"expected a whole number from {low} to {high}")
        number = int(value.strip())
        if not low <= number <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return number
    return convert


def _one_of(*choices: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        folded = value.strip().lower()
        if folded not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return folded
    return convert


def _address(value: str) -> str:
    address = value.strip().lower()
    if not _ADDRESS.match(address):
        raise ValueError("expected a mail address such as support@example.com")
    return address


def _optional_address(value: str) -> str:
    return _address(value) if value.strip() else ""


def _word_list(value: str) -> tuple[str, ...]:
    words = tuple(word.strip().lower() for word in value.replace(",", " ").split() if word.strip())
    if any(not re.fullmatch(r"[a-z0-9.\-]+", word) for word in words):
        raise ValueError("expected host names separated by commas, such as mx.example.com")
    return words


def _prefix(value: str) -> str:
    prefix = value.strip().upper()
    if not re.fullmatch(r"[A-Z][A-Z0-9]{0,9}", prefix):
        raise ValueError("expected 1-10 letters or digits starting with a letter, such as SD")
    return prefix


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError("expected an IANA time zone such as Europe/Riga") from error
    return value.strip()


def _database_url(value: str) -> str:
    url = value.strip()
    if url and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
        raise ValueError("expected sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB")
    return url


@dataclass(frozen=True)
class Setting:
    name: str
    convert: Callable[[str], Any]
    default: str


SETTINGS: tuple[Setting, ...] = (
    Setting("ENVIRONMENT", _one_of("development", "production"), "development"),
    Setting("DATA_DIR", _text, "./var"),
    Setting("DATABASE_URL", _database_url, ""),
    Setting("SUPPORT_ADDRESS", _address, "support@localhost"),
    Setting("TICKET_PREFIX", _prefix, "SD"),
    Setting("LANGUAGE", _one_of("lv", "en"), "lv"),
    Setting("TIMEZONE", _timezone, "Europe/Riga"),
    Setting("SECRET_KEY", _text, ""),
    Setting("REOPEN_DAYS", _integer(0, 3650), "14"),
    Setting("LOG_LEVEL", _one_of("debug", "info", "warning", "error"), "info"),
    Setting("IMAP_HOST", _text, ""),
    Setting("IMAP_PORT", _integer(0, 65535), "0"),
    Setting("IMAP_USER", _text, ""),
    Setting("IMAP_PASSWORD", _text, ""),
    Setting("IMAP_FOLDER", _text, "INBOX"),
    Setting("IMAP_SSL", _boolean, "true"),
    Setting("IMAP_PROCESSED_FOLDER", _text, "Processed"),
    Setting("IMAP_QUARANTINE_FOLDER", _text, "Quarantine"),
    Setting("IMAP_POLL_SECONDS", _integer(1, 3600), "60"),
    Setting("IMAP_BATCH_SIZE", _integer(1, 10000), "200"),
    Setting("PARSE_PROCESSES", _integer(0, 16), "1"),
    Setting("MAX_MESSAGE_BYTES", _integer(1024, 2**31), str(40 * 1024 * 1024)),
    Setting("LMTP_HOST", _text, "127.0.0.1"),
    Setting("LMTP_PORT", _integer(1, 65535), "2525"),
    Setting("SMTP_HOST", _text, ""),
    Setting("SMTP_PORT", _integer(0, 65535), "0"),
    Setting("SMTP_USER", _text, ""),
    Setting("SMTP_PASSWORD", _text, ""),
    Setting("SMTP_STARTTLS", _boolean, "false"),
    Setting("SMTP_SSL", _boolean, "false"),
    Setting("SMTP_TIMEOUT_SECONDS", _integer(1, 600), "30"),
    Setting("SEND_PROCESS", _boolean, "true"),
    Setting("BOUNCE_ADDRESS", _optional_address, ""),
    Setting("OUTBOX_RETRY_HOURS", _integer(1, 24 * 30), "48"),
    Setting("WORKER_ID", _text, ""),
    Setting("TRUSTED_AUTHSERV_IDS", lambda value: _word_list(value), ""),
    Setting("REQUIRE_DMARC_FOR_APPROVALS", _boolean, "true"),
    Setting("ADDRESS_SEPARATOR", _one_of("+", "-", "=", "_"), "+"),
    Setting("ACK_LIMIT_PER_HOUR", _integer(0, 10000), "5"),
    Setting("ANSWER_LIMIT_PER_HOUR", _integer(1, 10000), "10"),
    Setting("DEFAULT_SERVICE_LEVEL", _text, "standard"),
    Setting("DEADLINE_WARNING_MINUTES", _integer(0, 100000), "60"),
    Setting("KEEP_RAW_DAYS", _integer(0, 36500), "0"),
)
# The secrets that may come from a file (MAILDESK_X_FILE), and their names as systemd credentials
# (`LoadCredential=NAME:PATH` puts them in $CREDENTIALS_DIRECTORY, for the unit and for
# `systemd/maildesk-admin` alike).
FILE_SETTINGS = {"SECRET_KEY": "secret-key", "IMAP_PASSWORD": "imap-password", "SMTP_PASSWORD": "smtp-password"}


def load_settings(env_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `environ` (default: the process environment) over the `.env` file.

    With no `env_file`, `./.env` is read when it exists; a named file must exist. Under systemd,
    an unset data folder is the unit's state directory ($STATE_DIRECTORY), and an unset secret
    is read from the unit's credentials ($CREDENTIALS_DIRECTORY), where no *_FILE names one.
    """
    values = _raw_values(env_file, dict(os.environ) if environ is None else dict(environ))
    converted: dict[str, Any] = {}
    for setting in SETTINGS:
        full_name = ENV_PREFIX + setting.name
        raw = values.get(full_name)
        raw = setting.default if raw is None or (raw.strip() == "" and setting.default) else raw
        try:
            converted[setting.name.lower()] = setting.convert(raw)
        except ValueError as error:
            shown = "" if _is_secret(setting.name.lower()) else f" (got {raw!r})"
            raise ConfigError(full_name, f"{error}{shown}") from None
    return _derived(converted)


def _raw_values(env_file: Path | None, environ: dict[str, str]) -> dict[str, str]:
    if env_file is not None and not env_file.is_file():
        raise ConfigError("--env-file", f"no such file: {env_file}")
    path = env_file if env_file is not None else Path(".env")
    from_file = {key: value or "" for key, value in dotenv_values(path).items()} if path.is_file() else {}
    values = {**from_file, **{key: value for key, value in environ.items() if key.startswith(ENV_PREFIX)}}
    credentials = environ.get("CREDENTIALS_DIRECTORY", "")
    for name, credential in FILE_SETTINGS.items():
        file_name = f"{ENV_PREFIX}{name}_FILE"
        if values.get(ENV_PREFIX + name):
            continue
        if values.get(file_name):
            values[ENV_PREFIX + name] = _read_secret_file(file_name, values[file_name])
        elif credentials and (Path(credentials) / credential).is_file():
            values[ENV_PREFIX + name] = _read_secret_file("CREDENTIALS_DIRECTORY", f"{credentials}/{credential}")
    state_directory = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state_directory and not values.get(ENV_PREFIX + "DATA_DIR", "").strip():
        values[ENV_PREFIX + "DATA_DIR"] = state_directory  # systemd's StateDirectory=, unless a folder is named
    return values


def _read_secret_file(setting: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(setting, f"cannot read {path}: {error.strerror}") from None


def _derived(values: dict[str, Any]) -> Settings:
    data_dir = Path(values["data_dir"]).expanduser()
    values["data_dir"] = data_dir
    if not values["database_url"]:
        values["database_url"] = f"sqlite:///{(data_dir / 'maildesk.db').as_posix()}"
    if values["environment"] == "production":
        if values["secret_key"].lower() in PLACEHOLDER_SECRETS or len(values["secret_key"]) < 32:
            raise ConfigError("MAILDESK_SECRET_KEY",
                              "set a random secret of at least 32 characters in production "
                              "(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')")
    elif not values["secret_key"]:
        values["secret_key"] = DEVELOPMENT_SECRET
    if values["imap_port"] == 0:
        values["imap_port"] = 993 if values["imap_ssl"] else 143
    if values["smtp_ssl"] and values["smtp_starttls"]:
        raise ConfigError("MAILDESK_SMTP_STARTTLS", "choose either MAILDESK_SMTP_SSL or MAILDESK_SMTP_STARTTLS")
    if values["smtp_port"] == 0:
        values["smtp_port"] = 465 if values["smtp_ssl"] else (587 if values["smtp_starttls"] else 25)
    if values["imap_host"] and not (values["imap_user"] and values["imap_password"]):
        missing = "MAILDESK_IMAP_USER" if not values["imap_user"] else "MAILDESK_IMAP_PASSWORD"
        raise ConfigError(missing, "required when MAILDESK_IMAP_HOST is set")
    if not values["worker_id"]:
        values["worker_id"] = socket.gethostname()
    if not values["bounce_address"]:
        values["bounce_address"] = values["support_address"]
    return Settings(**values)
