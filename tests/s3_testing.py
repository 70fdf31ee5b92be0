"""Test helpers for S3: a real moto server on 127.0.0.1 and a fault-injecting HTTP proxy.

The proxy sits between a boto3 client and moto and can, per request, answer ``503 SlowDown``,
cut a GET response body off halfway (headers promise the full length, then the connection
closes), hold a request until the test releases it, or forward untouched. It counts what it
forwarded so tests can assert how many requests reached the store.

Holding and armed outages make faults land at a point the test chooses, whatever the speed of
the machine: a job whose next audio reads are held cannot finish before the test has killed
its actor or stopped it; an outage armed to start right after the first part is uploaded is
met by the requests that follow it.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, Mapping, Optional
from urllib.parse import unquote

from moto.server import ThreadedMotoServer

HOST = "127.0.0.1"

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>"
)

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """A ThreadedMotoServer on a free 127.0.0.1 port; yields its endpoint URL."""
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access-log line per request
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.stop()


@contextmanager
def moto_environment() -> Iterator[dict[str, str]]:
    """:func:`moto_server`, with its endpoint and fake credentials set in this process's
    environment (boto3 and the pipeline read them there; no AWS profile) for the duration;
    yields them, e.g. for a Ray head's environment."""
    import pytest

    from pipeline.io import storage

    with moto_server() as url, pytest.MonkeyPatch.context() as mp:
        env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        storage.set_default_s3_options(None)
        try:
            yield env
        finally:
            storage.set_default_s3_options(None)


#: ``rule(method, path, headers)`` -> whether a request matches (``path``: ``/bucket/key`` unquoted,
#: without the query)
Rule = Callable[[str, str, Mapping[str, str]], bool]


@dataclass(frozen=True)
class HeldRequest:
    method: str
    path: str
    range: Optional[str]
    client_port: int


class FaultProxy:
    """A threading HTTP proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``).

    Knobs (change them between requests; all are read under a lock):
        fail_next: answer the next N requests with 503 SlowDown (not forwarded).
        fail_always: answer every request with 503 SlowDown.
        truncate_next_gets: for the next N GETs with a body, send the upstream status and
            headers, then only the first ``truncate_keep`` fraction of the body (default half),
            then close the connection.
        hold(rule): requests matching ``rule`` wait (are neither answered nor forwarded) until
            :meth:`release` (which forwards them, or refuses them); ``held`` lists them as they arrive.
        fail_after(rule, n, which): once a request matching ``rule`` has been forwarded, answer
            the next ``n`` requests (those matching ``which``, when given) with 503 SlowDown
            (``outage_started`` is set then).
    Counters: ``requests`` (every request received), ``forwarded`` (Counter of
    ``(method, path-without-query)`` actually sent upstream), ``body_bytes`` (Counter of the body
    bytes of GETs sent back to the client, by path), ``failed``, ``truncated``.
    """

    def __init__(self, upstream: str) -> None:
        host_port = upstream.split("://", 1)[1].rstrip("/")
        self.upstream_host, port = host_port.rsplit(":", 1)
        self.upstream_port = int(port)
        self.lock = threading.Lock()
        self.fail_next = 0
        self.fail_always = False
        self.truncate_next_gets = 0
        self.truncate_keep = 0.5
        self.requests = 0
        self.failed = 0
        self.truncated = 0
        self.forwarded: Counter[tuple[str, str]] = Counter()
        self.body_bytes: Counter[str] = Counter()
        self.held: list[HeldRequest] = []
        self._hold_rule: Optional[Rule] = None
        self._released = threading.Event()
        self._forward_held = True
        self._outage_rule: Optional[Rule] = None
        self._outage_count = 0
        self._outage_which: Optional[Rule] = None
        self._failing_which = 0  # requests matching _outage_which still to refuse
        self.outage_started = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                raw_path = self.path.split("?", 1)[0]
                path = unquote(raw_path)  # what rules see: keys as written (run_id=x, not run_id%3Dx)
                with proxy.lock:
                    hold = proxy._hold_rule is not None and proxy._hold_rule(self.command, path, self.headers)
                    if hold:
                        proxy.held.append(HeldRequest(self.command, path, self.headers.get("Range"),
                                                      self.client_address[1]))
                if hold:
                    proxy._released.wait()
                with proxy.lock:
                    proxy.requests += 1
                    targeted = proxy._failing_which > 0 and proxy._outage_which(self.command, path, self.headers)
                    fail = proxy.fail_always or proxy.fail_next > 0 or targeted or (hold and not proxy._forward_held)
                    if targeted:
                        proxy._failing_which -= 1
                    elif proxy.fail_next > 0 and not proxy.fail_always:
                        proxy.fail_next -= 1
                    if fail:
                        proxy.failed += 1
                if fail:
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN_BODY)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOWDOWN_BODY)
                    return
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    with proxy.lock:
                        proxy.forwarded[(self.command, raw_path)] += 1
                        if proxy._outage_rule is not None and proxy._outage_rule(self.command, path, self.headers):
                            proxy._outage_rule = None
                            if proxy._outage_which is None:
                                proxy.fail_next += proxy._outage_count
                            else:
                                proxy._failing_which += proxy._outage_count
                            proxy.outage_started.set()
                        cut = self.command == "GET" and len(payload) > 1 and proxy.truncate_next_gets > 0
                        if cut:
                            proxy.truncate_next_gets -= 1
                            proxy.truncated += 1
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                        self.end_headers()
                        return
                    self.send_header("Content-Length", str(len(payload)))
                    if self.command == "GET":
                        with proxy.lock:
                            proxy.body_bytes[raw_path] += len(payload) if not cut else int(len(payload) * proxy.truncate_keep)
                    if cut:
                        self.send_header("Connection", "close")
                        self.end_headers()
                        self.wfile.write(payload[: int(len(payload) * proxy.truncate_keep)])
                        self.wfile.flush()
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that died mid-request: not news
                import sys

                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self.server = Server((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def hold(self, rule: Rule) -> None:
        """Hold every request matching ``rule`` until :meth:`release`."""
        with self.lock:
            self._released.clear()
            self._hold_rule = rule

    def release(self, forward: bool = True) -> None:
        """Stop holding. Held requests go on to the store, or with ``forward=False`` are answered
        503 (what a request of a client that was killed meanwhile must not do: reach the store)."""
        with self.lock:
            self._hold_rule = None
            self._forward_held = forward
            self._released.set()

    def fail_after(self, rule: Rule, count: int, which: Optional[Rule] = None) -> None:
        """Arm an outage: after the next forwarded request matching ``rule``, refuse the next
        ``count`` requests, or the next ``count`` that match ``which``."""
        with self.lock:
            self._outage_rule, self._outage_count, self._outage_which = rule, count, which

    def gets(self, path: str) -> int:
        """How many GETs of ``path`` (e.g. ``/bucket/key``) reached the store."""
        with self.lock:
            return self.forwarded[("GET", path)]

    def got_bytes(self, path: str) -> int:
        """Body bytes the client received for GETs of ``path`` (``/bucket/key``)."""
        with self.lock:
            return self.body_bytes[path]
