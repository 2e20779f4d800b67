"""Simulated pantries in their own process, driven over a pipe.

Run as a script (`python pantry_proc.py N`): it starts N simulated pantries on
127.0.0.1, 127.0.0.2, ... (any free port), prints one JSON line with their
addresses, then answers one JSON command per stdin line with one JSON line:
``{"i": 0, "op": "fail_next", "args": [5, 500]}`` -> ``{"ok": true, "value": ...}``.
Closing stdin stops it.

`PantryProcess` is the test side: it starts the script, reads the addresses,
sends fault-injection commands, and reads the attachments over HTTP the way an
operator would (GET /crucible/pantry/0), so the tests never look inside the
simulator's memory for the invariants.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# Methods of SimulatedPantry a test may call, and properties it may read.
_CALLS = {
    "fail_next",
    "set_latency",
    "drip",
    "refuse_connections",
    "restart",
    "detach_503_times",
}
_READS = {"attachment_ids", "attachments_created", "attach_calls", "detach_calls", "restarts"}


def _serve(n: int) -> None:
    from udx.pantry.sim import start_simulated_pantries

    sims = start_simulated_pantries(n)
    sys.stdout.write(json.dumps({"addresses": [str(s.address) for s in sims]}) + "\n")
    sys.stdout.flush()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
                sim = sims[int(cmd["i"])]
                op = cmd["op"]
                value: Any = None
                if op in _CALLS:
                    getattr(sim, op)(*cmd.get("args", []))
                elif op == "attachment_ids":
                    value = sorted(sim.attachments)
                elif op in _READS:
                    raw = getattr(sim, op)
                    value = dict(raw) if isinstance(raw, dict) else raw
                else:
                    raise ValueError(f"unknown op {op!r}")
                reply: dict[str, Any] = {"ok": True, "value": value}
            except Exception as err:
                reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        for sim in sims:
            sim.stop()


class PantryProcess:
    """N simulated pantries in a child process."""

    def __init__(self, n: int = 3) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            self.proc.kill()
            raise RuntimeError("the pantry process exited before listening")
        self.addresses: list[str] = json.loads(first)["addresses"]

    def call(self, i: int, op: str, *args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"i": i, "op": op, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if not reply["ok"]:
            raise RuntimeError(f"pantry process: {reply['error']}")
        return reply["value"]

    def volumes_over_http(self, i: int) -> list[str]:
        """What pantry i lists in its status call (GET /crucible/pantry/0)."""
        import httpx

        r = httpx.get(f"http://{self.addresses[i]}/crucible/pantry/0", timeout=10)
        r.raise_for_status()
        return [str(v).lower() for v in r.json()["volumes"]]

    def attachments(self, indexes: list[int] | None = None) -> dict[str, list[str]]:
        """Address -> attached volume ids, over HTTP, for the given pantries (all)."""
        chosen = range(len(self.addresses)) if indexes is None else indexes
        return {self.addresses[i]: self.volumes_over_http(i) for i in chosen}

    def reset_faults(self) -> None:
        for i in range(len(self.addresses)):
            self.call(i, "fail_next", 0)
            self.call(i, "set_latency", 0.0)
            self.call(i, "drip", 0.0)
            self.call(i, "refuse_connections", False)
            self.call(i, "detach_503_times", 0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
