"""Tests of how secrets are masked."""

from __future__ import annotations

import io
import logging

import pytest

from syncstats._redact import (
    RedactingFilter,
    Redactor,
    mask_url,
    url_password,
    url_secrets,
)


@pytest.mark.parametrize(
    ("url", "password", "masked"),
    [
        ("mongodb://u:pw@h/", "pw", "mongodb://u:***@h/"),
        ("mongodb://user:pa ss@host", "pa ss", "mongodb://user:***@host"),
        ("mongodb://u:p@ss@host/db", "p@ss", "mongodb://u:***@host/db"),
        ("mongodb://a:b@h1,h2/?replicaSet=r", "b", "mongodb://a:***@h1,h2/?replicaSet=r"),
        ("http://g:s%40x@mq:15672/api", "s@x", "http://g:***@mq:15672/api"),
        ("mongodb://h/", None, "mongodb://h/"),
    ],
)  # fmt: skip
def test_url_password_is_found_and_masked(
    url: str, password: str | None, masked: str
) -> None:
    """The whole password of a URL's user-info is found and masked, odd or not."""
    assert url_password(url) == password
    assert mask_url(f"at {url}: refused") == f"at {masked}: refused"


def test_redactor_masks_known_secrets_anywhere() -> None:
    """A registered secret is masked wherever it appears."""
    redact = Redactor(["tok-12345", None, ""])

    assert redact("token tok-12345 was sent") == "token *** was sent"


def test_short_secrets_are_masked_in_urls_only() -> None:
    """One-letter passwords are masked in URLs but do not garble other words."""
    redact = Redactor(["e"])

    text = "step queue failed: refused the credentials of http://guest:e@mq/"
    assert redact(text) == (
        "step queue failed: refused the credentials of http://guest:***@mq/"
    )


KEY_FILE_URI = (
    "mongodb://u:pw12@h/?tls=true&tlsCertificateKeyFile=/etc/k.pem"
    "&tlsCertificateKeyFilePassword=k%2Fey-pw&replicaSet=rs0"
)
AWS_URI = (
    "mongodb://h/?authMechanism=MONGODB-AWS"
    "&authMechanismProperties=AWS_SESSION_TOKEN:sess-tok-1"
)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            KEY_FILE_URI,
            "mongodb://u:***@h/?tls=true&tlsCertificateKeyFile=/etc/k.pem"
            "&tlsCertificateKeyFilePassword=***&replicaSet=rs0",
        ),
        (AWS_URI, "mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=***"),
        ("http://mq/api/queues/%2F/q?access_token=t0k;x=1", "http://mq/api/queues/%2F/q?access_token=***;x=1"),
        ("http://mq/api?lengths_age=60&msg_rates_age=60", "http://mq/api?lengths_age=60&msg_rates_age=60"),
        ("http://mq/q?key=k3y&monkey=1&sig=s1g", "http://mq/q?key=***&monkey=1&sig=***"),
    ],
)  # fmt: skip
def test_secret_query_options_are_masked(url: str, masked: str) -> None:
    """Options that carry credentials are masked; the others stay readable."""
    assert mask_url(f"at {url} refused") == f"at {masked} refused"


def test_url_secrets_registers_query_secrets_in_both_spellings() -> None:
    """A driver may quote a secret option decoded or not: both are masked."""
    redact = Redactor([*url_secrets(KEY_FILE_URI), *url_secrets(AWS_URI)])

    text = "bad key password k/ey-pw (k%2Fey-pw); token sess-tok-1; pw12"
    assert redact(text) == "bad key password *** (***); token ***; ***"


def log_line(tracebacks: bool) -> str:
    """What a handler with the filter writes for an exception logged with a secret."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(Redactor(["pw-4711"]), tracebacks=tracebacks))
    logger = logging.getLogger("tests.redact")
    logger.addHandler(handler)
    error = ConnectionError("refused for pw-4711\nsecond line")
    try:
        logger.error("Exception in ASGI application", exc_info=error)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_library_tracebacks_become_one_line_unless_asked_for() -> None:
    """A library's logged exception is one masked line; verbose keeps the trace."""
    assert log_line(tracebacks=False) == (
        "Exception in ASGI application (ConnectionError: refused for ***)\n"
    )
    assert log_line(tracebacks=True) == (
        "Exception in ASGI application\nConnectionError: refused for ***\nsecond line\n"
    )
