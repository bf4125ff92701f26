"""Tests of the settings layers and their validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncstats.errors import ConfigError
from syncstats.settings import DEFAULT_RABBITMQ_STATS_URL, load_settings

STRAVA_TOML = """
database = "from_file"
ratelimit_database = "limits_from_file"
rabbitmq_timeout = "30s"

[rate_limits]
strava = [{ window = "15m", max = 200 }, { window = "1d", max = 2000 }]
polarflow = [{ window = "1h", max = 500 }]
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SYNCSTATS_CONFIG", "SYNCSTATS_DATABASE", "SYNCSTATS_MONGO_URI"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "syncstats.toml"
    path.write_text(text)
    return path


def test_defaults_match_tapiriik() -> None:
    """Without any source the defaults are Tapiriik's names and URL."""
    settings = load_settings()

    assert settings.mongo_uri is None
    assert settings.database == "tapiriik"
    assert settings.ratelimit_database == "tapiriik_ratelimit"
    assert settings.rabbitmq_stats_url == DEFAULT_RABBITMQ_STATS_URL
    assert settings.rabbitmq_timeout == 10.0
    assert settings.rate_limits == {}


def test_toml_rate_limits_parse_to_seconds(tmp_path: Path) -> None:
    """Windows in the TOML file become seconds with their maximum."""
    settings = load_settings(write(tmp_path, STRAVA_TOML))

    assert settings.limits() == {
        "strava": [(900.0, 200), (86400.0, 2000)],
        "polarflow": [(3600.0, 500)],
    }
    assert settings.rabbitmq_timeout == 30.0


def test_flags_beat_environment_beat_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags override the environment, which overrides the file."""
    path = write(tmp_path, STRAVA_TOML)
    monkeypatch.setenv("SYNCSTATS_DATABASE", "from_env")
    monkeypatch.setenv("SYNCSTATS_RATELIMIT_DATABASE", "limits_from_env")

    settings = load_settings(path, {"database": "from_flag", "mongo_uri": None})

    assert settings.database == "from_flag"
    assert settings.ratelimit_database == "limits_from_env"
    assert settings.rabbitmq_timeout == 30.0


def test_config_file_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SYNCSTATS_CONFIG names the file when no path is given."""
    monkeypatch.setenv("SYNCSTATS_CONFIG", str(write(tmp_path, STRAVA_TOML)))

    assert load_settings().database == "from_file"


def test_rate_limits_from_environment_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """SYNCSTATS_RATE_LIMITS takes the same windows as JSON."""
    monkeypatch.setenv(
        "SYNCSTATS_RATE_LIMITS", '{"strava": [{"window": 900, "max": 100}]}'
    )

    assert load_settings().limits() == {"strava": [(900.0, 100)]}


