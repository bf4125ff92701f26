"""Tests of the embedded server launcher."""

from __future__ import annotations

from pathlib import Path

from syncstats import _embedded
from syncstats._mongo import make_client


def test_start_reuses_a_server_already_running_on_the_directory(tmp_path: Path) -> None:
    """A second start on the same directory reuses the first server."""
    first = _embedded.start(tmp_path / "data")
    try:
        second = _embedded.start(tmp_path / "data")
        assert second.uri == first.uri
        assert second.process is None
        client = make_client(second.uri, 5)
        client.demo.things.insert_one({"n": 1})
        assert client.demo.things.count_documents({}) == 1
        client.close()
        second.stop()
        assert first.process is not None
        assert first.process.poll() is None
    finally:
        first.stop()
    assert first.process.poll() is not None
    assert not (tmp_path / "data.server.json").exists()


def test_data_survives_a_restart(tmp_path: Path) -> None:
    """Data written to the embedded server is there after a restart."""
    server = _embedded.start(tmp_path / "data")
    client = make_client(server.uri, 5)
    client.demo.things.insert_one({"n": 7})
    client.close()
    server.stop()

    server = _embedded.start(tmp_path / "data")
    client = make_client(server.uri, 5)
    try:
        assert client.demo.things.find_one({}, {"_id": 0}) == {"n": 7}
    finally:
        client.close()
        server.stop()
