"""Keep passwords and tokens out of everything syncstats prints or logs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

# The password runs to the last "@" before the host, spaces and all: a
# driver refuses such a URI, but its password must not leak in the error.
_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*):"
    r"(?P<password>[^/]*?)@(?=[^@/\s]*(?:[/?#\s:),]|$))"
)
# Query options that carry credentials: MongoDB's key-file passwords and
# authMechanismProperties (an AWS session token, say), and the tokens and
# keys some proxies in front of RabbitMQ take in the query.
_SECRET_OPTION = re.compile(
    r"(?P<name>[?&;](?:[^=&;#\s]*?(?:password|passwd|pwd|secret|token"
    r"|authmechanismproperties|apikey|api_key|access_key)[^=&;#\s]*"
    r"|key|sig|signature)=)"
    r"[^&;#\s]*",
    re.IGNORECASE,
)
# Shorter secrets are masked inside URLs only: replacing one or two letters
# everywhere would garble every message and show where they occur.
MIN_SECRET = 4
MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with its password and secret query options replaced by ``***``."""
    url = _USERINFO.sub(rf"\g<scheme>\g<user>:{MASK}@", url)
    return _SECRET_OPTION.sub(rf"\g<name>{MASK}", url)


def url_password(url: str) -> str | None:
    """The password held in ``url``'s user-info, if any, percent-decoded."""
    match = _USERINFO.search(url)
    if match is None or not match.group("password"):
        return None
    return unquote(match.group("password"))


def url_secrets(url: str) -> list[str]:
    """Every secret ``url`` holds: its password and secret query options.

    Each comes as written and percent-decoded, since a driver's message may
    quote either.
    """
    secrets: list[str] = []
    password = url_password(url)
    if password:
        secrets.append(password)
    for match in _SECRET_OPTION.finditer(url):
        raw = match.group(0)[len(match.group("name")) :]
        secrets.extend({raw, unquote(raw)})
        # authMechanismProperties holds NAME:value pairs; each value alone.
        for pair in unquote(raw).split(","):
            secrets.append(pair.partition(":")[2])
    return [secret for secret in secrets if secret]


class Redactor:
    """Replaces every known secret in a text by ``***``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Remember more secrets; empty and ``None`` values are ignored."""
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET:
                self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        text = mask_url(text)
        # Longest first, so a secret that contains another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the formatted message.

    Without ``tracebacks``, an exception a library logs is told in the
    record's own line (its type and first line), so every record stays one
    line.
    """

    def __init__(self, redactor: Redactor, *, tracebacks: bool = True) -> None:
        super().__init__()
        self._redactor = redactor
        self._tracebacks = tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        exc_info = record.exc_info
        exc = exc_info[1] if exc_info else None
        if exc_info and exc is not None and self._tracebacks:
            record.exc_text = self._redactor(
                logging.Formatter().formatException(exc_info)
            )
        elif exc is not None:
            first = str(exc).strip().splitlines()
            message += f" ({type(exc).__name__}{': ' + first[0] if first else ''})"
        record.msg = self._redactor(message)
        record.args = None
        record.exc_info = None
        return True
