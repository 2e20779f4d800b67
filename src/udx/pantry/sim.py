"""A simulated Crucible Pantry: a real HTTP server with the real pantry's behaviour.

It implements the calls udx makes (DESIGN.md section 6), with bodies as the
Pantry's OpenAPI document defines them, and keeps attachments in memory:

- ``GET /crucible/pantry/0``: PantryStatus, listing every attached volume id.
- ``POST /crucible/pantry/0/volume/{id}``: attach. The same id with an identical
  request succeeds again (no new attachment); the same id with a different
  request is a 400, as the real pantry's "Unsupported: Existing entry ... with
  different volume construction request" error.
- ``GET /crucible/pantry/0/volume/{id}``: VolumeStatus; 404 for an unknown id.
- ``DELETE /crucible/pantry/0/volume/{id}``: detach, 204; an unknown id too.

Errors carry ``{"message", "request_id", "error_code"?}``. Fault injection:
`fail_next`, `set_latency` (optionally for some calls only; the call is carried
out after the wait even when the client gave up meanwhile), `drip` (answers sent
one byte at a time), `refuse_connections`, `restart`, `detach_503_times`.
Counters (`attach_calls`, `detach_calls`, `attachments_created`, `detachments`)
make "attached exactly once" a one-line assertion.

Connections are kept alive (HTTP/1.1), as the real pantry's server does: a
connection per request cost both sides more CPU than the request. When the
simulator stops listening it also closes its idle connections (and each busy one
after its answer), so no pooled connection keeps reaching a "stopped" pantry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from udx.domain.address import PantryAddress

log = logging.getLogger(__name__)

PREFIX = "/crucible/pantry/0"
VOLUME_PREFIX = PREFIX + "/volume/"
VCR_TYPES = ("volume", "url", "region", "file")
# The calls, as fault injection names them (`set_latency(..., ops=...)`, `drip`).
OPS = ("status", "attach", "volume_status", "detach")
VOLUME_OPS = ("attach", "volume_status", "detach")


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # reopen on the same port right after closing it
    sim: SimulatedPantry


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "udx-pantry-sim/1"
    # An answer is two writes (headers, body): without TCP_NODELAY the body of a
    # kept-alive connection can wait for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    timeout = 60  # an idle kept-alive connection is closed after this

    def setup(self) -> None:
        super().setup()
        self.server.sim._track(self.connection, open_=True)

    def handle(self) -> None:
        # A client closed a kept-alive connection abruptly (it exited): not an error.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            super().handle()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._track(self.connection, open_=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self.server.sim._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.sim._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.sim._handle(self, "DELETE")

    def do_PUT(self) -> None:
        self.server.sim._handle(self, "PUT")

    def do_PATCH(self) -> None:
        self.server.sim._handle(self, "PATCH")

    # Any other method gets the API's JSON error (405), not http.server's HTML 501.
    def do_OPTIONS(self) -> None:
        self.server.sim._handle(self, "OPTIONS")

    def do_TRACE(self) -> None:
        self.server.sim._handle(self, "TRACE")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, an unknown method)
        in the API's JSON shape."""
        if code == HTTPStatus.NOT_IMPLEMENTED:  # a method http.server has no do_ for
            code, message = HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed"
        request_id = str(uuid.uuid4())
        body = json.dumps(_error(request_id, message or _reason(code))).encode()
        self.send_response(code, message)
        self.send_header("x-request-id", request_id)
        if code == HTTPStatus.METHOD_NOT_ALLOWED:
            from udx.pantry.spec import allowed_methods

            self.send_header("allow", ", ".join(allowed_methods(self.path.split("?")[0]) or []))
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)
        self.close_connection = True


Reply = tuple[int, Any]  # (status, JSON body or None for an empty body)


