"""syncstats' settings: command-line flags, environment, a TOML file, defaults.

Sources, highest first: values passed by the caller (the CLI's flags),
environment variables prefixed ``SYNCSTATS_``, the TOML file named by
``--config`` or ``SYNCSTATS_CONFIG``, then the defaults below.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from syncstats._windows import check_window, parse_duration
from syncstats.errors import ConfigError

DEFAULT_RABBITMQ_STATS_URL = (
    "http://guest:guest@localhost:15672/api/queues/%2F/tapiriik-users"
    "?lengths_age=3600&lengths_incr=60&msg_rates_age=3600&msg_rates_incr=60"
)

MAX_DURATION = 10 * 365 * 86400.0  # longer is a typo, and overflows dates


def _check_http_url(url: str) -> str:
    parsed = urlsplit(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        port = parsed.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("has a port that is not a number from 1 to 65535")
    return url


def _check_queue_url(url: str) -> str:
    # The vhost and the queue's name, percent-encoded, after any proxy prefix.
    _, marker, rest = urlsplit(url).path.partition("/api/queues/")
    segments = rest.rstrip("/").split("/")
    if not marker or len(segments) != 2 or not all(segments):
        raise ValueError("must end in /api/queues/<vhost>/<queue>")
    return url


# RFC 6750's token characters: what a client can send after "Bearer ".
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def _duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than ten years")
    return seconds


def _period(value: object) -> float:
    seconds = _duration(value)
    if seconds < 1:
        raise ValueError(f"{value!r} is shorter than a second")
    return seconds


def _window(value: object) -> float:
    return check_window(_period(value))


Duration = Annotated[float, BeforeValidator(_duration)]
# How often something recurs, or how long it holds: below a second is a slip.
Period = Annotated[float, BeforeValidator(_period)]
WindowLength = Annotated[float, BeforeValidator(_window)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
QueueUrl = Annotated[HttpUrl, AfterValidator(_check_queue_url)]


class RateWindow(BaseModel):
    """One configured rate-limit window: at most ``max`` calls per ``window``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: WindowLength = Field(description="window length in seconds")
    # Strict: TOML's true is not a count. MongoDB stores 64-bit integers.
    max: int = Field(gt=0, le=2**62, strict=True)


class Settings(BaseSettings):
    """Every setting of syncstats; see the README for their meaning."""

    model_config = SettingsConfigDict(
        env_prefix="SYNCSTATS_", extra="forbid", frozen=True
    )

    mongo_uri: str | None = Field(default=None, repr=False)
    database: str = "tapiriik"
    ratelimit_database: str = "tapiriik_ratelimit"
    mongo_timeout: Duration = 10.0
    rabbitmq_stats_url: QueueUrl = Field(default=DEFAULT_RABBITMQ_STATS_URL, repr=False)
    rabbitmq_timeout: Duration = 10.0
    rabbitmq_prometheus_url: HttpUrl | None = Field(default=None, repr=False)
    rate_limits: dict[str, list[RateWindow]] = Field(default_factory=dict)
    interval: Period = 600.0
    ratelimit_interval: Period = 60.0
    http_token: SecretStr | None = None
    reconcile_every: Period = 86400.0
    read_preference: Literal[
        "primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"
    ] = "primary"
    lease_ttl: Period = 60.0
    history_days: float = Field(default=90.0, ge=0, le=36500, allow_inf_nan=False)

    @field_validator("database", "ratelimit_database")
    @classmethod
    def _check_database_name(cls, value: str) -> str:
        if not value or any(char in value for char in '/\\. "$\0'):
            raise ValueError(f"invalid database name {value!r}")
        return value

    @field_validator("http_token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        token = "" if value is None else value.get_secret_value()
        # A blank token is refused by the commands that serve HTTP.
        if token.strip() and not _BEARER_TOKEN.fullmatch(token):
            raise ValueError(
                "use letters, digits and - . _ ~ + / (then = signs), which a "
                "client can send as a bearer token"
            )
        return value

    @field_validator("rate_limits")
    @classmethod
    def _check_distinct_windows(
        cls, value: dict[str, list[RateWindow]]
    ) -> dict[str, list[RateWindow]]:
        for key, windows in value.items():
            if not key.strip():
                raise ValueError("a service id must not be empty")
            lengths = [window.window for window in windows]
            if len(set(lengths)) != len(lengths):
                raise ValueError(f"{key}: two windows of the same length")
        return value

    def limits(self) -> dict[str, list[tuple[float, int]]]:
        """The rate limits as ``{service: [(seconds, max), ...]}``."""
        return {
            key: [(window.window, window.max) for window in windows]
            for key, windows in self.rate_limits.items()
        }


def load_settings(
    config_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build the settings from every source; raise `ConfigError` if invalid.

    ``overrides`` are the command-line values; ``None`` values are ignored.
    """
    path = config_path or os.environ.get("SYNCSTATS_CONFIG") or None
    file_values = _read_toml(Path(path)) if path else {}
    flags = {
        key: value for key, value in (overrides or {}).items() if value is not None
    }

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                env_settings,
                InitSettingsSource(settings_cls, init_kwargs=file_values),
            )

    try:
        return _Layered(**flags)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:
        # The environment held a value that is not JSON where JSON belongs.
        field = str(exc).split('"')[1] if '"' in str(exc) else "settings"
        raise ConfigError(
            f"{field}: SYNCSTATS_{field.upper()} is not valid JSON"
        ) from None


MAX_CONFIG_BYTES = 1 << 20  # a settings file is a few lines


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        if path.exists() and not path.is_file():
            # A pipe would block the read, a device never end it.
            raise ConfigError(f"config: {path} is not a regular file")
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config: {path} is larger than a megabyte")
        return tomllib.loads(data.decode())
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None


def _describe(exc: ValidationError) -> str:
    """One line naming the first offending key, without echoing its value."""
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or "settings"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown setting"

    return f"{key}: {message}"
