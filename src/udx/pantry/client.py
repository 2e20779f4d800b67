"""A typed client for the Crucible Pantry calls udx makes.

Bodies follow the Pantry's own OpenAPI document (shared/spec/crucible-pantry-2.0.0.json):

- ``GET    /crucible/pantry/0``             -> PantryStatus
- ``POST   /crucible/pantry/0/volume/{id}`` AttachRequest -> AttachResult
- ``GET    /crucible/pantry/0/volume/{id}`` -> VolumeStatus (404 when unknown)
- ``DELETE /crucible/pantry/0/volume/{id}`` -> 204

Every failure is a `PantryError` that keeps the HTTP status (None when no response
arrived) and the pantry's error body, so callers can tell a transient failure from
a refusal. This client never retries: see `udx.pantry.retry`.

Every request is bounded in wall-clock time by its timeout, the whole answer
included: httpx's timeouts apply to each socket operation, so a pantry sending
one byte per second would otherwise hold a request (and a pass) for ever. The
transport's sockets cap every connect, read and write at what is left of the
request's deadline (`DeadlineTransport`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from udx.domain.address import PantryAddress
from udx.domain.errors import UdxError

STATUS_PATH = "/crucible/pantry/0"


def volume_path(volume_id: uuid.UUID | str) -> str:
    return f"{STATUS_PATH}/volume/{volume_id}"


class PantryError(UdxError):
    """A pantry call failed.

    `status_code` is None when no HTTP response arrived (refused, reset, timed
    out); `body` is the pantry's error body ({"message", "request_id",
    "error_code"?}) when it sent one.
    """

    def __init__(
        self,
        address: PantryAddress,
        message: str,
        *,
        status_code: int | None = None,
        body: dict[str, Any] | None = None,
        timed_out: bool = False,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"pantry {address}: {message}")
        self.address = address
        self.message = message
        self.status_code = status_code
        self.body = body
        self.timed_out = timed_out
        self.attempts = attempts

    @property
    def transient(self) -> bool:
        """Worth retrying: no response at all, a timeout, 5xx (503 while
        deactivating included), or 429. Other 4xx are refusals that a retry
        would only repeat."""
        if self.status_code is None:
            return True
        return self.status_code >= 500 or self.status_code == 429

    @property
    def error_code(self) -> str | None:
        code = (self.body or {}).get("error_code")
        return code if isinstance(code, str) else None

    @property
    def request_id(self) -> str | None:
        rid = (self.body or {}).get("request_id")
        return rid if isinstance(rid, str) else None


class PantryGone(UdxError):
    """The pantry left the in-service inventory while a call was being retried."""

    def __init__(self, address: PantryAddress, detail: str = "") -> None:
        msg = f"pantry {address} is no longer in service"
        super().__init__(msg + (f" ({detail})" if detail else ""))
        self.address = address


@dataclass(frozen=True)
class PantryStatus:
    """The spec's PantryStatus: every volume id the pantry holds."""

    volumes: list[str]
    num_job_handles: int

    @classmethod
    def from_json(cls, data: Any) -> PantryStatus:
        if not isinstance(data, dict):
            raise ValueError("PantryStatus is not an object")
        volumes = data.get("volumes")
        jobs = data.get("num_job_handles")
        if not isinstance(volumes, list) or not all(isinstance(v, str) for v in volumes):
            raise ValueError("PantryStatus.volumes is not a list of strings")
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 0:
            raise ValueError("PantryStatus.num_job_handles is not an unsigned integer")
        return cls(volumes=list(volumes), num_job_handles=jobs)


@dataclass(frozen=True)
class VolumeStatus:
    """The spec's VolumeStatus. `info` is the VolumeInfo tree, kept as JSON."""

    active: bool
    seen_active: bool
    num_job_handles: int
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> VolumeStatus:
        if not isinstance(data, dict):
            raise ValueError("VolumeStatus is not an object")
        active, seen, jobs = (
            data.get("active"),
            data.get("seen_active"),
            data.get("num_job_handles"),
        )
        info = data.get("info")
        if not isinstance(active, bool) or not isinstance(seen, bool):
            raise ValueError("VolumeStatus.active/seen_active are not booleans")
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 0:
            raise ValueError("VolumeStatus.num_job_handles is not an unsigned integer")
        if not isinstance(info, dict):
            raise ValueError("VolumeStatus.info is not an object")
        return cls(active=active, seen_active=seen, num_job_handles=jobs, info=info)


