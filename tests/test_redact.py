"""Tests of how secrets are masked."""

from __future__ import annotations

import pytest

from syncstats._redact import Redactor, mask_url, url_password


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