STRAVA = "[rate_limits]\nstrava = "
WINDOW = "rate_limits.strava.0.window"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('colour = "blue"', "colour"),
        (STRAVA + '[{ window = "15x", max = 1 }]', WINDOW),
        (STRAVA + '[{ window = "36h", max = 5 }]', WINDOW),
        (STRAVA + '[{ window = "0s", max = 5 }]', WINDOW),
        (STRAVA + '[{ window = "15m", max = 0 }]', "rate_limits.strava.0.max"),
        (STRAVA + '[{ window = "15m", max = -3 }]', "rate_limits.strava.0.max"),
        (STRAVA + '[{ window = "15m" }]', "rate_limits.strava.0.max"),
        (
            STRAVA + '[{ window = "1m", max = 5, burst = 2 }]',
            "rate_limits.strava.0.burst",
        ),
        (
            STRAVA + '[{ window = 900, max = 1 }, { window = "15m", max = 2 }]',
            "rate_limits",
        ),
        ("rabbitmq_timeout = 0", "rabbitmq_timeout"),
        ('rabbitmq_timeout = "-5s"', "rabbitmq_timeout"),
        ('database = "a/b"', "database"),
        (STRAVA + "[{ window = 0.0000001, max = 1 }]", WINDOW),
        (STRAVA + '[{ window = "3000000d", max = 1 }]', WINDOW),
        (STRAVA + '[{ window = "1m", max = true }]', "rate_limits.strava.0.max"),
        (
            STRAVA + '[{ window = "1m", max = 99999999999999999999 }]',
            "rate_limits.strava.0.max",
        ),
        ('lease_ttl = "99999999999d"', "lease_ttl"),
        ("history_days = 99999999999", "history_days"),
        ('rabbitmq_stats_url = "garbage"', "rabbitmq_stats_url"),
        ('rabbitmq_stats_url = "ftp://mq/api/queues/%2F/q"', "rabbitmq_stats_url"),
        ('rabbitmq_prometheus_url = "localhost:15692"', "rabbitmq_prometheus_url"),
        ('rabbitmq_stats_url = "http://q:99999/api/queues/v/q"', "rabbitmq_stats_url"),
        ('rabbitmq_stats_url = "http://mq:0/api/queues/v/q"', "rabbitmq_stats_url"),
        ('rabbitmq_stats_url = "http://mq:15672/api/queues/v"', "rabbitmq_stats_url"),
        ('rabbitmq_stats_url = "http://mq/api/overview"', "rabbitmq_stats_url"),
        ("interval = 0.5", "interval"),
        ("lease_ttl = 0.001", "lease_ttl"),
        ("ratelimit_interval = 0.5", "ratelimit_interval"),
        ("reconcile_every = 0.1", "reconcile_every"),
        ('http_token = "t\u00f6k en"', "http_token"),
        ('http_token = "tok en"', "http_token"),
        ("interval = 1e400", "interval"),
        ('rabbitmq_prometheus_url = "http://mq:http/"', "rabbitmq_prometheus_url"),
        ('[rate_limits]\n" " = [{ window = "15m", max = 1 }]', "rate_limits"),
    ],
)
def test_invalid_setting_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    """An invalid setting raises one line that starts with the key's name."""
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text))

    message = str(raised.value)
    assert message.startswith(f"{key}: ")
    assert "\n" not in message


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing or malformed file is named in one line."""
    with pytest.raises(ConfigError, match=r"^config: cannot read .*missing\.toml"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"^config: .* is not valid TOML"):
        load_settings(write(tmp_path, "rate_limits = [oops"))


@pytest.mark.parametrize("path", ["/dev/zero", "."])
def test_a_config_that_is_no_regular_file_is_refused(path: str) -> None:
    """A device, a pipe or a folder is refused before any read blocks or grows."""
    with pytest.raises(ConfigError, match=r"^config: .* is not a regular file$"):
        load_settings(Path(path))


def test_an_oversized_config_is_refused(tmp_path: Path) -> None:
    """A file far larger than any settings file is not read whole."""
    with pytest.raises(ConfigError, match=r"larger than a megabyte$"):
        load_settings(write(tmp_path, "# x\n" * 300_000))


def test_settings_repr_hides_uris_and_token() -> None:
    """The settings' repr shows no URI and no token."""
    settings = load_settings(
        overrides={
            "mongo_uri": "mongodb://app:hunter2@db.example:27017/",
            "rabbitmq_stats_url": "http://ops:rabbitpw@mq:15672/api/queues/%2F/q",
            "http_token": "tok-abc-123",
        }
    )

    text = repr(settings) + str(settings)
    for secret in ("hunter2", "rabbitpw", "tok-abc-123"):
        assert secret not in text


def test_malformed_json_in_environment_names_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rate-limit environment variable that is not JSON is named in one line."""
    monkeypatch.setenv("SYNCSTATS_RATE_LIMITS", "{bad")

    with pytest.raises(ConfigError, match=r"^rate_limits: SYNCSTATS_RATE_LIMITS is"):
        load_settings()


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A settings file in another encoding is refused in one line."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'database = "\xff\xfe"\n')

    with pytest.raises(ConfigError, match=r"^config: .* is not UTF-8 text$"):
        load_settings(path)


def test_proxied_queue_url_padded_token_and_one_second_periods_are_accepted(
    tmp_path: Path,
) -> None:
    """The limits are what a client or a server can use, not narrower."""
    settings = load_settings(
        write(
            tmp_path,
            'rabbitmq_stats_url = "https://ops.example/rabbitmq/api/queues/prod/users/"\n'
            'http_token = "Zm9v+YmFy/x_y.z~-=="\n'
            'interval = "1s"\nlease_ttl = 1\n',
        )
    )

    assert settings.rabbitmq_stats_url.endswith("/api/queues/prod/users/")
    assert settings.http_token is not None
    assert settings.http_token.get_secret_value() == "Zm9v+YmFy/x_y.z~-=="
    assert (settings.interval, settings.lease_ttl) == (1.0, 1.0)


def test_periods_below_a_second_and_endless_durations_say_why(
    tmp_path: Path,
) -> None:
    """The message tells a slip from an endless value."""
    with pytest.raises(ConfigError, match=r"^interval: .*shorter than a second"):
        load_settings(write(tmp_path, "interval = 0.001"))
    with pytest.raises(ConfigError, match=r"^interval: .*must be finite"):
        load_settings(write(tmp_path, "interval = 1e400"))