def _error_body(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data
    return None


# --- wall-clock deadlines -------------------------------------------------------------

_deadline = threading.local()  # .at: the monotonic deadline of this thread's request


@contextmanager
def request_deadline(secs: float) -> Iterator[None]:
    """Bound the requests this thread makes inside the block to `secs` of wall-clock
    time in all (through a `DeadlineTransport`). Nested blocks keep the earlier
    deadline."""
    outer: float | None = getattr(_deadline, "at", None)
    at = time.monotonic() + secs
    _deadline.at = at if outer is None else min(outer, at)
    try:
        yield
    finally:
        _deadline.at = outer


def _capped(timeout: float | None, exc: type[Exception]) -> float | None:
    """A socket operation's timeout, cut to what is left of the request deadline."""
    at: float | None = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise exc("the request's wall-clock deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(
            ssl_context, server_hostname, _capped(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _capped(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, _capped(timeout, httpcore.ConnectTimeout), socket_options
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport whose sockets honour `request_deadline`: every connect,
    read and write gets at most what is left of the request's time, so a slow
    (dripping) answer ends at the deadline like a silent one. httpx has no
    total-time timeout of its own, and no parameter for httpcore's documented
    `network_backend` hook: the pool httpx built (`_pool`, the same in every
    httpx 0.2x) is replaced by one with httpx's default limits and this backend.
    tests/pantry/test_client.py checks the bound on a real dripping server, so
    an httpx that changed this would fail there, not silently."""

    def __init__(self) -> None:
        # verify=False: the pool built here (and dropped) needs no CA bundle
        # loaded; the pool used makes httpcore's default, verifying, TLS context
        # if a request is ever https.
        super().__init__(verify=False, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            max_connections=100,  # httpx's default limits
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_DeadlineBackend(),
        )


class PantryClient:
    """One pantry, one connection pool. Thread-safe (httpx.Client is).

    Without `transport`, requests go through a `DeadlineTransport` of its own;
    a transport given (shared, or a test's) should be one too for the wall-clock
    bound to hold on real sockets."""

    def __init__(
        self,
        address: PantryAddress,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=address.base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport if transport is not None else DeadlineTransport(),
            headers={"accept": "application/json"},
            # Never pick up a proxy from the environment: pantries are on the
            # underlay and a proxy would turn "refused" into a misleading 502.
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PantryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PantryClient({self.address})"

    # --- the calls ---------------------------------------------------------------

    def status(self, *, timeout: float | None = None) -> PantryStatus:
        r = self._send("GET", STATUS_PATH, timeout=timeout)
        self._expect(r, 200, "pantry status")
        return self._parse(r, PantryStatus.from_json, "pantry status")

    def attach(
        self,
        volume_id: uuid.UUID,
        volume_construction_request: dict[str, Any],
        *,
        timeout: float | None = None,
    ) -> None:
        """Attach (construct and activate) a volume under `volume_id`.

        The pantry treats a repeat with the identical request as success, and
        the same id with a different request as a 400.
        """
        body = {"volume_construction_request": volume_construction_request}
        r = self._send("POST", volume_path(volume_id), json_body=body, timeout=timeout)
        self._expect(r, 200, f"attach {volume_id}")
        result = self._parse(r, lambda d: d if isinstance(d, dict) else None, "attach")
        if result is None or not isinstance(result.get("id"), str):
            raise PantryError(
                self.address,
                f"attach {volume_id}: malformed AttachResult",
                status_code=r.status_code,
            )

    def volume_status(
        self, volume_id: uuid.UUID, *, timeout: float | None = None
    ) -> VolumeStatus | None:
        """The volume's status, or None when the pantry does not hold it (404)."""
        r = self._send("GET", volume_path(volume_id), timeout=timeout)
        if r.status_code == 404:
            return None
        self._expect(r, 200, f"volume status {volume_id}")
        return self._parse(r, VolumeStatus.from_json, f"volume status {volume_id}")

    def detach(self, volume_id: uuid.UUID, *, timeout: float | None = None) -> None:
        """Deactivate and remove a volume. The pantry answers 204 for an
        unknown id too; it may answer 503 while the volume deactivates."""
        r = self._send("DELETE", volume_path(volume_id), timeout=timeout)
        self._expect(r, 204, f"detach {volume_id}")

    # --- plumbing ----------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        kwargs: dict[str, Any] = {}
        if json_body is not None:
            kwargs["json"] = json_body
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout)
        total = self.timeout if timeout is None else timeout
        try:
            # The whole request, answer included, within `total` (a dripping body too).
            with request_deadline(total):
                return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as err:
            raise PantryError(
                self.address,
                f"{method} {path}: timed out (no complete answer within {total:g}s, "
                f"{type(err).__name__})",
                timed_out=True,
            ) from err
        except httpx.TransportError as err:
            raise PantryError(
                self.address, f"{method} {path}: {type(err).__name__}: {err or 'no response'}"
            ) from err

    def _expect(self, r: httpx.Response, status: int, what: str) -> None:
        if r.status_code == status:
            return
        body = _error_body(r)
        detail = body["message"] if body else (r.text[:200].strip() or r.reason_phrase)
        raise PantryError(
            self.address,
            f"{what}: HTTP {r.status_code}: {detail}",
            status_code=r.status_code,
            body=body,
        )

    def _parse(self, r: httpx.Response, parse: Any, what: str) -> Any:
        try:
            return parse(r.json())
        except (ValueError, UnicodeDecodeError) as err:
            raise PantryError(
                self.address, f"{what}: malformed response: {err}", status_code=r.status_code
            ) from None
