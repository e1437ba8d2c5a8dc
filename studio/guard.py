"""The studio's front door, one ASGI middleware in front of every route, so that only the
studio's own page can drive it:

- the Host header must name the address the studio is bound to (a page on another
  site that re-points its own DNS name at 127.0.0.1, DNS rebinding, gets 421);
- a request that changes state (any method but GET/HEAD/OPTIONS) must come from the
  studio's own origin: its `Origin` (or, without one, `Sec-Fetch-Site`) is checked (403);
- bound to anything but loopback, every request needs the token the command printed:
  `?token=…` once, exchanged for a SameSite=Strict, HttpOnly cookie (401 without);
- a body over its route's limit gets a short 413, counted as it arrives (a chunked body
  too), never buffered or echoed;
- every answer carries a strict Content-Security-Policy (the studio's own scripts only, no
  inline script), `X-Content-Type-Options: nosniff` and no framing.

Refusals are one line of plain text: the page shows it as the error."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
COOKIE = "dragnext_studio"
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                 b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),  # the token never leaves in a Referer
    (b"cross-origin-resource-policy", b"same-origin"),
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_hosts(host: str, port: int) -> set[str]:
    """The Host values a browser sends to a studio bound to loopback `host`:`port`."""
    names = {host, "127.0.0.1", "localhost", "[::1]"}
    with_port = {f"{n}:{port}" for n in names}
    return with_port | (names if port == 80 else set())


@dataclass(frozen=True)
class Door:
    """What the guard lets in: `hosts` None means any Host (a token then guards the door)."""
    address: str  # host:port, as refusals name it
    hosts: frozenset[str] | None
    token: str | None
    body_limit: Callable[[str], int]

    @classmethod
    def for_bind(cls, host: str, port: int, insecure: bool, body_limit: Callable[[str], int]) -> Door:
        address = f"{host}:{port}"
        if is_loopback(host):
            return cls(address, frozenset(loopback_hosts(host, port)), None, body_limit)
        return cls(address, None, None if insecure else secrets.token_urlsafe(32), body_limit)


class TooLarge(Exception):
    pass


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _refuse(send, status: int, message: str, extra: list | None = None) -> None:
    body = (message + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS,
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def refusal(door: Door, scope) -> tuple[int, str] | None:
    """Why a request may not in (status, one line), or None."""
    headers = _headers(scope)
    host = headers.get("host", "")
    if door.hosts is not None and host not in door.hosts:
        return 421, (f"misdirected request: this studio answers only at {door.address}, "
                     "not under another name (DNS rebinding)")
    if door.token is not None:
        cookie = SimpleCookie(headers.get("cookie", ""))
        given = cookie[COOKIE].value if COOKIE in cookie else ""
        if not secrets.compare_digest(given, door.token):
            return 401, "this studio needs its token: open the URL the 'dragnext studio' command printed"
    if scope["method"] not in SAFE_METHODS:
        origin = headers.get("origin")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return 403, "refused: a request from another site cannot change the studio (Origin mismatch)"
        if origin is None and headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return 403, "refused: a request from another site cannot change the studio (Sec-Fetch-Site)"
    return None


def _token_exchange(door: Door, scope) -> list | None:
    """A `?token=` that matches: the redirect to the same URL without it, setting the cookie."""
    if door.token is None:
        return None
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    given = dict(query).get("token")
    if given is None or not secrets.compare_digest(given, door.token):
        return None
    rest = urlencode([(k, v) for k, v in query if k != "token"])
    location = scope["path"] + (f"?{rest}" if rest else "")
    cookie = f"{COOKIE}={door.token}; HttpOnly; SameSite=Strict; Path=/"
    return [(b"location", location.encode()), (b"set-cookie", cookie.encode())]


class Guard:
    def __init__(self, app, door: Door):
        self.app, self.door = app, door

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        exchange = _token_exchange(self.door, scope)
        if exchange is not None:
            return await _refuse(send, 303, "signed in", exchange)
        refused = refusal(self.door, scope)
        if refused:
            return await _refuse(send, *refused)
        limit = self.door.body_limit(scope["path"])
        length = _headers(scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return await _refuse(send, 413, f"request body over {limit // 2**20} MiB")
        return await self._limited(scope, receive, send, limit)

    async def _limited(self, scope, receive, send, limit: int):
        """The app with its body counted as it arrives; past the limit, whatever the app
        makes of the cut body (FastAPI answers 400) is replaced by the 413."""
        received, over = 0, False

        async def counted():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise TooLarge
            return message

        async def secured(message):
            if over:
                if message["type"] == "http.response.start":
                    await _refuse(send, 413, f"request body over {limit // 2**20} MiB")
                return
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, counted, secured)
        except TooLarge:
            await secured({"type": "http.response.start"})
