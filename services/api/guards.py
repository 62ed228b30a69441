"""What every request passes before the routes: a per-key rate limit, no key in a URL, HEAD where GET
is, headers that keep `/v1` answers out of caches and sniffers, and redirects relative to the origin.

- Rate limit: a token bucket per API key (per client address for requests without one) on `/v1`:
  `rate_limit_per_second` tokens a second, up to `rate_limit_burst`; an empty bucket answers 429
  with `Retry-After`. With Redis configured (`rate_limit_redis_url`, else a `redis://` broker URL)
  the buckets live in Redis, one script call per request, so several API processes share them;
  otherwise each process keeps its own. Redis down: the request passes (logged), it is not refused.
- `?api_key=` (or `apikey`, `access_token`): 400. A key in a URL lands in access logs, proxies and
  browser history; the access log redacts it as well (services/api/redaction.py).
- HEAD: answered as the GET of the same URL without its body.
- `/v1` answers: `X-Content-Type-Options: nosniff`, and `Cache-Control: no-store` unless the route
  chose its own (the preview sheets).
- Redirects built from the Host header (Starlette's trailing-slash and static-folder redirects, not
  the routes' own, which come from settings) are rewritten relative (`Location: /console/`), so a
  forged Host cannot send a client elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qsl

from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

QUERY_KEYS = frozenset({"api_key", "apikey", "access_token"})


class TokenBuckets:
    """In-process token buckets, one per key; the least recently used go past `max_keys`."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def take(self, key: str) -> float:
        """0 if a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        tokens, then = self.buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        return wait


# One atomic step of a bucket in Redis, on Redis's clock (API processes' clocks may differ).
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'n', 't')
local tokens = tonumber(state[1]) or burst
local before = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - before) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'n', tostring(tokens), 't', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisTokenBuckets:
    """The same buckets in Redis, shared by every API process on it."""

    def __init__(self, url: str, rate: float, burst: int) -> None:
        import redis.asyncio as aioredis

        self.rate, self.burst = rate, burst
        self.client = aioredis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.script = self.client.register_script(_TAKE)
        self._warned = False

    async def take(self, key: str) -> float:
        try:
            wait = float(await self.script(keys=[f"diffii:rate:{key}"], args=[self.rate, self.burst]))
        except Exception as exc:  # a rate limiter must not take the API down with Redis
            if not self._warned:
                log.warning("rate limit: Redis failed (%s); requests pass unlimited meanwhile", exc)
                self._warned = True
            return 0.0
        self._warned = False
        return wait


def make_buckets(rate: float, burst: int, redis_url: str | None) -> TokenBuckets | RedisTokenBuckets | None:
    if rate <= 0:
        return None
    if redis_url and redis_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisTokenBuckets(redis_url, rate, burst)
    return TokenBuckets(rate, burst)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _caller(scope: Scope) -> str:
    """The bucket's name: a hash of the bearer key, else the client address."""
    authorization = _header(scope, b"authorization")
    if authorization:
        return "k:" + hashlib.sha256(authorization.strip()).hexdigest()[:32]
    client = scope.get("client")
    return f"a:{client[0] if client else '?'}"


async def _answer(
    send: Send, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guards:
    """Pure ASGI middleware, outermost but for the metrics: see the module's docstring."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets | RedisTokenBuckets | None) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        query = scope.get("query_string", b"")
        if query and any(name.lower() in QUERY_KEYS for name, _ in parse_qsl(query.decode("latin-1"))):
            await _answer(
                send,
                400,
                "an API key in the URL (api_key=) is refused: URLs are written to logs, proxies and "
                "browser history. Send it as the header 'Authorization: Bearer <key>'.",
            )
            return
        v1 = path.startswith("/v1/") or path == "/v1"
        if v1 and self.buckets is not None:
            wait = await self.buckets.take(_caller(scope))
            if wait > 0:
                retry = max(1, math.ceil(wait))
                await _answer(
                    send,
                    429,
                    f"over the request rate limit of this API key (rate_limit_per_second); retry in {retry}s",
                    ((b"retry-after", str(retry).encode()),),
                )
                return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        host = _header(scope, b"host")
        origin = f"{scope.get('scheme', 'http')}://{host.decode('latin-1')}".encode() if host else None

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if not isinstance(scope.get("route"), APIRoute):  # the routes' own links stay as built
                    headers = [_relative(h, origin) for h in headers]
                if v1:
                    names = {name.lower() for name, _ in headers}
                    if b"x-content-type-options" not in names:
                        headers.append((b"x-content-type-options", b"nosniff"))
                    if b"cache-control" not in names:
                        headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, send_guarded)


def _relative(header: tuple[bytes, bytes], origin: bytes | None) -> tuple[bytes, bytes]:
    name, value = header
    if origin and name.lower() == b"location" and value.startswith(origin + b"/"):
        return name, value[len(origin) :]
    return header


def install(app: Any, settings: Any) -> None:
    redis_url = settings.rate_limit_redis_url or settings.broker_url
    buckets = make_buckets(settings.rate_limit_per_second, settings.rate_limit_burst, redis_url)
    app.add_middleware(Guards, buckets=buckets)
