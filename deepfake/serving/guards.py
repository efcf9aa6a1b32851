"""What ``deepfake serve`` checks before a request reaches the app: who asks, and how much and how fast.

- ``Host``: only the names the server is bound to are answered (127.0.0.1, localhost, [::1],
  the ``--host`` address, and ``--allow_host`` names); any other gets 400. A web page whose
  name was re-pointed at this machine (DNS rebinding) is refused so.
- ``Origin``: a POST from another origin (any web page the user visits) gets 403. Browsers
  send a form to any address without asking first; clients that send no ``Origin`` (curl,
  scripts) and the server's own page are not affected. Behind a reverse proxy the page's origin
  is the proxy's (``https://public.name``): it is read from ``X-Forwarded-Proto`` and
  ``X-Forwarded-Host`` when the request comes from an address of ``--forwarded_allow_ips`` (from
  any other peer those headers are ignored), or named with ``--allow_origin``.
- The body: over ``max_bytes`` it gets 413 before it is read into memory (a declared
  ``Content-Length``, or while a chunked body streams in); not received in full within
  ``timeout`` seconds it gets 408 and the connection is closed, so stalled uploads do not
  stay open.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket

from deepfake.config import ServeConfig

DRAIN_LIMIT = 256 << 20  # past this much refused body, the connection is simply closed
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _host_name(value: str) -> str:
    """A host as ``Host`` carries it: lower case, IPv6 in brackets, no port."""
    value = value.strip().lower()
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    try:
        if isinstance(ipaddress.ip_address(value), ipaddress.IPv6Address):
            return f"[{value}]"
    except ValueError:
        pass
    name, colon, port = value.rpartition(":")
    return name if colon and port.isdigit() else value


def allowed_hosts(config: ServeConfig) -> frozenset[str]:
    """The ``Host`` names the server answers: loopback, the bound address, ``allow_host``;
    bound to every address (0.0.0.0), also this machine's name and the addresses it resolves to."""
    names = {*LOOPBACK_NAMES, _host_name(config.host), *(_host_name(h) for h in config.allow_host)}
    if config.host.strip() in WILDCARDS:
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            try:
                names.update(_host_name(info[4][0]) for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    return frozenset(names)


async def _respond(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive, deadline: float) -> None:
    """Read (and drop) what the client is still sending, within bounds, so that it gets to read
    the answer instead of a reset connection; nothing is kept in memory."""
    budget, loop = DRAIN_LIMIT, asyncio.get_running_loop()
    try:
        while budget > 0:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return
    except asyncio.TimeoutError:
        return


class _Refused(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class RequestGuard:
    """ASGI middleware: the ``Host`` and ``Origin`` checks, then the body's size and deadline."""

    def __init__(self, app, hosts: frozenset[str], max_bytes: int, timeout: float, origins: tuple[str, ...] = (),
                 proxies: tuple[str, ...] = ()):
        self.app = app
        self.hosts = hosts
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.origins = frozenset(origins)
        self.proxies = tuple(ipaddress.ip_network(p, strict=False) for p in proxies)

    def _own_origin(self, scope, headers: dict) -> str:
        """This server's origin as the browser sees it: a trusted proxy's forwarded scheme and host, else its own."""
        scheme, host = scope.get("scheme", "http"), (headers.get(b"host") or b"").decode("latin-1")
        peer = (scope.get("client") or ("",))[0]
        try:
            trusted = any(ipaddress.ip_address(peer) in net for net in self.proxies)
        except ValueError:
            trusted = False
        if trusted:
            # A chain of proxies appends: the first value is what the browser used.
            first = lambda name: headers.get(name, b"").decode("latin-1").split(",")[0].strip()  # noqa: E731
            scheme = first(b"x-forwarded-proto") or scheme
            host = first(b"x-forwarded-host") or host
        return f"{scheme}://{host}".lower()

    def _who(self, scope, headers: dict) -> _Refused | None:
        host = headers.get(b"host")
        if host is not None and _host_name(host.decode("latin-1")) not in self.hosts:
            return _Refused(400, f"this server does not answer to Host {host.decode('latin-1')!r}; "
                                 f"it answers to {', '.join(sorted(self.hosts))} (--host, --allow_host)")
        origin = headers.get(b"origin")
        if scope["method"] not in SAFE_METHODS and origin is not None:
            own = self._own_origin(scope, headers)
            given = origin.decode("latin-1").lower().rstrip("/")
            if given != own and given not in self.origins:
                return _Refused(403, f"cross-origin request refused: Origin {origin.decode('latin-1')!r} is "
                                     f"not this server's ({own}); behind a reverse proxy pass --forwarded_allow_ips "
                                     "PROXY_ADDRESS or --allow_origin URL")
        return None

    def _too_large(self) -> _Refused:
        return _Refused(413, f"upload too large: the limit is {self.max_bytes} bytes per request (--max_upload_mb)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        refused = self._who(scope, headers)
        declared = headers.get(b"content-length")
        if refused is None and declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            refused = self._too_large()
        if refused is not None:
            await _drain(receive, deadline)
            return await _respond(send, refused.status, refused.detail)
        await self._guarded(scope, receive, send, deadline)

    async def _guarded(self, scope, receive, send, deadline: float) -> None:
        state = {"received": 0, "done": False, "refused": None, "started": False}
        loop = asyncio.get_running_loop()

        async def limited_receive():
            if state["refused"] is not None:
                raise state["refused"]
            if state["done"]:
                return await receive()  # after the body: only a disconnect is left to hear, no deadline
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                state["refused"] = _Refused(408, f"request body not received within {self.timeout:g} s (--timeout)")
                raise state["refused"] from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                state["done"] = not message.get("more_body", False)
                if state["received"] > self.max_bytes:
                    state["refused"] = self._too_large()
                    raise state["refused"]
            return message

        async def guarded_send(message):
            if state["refused"] is not None:
                # The app may answer our exception with its own error; ours is the answer.
                if message["type"] == "http.response.start" and not state["started"]:
                    await self._refuse(state, receive, send, deadline)
                return
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Refused:
            if not state["started"]:
                await self._refuse(state, receive, send, deadline)

    async def _refuse(self, state: dict, receive, send, deadline: float) -> None:
        state["started"] = True
        refused = state["refused"]
        if refused.status == 413 and not state["done"]:
            await _drain(receive, deadline)
        await _respond(send, refused.status, refused.detail)