class SimulatedPantry:
    """One simulated pantry on `host:port` (port 0: any free port, kept across
    `refuse_connections` so the address stays the same)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._attachments: dict[str, dict[str, Any]] = {}
        self._fail_next: list[int] = []
        self._fail_method: str | None = None
        self._detach_503 = 0
        self._latency = 0.0
        self._latency_ops: frozenset[str] | None = None  # None: every call
        self._drip = 0.0
        self._drip_ops: frozenset[str] | None = None
        self.attach_calls: Counter[str] = Counter()  # attach requests received, per volume id
        self.detach_calls: Counter[str] = Counter()  # detach requests received, per volume id
        self.attachments_created: Counter[str] = Counter()  # new attachments made, per volume id
        self.detachments: Counter[str] = Counter()  # attachments removed by a detach, per volume id
        self.requests: list[RequestRecord] = []
        self.restarts = 0
        self.on_request: Callable[[RequestRecord], None] | None = None
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()  # connections answering a request

    # --- lifecycle ---------------------------------------------------------------

    @property
    def address(self) -> PantryAddress:
        if self.port == 0:
            raise RuntimeError("the simulated pantry has not been started")
        return PantryAddress.from_parts(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> SimulatedPantry:
        with self._lock:
            if self._server is None:
                self._open()
        return self

    def stop(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> SimulatedPantry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else self.host
        return f"SimulatedPantry({where}, {len(self._attachments)} attached)"

    def _open(self) -> None:
        bind_host = self.host
        server_cls = _Server
        if ":" in bind_host:

            class _Server6(_Server):
                address_family = socket.AF_INET6

            server_cls = _Server6
        server = server_cls((bind_host, self.port), _Handler)
        server.sim = self
        self.port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"pantry-sim-{self.host}:{self.port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def _close(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()  # closes the listening socket: new connections are refused
        if thread is not None:
            thread.join(timeout=5)
        # Kept-alive connections would keep reaching a stopped pantry: close the
        # idle ones now; a busy one closes after its answer (see `_write`).
        with self._conn_lock:
            idle = [c for c in self._connections if c not in self._busy]
        for conn in idle:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)

    def _track(self, conn: socket.socket, *, open_: bool) -> None:
        with self._conn_lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
                self._busy.discard(conn)

    # --- fault injection ---------------------------------------------------------

    def fail_next(self, n: int, status: int = 500, method: str | None = None) -> None:
        """The next `n` requests answer `status` with an error body; with `method`
        (e.g. "POST" for attach) only requests of that method count and fail.

        Replaces any failures still pending, so `fail_next(0)` cancels them."""
        with self._lock:
            self._fail_next = [status] * n
            self._fail_method = method.upper() if method else None

    def set_latency(self, secs: float, ops: Iterable[str] | None = None) -> None:
        """Wait `secs` before carrying out and answering each request (of the calls
        named in `ops`, see OPS; all by default). The call is carried out after
        the wait whether or not the client is still there: with `secs` longer
        than the client's timeout, an attach or detach the client gave up on
        still happens, as a slow real pantry does."""
        with self._lock:
            self._latency = max(0.0, secs)
            self._latency_ops = _ops(ops)

    def drip(self, secs_per_byte: float, ops: Iterable[str] | None = None) -> None:
        """Send each answer (status line, headers and body) one byte every
        `secs_per_byte` (of the calls in `ops`; all by default); 0 stops
        dripping. The call itself is carried out at once."""
        with self._lock:
            self._drip = max(0.0, secs_per_byte)
            self._drip_ops = _ops(ops)

    def refuse_connections(self, refuse: bool = True) -> None:
        """Stop listening (connections are refused), or listen again on the same port."""
        with self._lock:
            if refuse:
                self._close()
            elif self._server is None:
                self._open()

    def restart(self) -> None:
        """Forget every attachment, as a restarted pantry does (counters are kept)."""
        with self._lock:
            self._attachments.clear()
            self._fail_next.clear()
            self._detach_503 = 0
            self.restarts += 1

    def detach_503_times(self, n: int) -> None:
        """The next `n` detach requests answer 503 (deactivating); the volume stays."""
        with self._lock:
            self._detach_503 = n

    # --- introspection -----------------------------------------------------------

    @property
    def attachments(self) -> dict[str, dict[str, Any]]:
        """Volume id -> its VolumeConstructionRequest (a copy)."""
        with self._lock:
            return {k: json.loads(json.dumps(v)) for k, v in self._attachments.items()}

    def attach(self, volume_id: str | uuid.UUID, vcr: dict[str, Any]) -> None:
        """Attach directly (test setup), without an HTTP call or counting it."""
        with self._lock:
            self._attachments[str(volume_id)] = json.loads(json.dumps(vcr))

    @property
    def total_attach_calls(self) -> int:
        return sum(self.attach_calls.values())

    @property
    def total_detach_calls(self) -> int:
        return sum(self.detach_calls.values())

    # --- request handling --------------------------------------------------------

    def _handle(self, h: _Handler, method: str) -> None:
        with self._conn_lock:
            self._busy.add(h.connection)
        try:
            self._answer(h, method)
        finally:
            with self._conn_lock:
                self._busy.discard(h.connection)

    def _answer(self, h: _Handler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        try:
            length = int(h.headers.get("content-length") or 0)
        except ValueError:
            length = 0
        raw = h.rfile.read(length) if length > 0 else b""
        from udx.pantry.spec import allowed_methods

        allowed = allowed_methods(path)
        if allowed is not None and method not in allowed:  # the spec's 405, with Allow
            h.send_error(HTTPStatus.METHOD_NOT_ALLOWED)
            return
        op = _op_of(method, path)
        with self._lock:
            latency = self._latency if _applies(self._latency_ops, op) else 0.0
            drip = self._drip if _applies(self._drip_ops, op) else 0.0
        if latency:
            time.sleep(latency)
        request_id = str(uuid.uuid4())
        try:
            status, body = self._dispatch(method, path, raw, request_id)
        except Exception as err:  # a simulator bug must still answer like a server
            log.exception("simulated pantry: internal error")
            status, body = 500, _error(request_id, f"Internal Server Error: {err}")
        record = RequestRecord(method, path, status)
        with self._lock:
            self.requests.append(record)
        if self.on_request is not None:
            self.on_request(record)
        if drip:
            self._drip_write(h, status, body, request_id, drip)
        else:
            self._write(h, status, body, request_id)

    @staticmethod
    def _drip_write(h: _Handler, status: int, body: Any, request_id: str, secs: float) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        head = [f"HTTP/1.1 {status} {_reason(status)}", f"x-request-id: {request_id}"]
        if body is not None:
            head.append("content-type: application/json")
        head += [f"content-length: {len(data)}", "connection: close", "", ""]
        raw = "\r\n".join(head).encode() + data
        try:
            for i in range(len(raw)):
                h.wfile.write(raw[i : i + 1])
                h.wfile.flush()
                time.sleep(secs)
        except OSError:
            pass  # the client gave up
        h.close_connection = True

    def _write(self, h: _Handler, status: int, body: Any, request_id: str) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        # This connection's server stopped listening (or restarted listening as a
        # new server) while it answered: answer, then close.
        closing = h.server is not self._server
        try:
            h.send_response(status)
            h.send_header("x-request-id", request_id)
            if body is not None:
                h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            if closing:
                h.send_header("connection", "close")
            h.end_headers()
            if data:
                h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            closing = True  # the client gave up (timeout); nothing to answer
        if closing:
            h.close_connection = True

    def _dispatch(self, method: str, path: str, raw: bytes, rid: str) -> Reply:
        volume_id: str | None = None
        if path == PREFIX:
            op = {"GET": "status"}.get(method)
        elif path.startswith(VOLUME_PREFIX) and "/" not in path[len(VOLUME_PREFIX) :]:
            volume_id = path[len(VOLUME_PREFIX) :]
            if not volume_id:
                return 404, _error(rid, "Not Found")
            op = {"GET": "volume_status", "POST": "attach", "DELETE": "detach"}.get(method)
        else:
            return 404, _error(rid, "Not Found")
        if op is None:
            return 405, _error(rid, "Method Not Allowed")

        with self._lock:
            if op == "attach":
                self.attach_calls[volume_id or ""] += 1
            elif op == "detach":
                self.detach_calls[volume_id or ""] += 1
            if self._fail_next and self._fail_method in (None, method):
                status = self._fail_next.pop(0)
                return status, _error(rid, _reason(status), "Injected")
            if op == "status":
                return 200, {"volumes": sorted(self._attachments), "num_job_handles": 0}
            assert volume_id is not None
            if op == "attach":
                return self._attach(volume_id, raw, rid)
            if op == "volume_status":
                vcr = self._attachments.get(volume_id)
                if vcr is None:
                    return 404, _error(rid, "Not Found")
                return 200, {
                    "active": True,
                    "seen_active": True,
                    "num_job_handles": 0,
                    "info": volume_info(vcr, volume_id),
                }
            # detach
            if self._detach_503 > 0:
                self._detach_503 -= 1
                return 503, _error(rid, f"volume {volume_id} is deactivating, try again")
            if self._attachments.pop(volume_id, None) is not None:
                self.detachments[volume_id] += 1
            return 204, None

    def _attach(self, volume_id: str, raw: bytes, rid: str) -> Reply:
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as err:
            return 400, _error(rid, f"unable to parse JSON body: {err}")
        # Checked against the spec's AttachRequest, as the pantry's deserializer
        # does (a key's presence is not enough: `gen` must be an unsigned integer).
        from udx.pantry.spec import check, request_schema

        schema = request_schema(VOLUME_PREFIX + "{id}", "POST")
        problem = check(schema, body) if schema is not None else _check_vcr(body)
        if problem:
            return 400, _error(rid, f"unable to parse JSON body: {problem}")
        vcr = body["volume_construction_request"]
        existing = self._attachments.get(volume_id)
        if existing is not None:
            if existing == vcr:
                return 200, {"id": volume_id}
            return 400, _error(
                rid,
                f"Unsupported: Existing entry for {volume_id} with different volume "
                "construction request!",
            )
        self._attachments[volume_id] = vcr
        self.attachments_created[volume_id] += 1
        return 200, {"id": volume_id}


def _ops(ops: Iterable[str] | None) -> frozenset[str] | None:
    if ops is None:
        return None
    chosen = frozenset(ops)
    unknown = sorted(chosen - set(OPS))
    if unknown:
        raise ValueError(f"unknown pantry calls {unknown}: expected some of {', '.join(OPS)}")
    return chosen


def _applies(ops: frozenset[str] | None, op: str | None) -> bool:
    return ops is None or op in ops


def _op_of(method: str, path: str) -> str | None:
    """The call a request makes (see OPS), or None for anything else."""
    if path == PREFIX:
        return "status" if method == "GET" else None
    if path.startswith(VOLUME_PREFIX) and "/" not in path[len(VOLUME_PREFIX) :]:
        return {"GET": "volume_status", "POST": "attach", "DELETE": "detach"}.get(method)
    return None


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _error(request_id: str, message: str, error_code: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": request_id, "message": message}
    if error_code is not None:  # the spec's error_code is a string, never null: omit it
        body["error_code"] = error_code
    return body


def _check_vcr(vcr: Any, depth: int = 0) -> str | None:
    """The shape checks the real pantry's deserializer makes (enough to reject
    garbage; the simulator does not dial any target)."""
    if depth > 16:
        return "volume construction request nested too deeply"
    if not isinstance(vcr, dict):
        return "missing field `volume_construction_request` (an object)"
    kind = vcr.get("type")
    if kind not in VCR_TYPES:
        return f"unknown variant {kind!r}, expected one of {', '.join(VCR_TYPES)}"
    required = {
        "volume": ("block_size", "id", "sub_volumes"),
        "url": ("block_size", "id", "url"),
        "region": ("block_size", "blocks_per_extent", "extent_count", "gen", "opts"),
        "file": ("block_size", "id", "path"),
    }[kind]
    for key in required:
        if key not in vcr:
            return f"missing field `{key}` in {kind}"
    if kind == "volume":
        subs = vcr["sub_volumes"]
        if not isinstance(subs, list):
            return "sub_volumes is not a list"
        parts = [*subs, *([vcr["read_only_parent"]] if vcr.get("read_only_parent") else [])]
        for part in parts:
            problem = _check_vcr(part, depth + 1)
            if problem:
                return problem
    return None


def volume_info(vcr: dict[str, Any], volume_id: str) -> dict[str, Any]:
    """A VolumeInfo tree for an attached request: volumes nest, regions become
    upstairs whose downstairs are all active. Url and file parts have no
    VolumeInfo form; they show as empty volumes."""
    kind = vcr.get("type")
    if kind == "region":
        opts = vcr.get("opts") or {}
        targets = opts.get("target") or []
        upstairs_id = opts.get("id")
        try:
            upstairs_id = str(uuid.UUID(str(upstairs_id)))
        except ValueError:
            upstairs_id = str(uuid.uuid5(uuid.NAMESPACE_URL, volume_id))
        return {
            "upstairs": {
                "block_size": vcr.get("block_size"),
                "encrypted": bool(opts.get("key")),
                "generation": int(vcr.get("gen") or 0),
                "live_repair_in_progress": False,
                "read_only": bool(opts.get("read_only")),
                "reconcile_in_progress": False,
                "session_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"session:{volume_id}")),
                "state": "active",
                "targets": [
                    {
                        "region_id": None,
                        "repair_addr": None,
                        "state": {"type": "active"},
                        "target_addr": str(t),
                    }
                    for t in targets
                ],
                "upstairs_id": upstairs_id,
            }
        }
    if kind == "volume":
        parent = vcr.get("read_only_parent")
        return {
            "volume": {
                "sub_volumes": [volume_info(s, volume_id) for s in vcr.get("sub_volumes") or []],
                "read_only_parent": volume_info(parent, volume_id) if parent else None,
            }
        }
    return {"volume": {"sub_volumes": [], "read_only_parent": None}}


def start_simulated_pantries(
    n: int, hosts: Sequence[str] | None = None, port: int = 0
) -> list[SimulatedPantry]:
    """Start `n` simulated pantries, one on each of 127.0.0.1, 127.0.0.2, ...
    (the whole 127.0.0.0/8 is loopback on Linux) or on the given hosts."""
    chosen: Iterable[str] = hosts if hosts is not None else [f"127.0.0.{i + 1}" for i in range(n)]
    chosen = list(chosen)[:n]
    if len(chosen) < n:
        raise ValueError(f"{n} pantries need {n} hosts, got {len(chosen)}")
    started: list[SimulatedPantry] = []
    try:
        for host in chosen:
            started.append(SimulatedPantry(host, port).start())
    except BaseException:
        for sim in started:
            sim.stop()
        raise
    return started
