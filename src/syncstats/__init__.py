"""syncstats: statistics, monitoring and shared rate limits for activity sync."""

__version__ = "0.1.0"
