"""The pantries of one pass: the in-service list read once, each pantry probed once.

A pass asks every in-service pantry for its status once, in step 1 (which also
needs each pantry's attachments to find lost ones). Create sagas of that pass
then pick among the pantries that answered, with no status call and no inventory
read per export: at 50k attachments a status answer is ~0.7 MB, and picking
used to download one per export. A pantry that fails a call later in the pass
(no answer, a timeout, a 5xx after the retry budget) is not picked again in it.

Degraded pantries are loud: one that does not answer its status call, or answers
slower than `slow_secs`, becomes a warning (stderr and the pass JSON) and
`udx_pantry_up{pantry} 0` for a pantry that did not answer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from udx.domain.address import PantryAddress
from udx.pantry.client import PantryClient, PantryError

log = logging.getLogger(__name__)

# Probes at once: a few dead pantries must not add a timeout each.
MAX_PROBES_AT_ONCE = 16


@dataclass(frozen=True)
class Probe:
    """One pantry's answer to its status call."""

    address: PantryAddress
    secs: float
    volumes: frozenset[str] | None  # lower-case volume ids; None: it did not answer
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.volumes is not None


def probe_one(client: PantryClient, *, clock: Callable[[], float] = time.monotonic) -> Probe:
    start = clock()
    try:
        volumes = frozenset(v.lower() for v in client.status().volumes)
    except (PantryError, OSError) as err:
        message = err.message if isinstance(err, PantryError) else str(err)
        return Probe(client.address, clock() - start, None, message)
    return Probe(client.address, clock() - start, volumes)


def probe_all(
    addresses: Iterable[PantryAddress], client_for: Callable[[PantryAddress], PantryClient]
) -> dict[PantryAddress, Probe]:
    """Every pantry's status, asked concurrently. `client_for` gives shared clients."""
    order = sorted(set(addresses))
    if not order:
        return {}
    with ThreadPoolExecutor(
        max_workers=min(len(order), MAX_PROBES_AT_ONCE), thread_name_prefix="probe"
    ) as pool:
        probes = list(pool.map(lambda a: probe_one(client_for(a)), order))
    return {p.address: p for p in probes}


class PassPantries:
    """What one pass knows of its pantries. Thread-safe: sagas report failures
    from their worker threads."""

    def __init__(
        self,
        in_service: Iterable[PantryAddress],
        probes: dict[PantryAddress, Probe],
        *,
        slow_secs: float,
        quiet: bool = False,
    ) -> None:
        self.in_service = frozenset(in_service)
        # quiet: a saga worker process's copy; the pass's own copy in the parent
        # logs and reports each warning once (udx.pass_workers).
        self.quiet = quiet
        self.probes = dict(probes)
        self.slow_secs = slow_secs
        self._lock = threading.Lock()
        self._failed: dict[PantryAddress, str] = {}
        self._warnings: list[str] = []
        for addr in sorted(self.in_service):
            probe = self.probes.get(addr)
            if probe is None:
                continue
            if not probe.answered:
                self._warn(
                    f"pantry {addr} did not answer its status call ({probe.error}); "
                    "not picked for new exports in this pass"
                )
            elif probe.secs > slow_secs:
                self._warn(
                    f"pantry {addr} answered its status call slowly ({probe.secs:.1f}s, "
                    f"slow above {slow_secs:g}s)"
                )

    def _warn(self, text: str) -> None:
        if not self.quiet:
            log.warning("%s", text)
        self._warnings.append(text)

    @property
    def warnings(self) -> list[str]:
        with self._lock:
            return list(self._warnings)

    def up(self) -> dict[PantryAddress, bool]:
        """For `udx_pantry_up`: whether each in-service pantry answered its probe
        and has not failed a call since."""
        with self._lock:
            return {
                a: self.probes[a].answered and a not in self._failed
                for a in sorted(self.in_service)
                if a in self.probes
            }

    def attached(self, address: PantryAddress) -> frozenset[str] | None:
        probe = self.probes.get(address)
        return probe.volumes if probe is not None else None

    def attached_sets(self) -> dict[PantryAddress, set[str] | None]:
        """Each probed in-service pantry's attached volumes (None: it did not
        answer), for the orphan sweep."""
        return {
            a: (set(p.volumes) if p.volumes is not None else None)
            for a, p in sorted(self.probes.items())
            if a in self.in_service
        }

    def candidates(self) -> list[PantryAddress]:
        """In-service pantries that answered and have not failed since, sorted."""
        with self._lock:
            return [
                a
                for a in sorted(self.in_service)
                if a in self.probes and self.probes[a].answered and a not in self._failed
            ]

    def pick(self, rng: random.Random) -> PantryAddress | None:
        """A uniformly random candidate, or None when there is none."""
        options = self.candidates()
        return rng.choice(options) if options else None

    def mark_failed(self, address: PantryAddress, reason: str) -> None:
        """A call to `address` failed or timed out: pick it no more in this pass."""
        with self._lock:
            if address in self._failed:
                return
            self._failed[address] = reason
            self._warn(
                f"pantry {address} failed a call in this pass ({reason}); not picked again in it"
            )

    def failures(self) -> dict[PantryAddress, str]:
        """The pantries that failed a call in this pass, with why."""
        with self._lock:
            return dict(self._failed)

    def snapshot(self) -> PassPantriesSnapshot:
        """What a saga worker process needs to pick as this pass does: who is in
        service, who answered, who failed since; not the attachment lists."""
        with self._lock:
            probes = {
                a: Probe(a, p.secs, frozenset() if p.answered else None, p.error)
                for a, p in self.probes.items()
            }
            return PassPantriesSnapshot(
                tuple(sorted(self.in_service)), probes, self.slow_secs, dict(self._failed)
            )

    def is_in_service(self, address: PantryAddress) -> bool:
        return address in self.in_service

    def no_candidate_reason(self) -> str:
        if not self.in_service:
            return "no pantry is in service"
        with self._lock:
            parts = []
            for a in sorted(self.in_service):
                probe = self.probes.get(a)
                if a in self._failed:
                    parts.append(f"{a} ({self._failed[a]})")
                elif probe is not None and not probe.answered:
                    parts.append(f"{a} ({probe.error})")
        return (
            f"none of the {len(self.in_service)} in-service pantries answered in this pass: "
            + "; ".join(parts)
        )


@dataclass(frozen=True)
class PassPantriesSnapshot:
    """A pass's pantries as sent to a saga worker process (picklable)."""

    in_service: tuple[PantryAddress, ...]
    probes: dict[PantryAddress, Probe]
    slow_secs: float
    failed: dict[PantryAddress, str]

    def restore(self) -> PassPantries:
        """A quiet PassPantries: the parent logs and reports each warning once."""
        pantries = PassPantries(self.in_service, self.probes, slow_secs=self.slow_secs, quiet=True)
        for address, reason in self.failed.items():
            pantries.mark_failed(address, reason)
        return pantries
