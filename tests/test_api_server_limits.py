"""Bounded requests, sent over raw sockets to a real `diffii serve`: an oversized head, too many
headers, a huge request line, a slowloris head and a slow body are each answered (414, 431, 408) or
closed, and another client's /healthz is answered while the abusive connection is still open."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.served_api import served_api

HEADER_TIMEOUT = 2
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("bounded") / "home"
    with served_api(home, header_timeout=str(HEADER_TIMEOUT), body_timeout="1") as url:
        yield url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class Abuse:
    """One abusive connection: sends its chunks until the server answers or closes it."""

    def __init__(self, url: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", _port(url)), timeout=10)
        self.sent = 0
        self.others: list[int] = []

    def send(self, chunks: Iterable[bytes], other_client: str | None = None, *, wait: float = 0) -> None:
        for chunk in chunks:
            try:
                self.sock.sendall(chunk)
            except OSError:
                return
            self.sent += len(chunk)
            if other_client is not None and not self.others:
                # The abusive connection is open (nothing answered yet): another client is served.
                self.others.append(httpx.get(f"{other_client}/healthz", timeout=10).status_code)
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                return  # an answer, or the close

    def answer(self) -> bytes:
        """What the server wrote before closing (b"" when it reset the connection at once)."""
        received = b""
        try:
            while chunk := self.sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        finally:
            self.sock.close()
        return received


def _status(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def _repeat(chunk: bytes, total: int) -> Iterator[bytes]:
    for _ in range(total // len(chunk)):
        yield chunk


def test_a_100_mb_header_is_refused_431_early_and_others_are_served(server: str) -> None:
    abuse = Abuse(server)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    abuse.send([head, *_repeat(b"a" * 65536, 100 * MB)], other_client=server)
    answer = abuse.answer()
    assert abuse.others == [200]
    assert abuse.sent < 10 * MB, "the server read on instead of refusing"
    assert _status(answer) in (431, None), answer[:200]
    if answer:
        assert b"max_header_bytes" in answer


def test_10000_headers_are_refused_431_naming_the_limit(server: str) -> None:
    abuse = Abuse(server)
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    chunks = [b"GET /healthz HTTP/1.1\r\nHost: x\r\n"] + [
        lines[i : i + 1024] for i in range(0, len(lines), 1024)
    ]
    abuse.send(chunks, other_client=server, wait=0.05)
    answer = abuse.answer()
    assert abuse.others == [200]
    assert abuse.sent < len(lines)
    assert _status(answer) == 431, answer[:200]
    assert b"max_headers" in answer


def test_a_1_mb_request_line_is_refused_414(server: str) -> None:
    abuse = Abuse(server)
    chunks = [b"GET /", *_repeat(b"a" * 4096, MB), b" HTTP/1.1\r\nHost: x\r\n\r\n"]
    abuse.send(chunks, other_client=server, wait=0.05)
    answer = abuse.answer()
    assert abuse.others == [200]
    assert abuse.sent < MB
    assert _status(answer) == 414, answer[:200]
    assert b"max_request_line_bytes" in answer


def test_a_slowloris_head_is_closed_408_while_others_are_served(server: str) -> None:
    abuse = Abuse(server)
    line = b"GET /healthz HTTP/1.1\r\n"
    # A header byte a second, for at most 15 times the header timeout.
    abuse.send([line, *_repeat(b"X", 15 * HEADER_TIMEOUT)], other_client=server, wait=1)
    answer = abuse.answer()
    assert abuse.others == [200]
    assert abuse.sent < len(line) + 15 * HEADER_TIMEOUT, "the slow head was never closed"
    assert _status(answer) == 408, answer
    assert b"header_timeout" in answer


def test_a_connection_that_sends_nothing_is_closed(server: str) -> None:
    abuse = Abuse(server)
    assert httpx.get(f"{server}/healthz", timeout=10).status_code == 200
    abuse.sock.settimeout(15 * HEADER_TIMEOUT)
    answer = abuse.answer()  # returns once the server closes; socket.timeout fails the test
    assert _status(answer) == 408


def test_a_slow_body_is_closed_408(server: str) -> None:
    abuse = Abuse(server)
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    abuse.send([head, *_repeat(b" ", 60)], other_client=server, wait=1)
    answer = abuse.answer()
    assert abuse.others == [200]
    assert abuse.sent < len(head) + 60, "the slow body was never cut"
    assert _status(answer) in (408, None), answer
    if answer:
        assert b"min_body_rate" in answer


def test_ordinary_requests_and_kept_alive_connections_still_work(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        big: dict[str, Any] = {"x-padding": "p" * 8000}
        assert client.get("/healthz", headers=big).status_code == 200
        assert client.post("/v1/jobs", content=b"{}" + b" " * 200_000).status_code in (401, 413)
