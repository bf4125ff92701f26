"""The errors syncstats raises, in one small tree.

::

    SyncStatsError
    ├── ConfigError          invalid settings; the CLI exits with code 2
    ├── DatabaseUnavailable  MongoDB cannot be reached; exit code 3
    ├── EmbeddedServerError  the embedded server cannot be started; exit code 3
    ├── QueueStatsError      the RabbitMQ management API gave no usable reply
    ├── LeaseHeld            another run holds the lease; exit code 4
    └── RateLimitError
        ├── RateLimitExceeded  a window of the key is full
        └── HeaderFormatError  a provider's rate-limit headers cannot be read

Every message is one line and never holds a password or a token.
"""

from __future__ import annotations


class SyncStatsError(Exception):
    """The base of every error syncstats raises on purpose."""


class ConfigError(SyncStatsError):
    """A setting is missing, malformed or makes no sense.

    The message starts with the dotted name of the offending key.
    """


class DatabaseUnavailable(SyncStatsError):
    """MongoDB did not answer within the server-selection timeout."""


class EmbeddedServerError(SyncStatsError):
    """The embedded Mongo-wire server is not installed or did not start."""


class QueueStatsError(SyncStatsError):
    """The RabbitMQ management API could not be read or understood."""


class LeaseHeld(SyncStatsError):
    """Another syncstats process holds the lease for this job."""


class RateLimitError(SyncStatsError):
    """The base of the rate limiter's errors."""


class RateLimitExceeded(RateLimitError):
    """A window of the key is full; nothing was spent.

    ``retry_after`` is the number of seconds until that window ends.
    """

    def __init__(
        self, key: str, window_seconds: float, limit: int, retry_after: float
    ) -> None:
        self.key = key
        self.window_seconds = window_seconds
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(
            f"rate limit of {key!r} reached: {limit} calls per "
            f"{window_seconds:g} s window, retry in {retry_after:.1f} s"
        )


class HeaderFormatError(RateLimitError):
    """A provider's rate-limit headers are malformed; nothing was changed."""
