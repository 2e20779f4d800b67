"""A test harness that proves a saga is safe to run durably.

Modelled on the upstream control plane's saga test helpers. Give it a database, a
saga, how to reset the world to its starting state, the params, and a `world()`
snapshot of everything the saga touches; it checks:

1. `check_actions_idempotent`: every action executed twice ends in the same world
   as a normal run;
2. `check_unwind_at_each_node`: for every node N, a failure injected at N (in
   place of its action) unwinds the saga and puts the world back where it started;
3. `check_undos_idempotent`: the same with every undo executed twice;
4. `check_crash_at_each_point`: the saga runs in a child process (sys.executable)
   that SIGKILLs itself at each checkpoint in turn (right after every log write,
   and after every action or undo returned but before that is logged); after the
   lease, a recovering executor in this process must finish the saga to a correct
   end: succeeded with the world of a normal run, or unwound to the starting world
   (or, killed before the saga's first log write committed, no saga and the
   starting world).
   With `fail_at=NODE` the same is done for a run that unwinds from NODE.

`check_all()` runs all four. A check that finds a problem raises `HarnessFailure`
(an AssertionError) naming the scenario and showing both worlds.

`world()` must be deterministic across runs: leave out generated ids and times
(count volumes, say, rather than list their ids), and leave out the saga log.

Example (a pytest test; `db_url` is the repository's fixture):

    from udx.saga.harness import SagaHarness

    def test_transfer_saga(db_url):
        db = open_database(db_url)
        with SagaHarness(
            db_url,
            "tests.saga.counter_saga:transfer_saga",   # or a SagaDefinition (no crash check)
            reset=lambda: counter_saga.reset(db),      # put the world back to its start
            params={"from": "a", "to": "b", "amount": 5},  # or a callable returning params
            world=lambda: counter_saga.world(db),
            deps="tests.saga.counter_saga:make_deps",  # "module:function" called with the db
        ) as harness:
            harness.check_all()

For the crash check, the saga and the deps must be given as "module:function"
paths the child process can import (it gets this process's sys.path); the function
returns the SagaDefinition (or deps, called with the child's Database).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
import pprint
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from udx.datastore import saga_log
from udx.db.engine import Database, open_database
from udx.db.types import utcnow
from udx.saga.definition import ActionContext, SagaDefinition, SagaResult
from udx.saga.errors import InjectedFailure
from udx.saga.executor import SagaExecutor
from udx.saga.run import Checkpoint

Params = dict[str, Any] | Callable[[], dict[str, Any]]
DepsSpec = Callable[[Database], Any] | str | None


class HarnessFailure(AssertionError):
    """The saga under test broke one of the rules the harness checks."""


class HarnessUsageError(Exception):
    """The harness was asked for something it cannot do with what it was given."""


def load_object(path: str) -> Any:
    """Import "package.module:attribute"."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise HarnessUsageError(f"expected 'module:function', got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_definition(spec: SagaDefinition | str) -> SagaDefinition:
    if isinstance(spec, SagaDefinition):
        return spec
    obj = load_object(spec)
    definition = obj() if callable(obj) else obj
    if not isinstance(definition, SagaDefinition):
        raise HarnessUsageError(f"{spec} did not give a SagaDefinition")
    return definition


def _make_deps(spec: DepsSpec, db: Database) -> Any:
    if spec is None:
        return None
    factory = load_object(spec) if isinstance(spec, str) else spec
    return factory(db)


# --- definition transforms ----------------------------------------------------------------


def _twice_action(fn: Callable[[ActionContext], Any]) -> Callable[[ActionContext], Any]:
    def action(ctx: ActionContext) -> Any:
        fn(ctx)
        return fn(ctx)

    return action


def _twice_undo(fn: Callable[[ActionContext], None]) -> Callable[[ActionContext], None]:
    def undo(ctx: ActionContext) -> None:
        fn(ctx)
        fn(ctx)

    return undo


def _failing(name: str) -> Callable[[ActionContext], Any]:
    def action(ctx: ActionContext) -> Any:
        raise InjectedFailure(f"injected failure at node {name}")

    return action


def transform(
    definition: SagaDefinition,
    *,
    actions_twice: bool = False,
    undos_twice: bool = False,
    fail_at: str | None = None,
) -> SagaDefinition:
    """A copy of `definition` with actions/undos doubled and/or a failure injected."""
    if fail_at is not None and fail_at not in {n.name for n in definition.nodes}:
        raise HarnessUsageError(f"saga {definition.name!r} has no node {fail_at!r}")
    nodes = []
    for n in definition.nodes:
        action = n.action
        if actions_twice:
            action = _twice_action(action)
        if n.name == fail_at:
            action = _failing(n.name)
        undo = _twice_undo(n.undo) if (undos_twice and n.undo is not None) else n.undo
        nodes.append(dataclasses.replace(n, action=action, undo=undo))
    return dataclasses.replace(definition, nodes=nodes)


def _diff(expected: Any, actual: Any) -> str:
    a = pprint.pformat(expected, width=100).splitlines()
    b = pprint.pformat(actual, width=100).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "expected", "actual", lineterm=""))


# --- the harness -----------------------------------------------------------------------------


class SagaHarness:
    """See the module docstring."""

    def __init__(
        self,
        db_url: str,
        definition: SagaDefinition | str,
        *,
        reset: Callable[[], None],
        params: Params,
        world: Callable[[], Any],
        deps: DepsSpec = None,
        lease_secs: float = 0.2,
        child_timeout_secs: float = 60.0,
    ) -> None:
        self.db_url = db_url
        self.definition_spec = definition
        self.definition = load_definition(definition)
        self.reset = reset
        self.params = params
        self.world = world
        self.deps_spec = deps
        self.lease_secs = lease_secs
        self.child_timeout_secs = child_timeout_secs
        self.db = open_database(db_url)
        self._deps = _make_deps(deps, self.db)
        self._baseline: tuple[Any, Any, int] | None = None

    def close(self) -> None:
        self.db.dispose()

    def __enter__(self) -> SagaHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ------------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        return self.params() if callable(self.params) else dict(self.params)

    def _run(
        self, definition: SagaDefinition, on_checkpoint: Callable[[Checkpoint], None] | None = None
    ) -> tuple[Any, SagaResult]:
        """Reset the world, run `definition` in this process; (start world, result)."""
        self.reset()
        params = self._params()
        start = self.world()
        with SagaExecutor(
            self.db,
            [definition],
            deps=self._deps,
            lease_secs=max(self.lease_secs, 5.0),
            on_checkpoint=on_checkpoint,
        ) as ex:
            result = ex.run(definition.name, params)
        return start, result

    def baseline(self) -> tuple[Any, Any, int]:
        """(start world, end world, checkpoints) of a normal, successful run."""
        if self._baseline is None:
            count = 0

            def counter(_cp: Checkpoint) -> None:
                nonlocal count
                count += 1

            start, result = self._run(self.definition, counter)
            if result.outcome != "succeeded":
                raise HarnessFailure(
                    f"saga {self.definition.name!r} does not succeed on a normal run: "
                    f"{result.outcome}: {result.error}"
                )
            self._baseline = (start, self.world(), count)
        return self._baseline

    def _expect_world(self, expected: Any, scenario: str, what: str) -> None:
        actual = self.world()
        if actual != expected:
            raise HarnessFailure(
                f"{self.definition.name}: {scenario}: the world differs from {what}:\n"
                + _diff(expected, actual)
            )

    def _expect_unwound(self, result: SagaResult, node: str, scenario: str) -> None:
        if result.outcome != "unwound" or result.failed_node != node:
            raise HarnessFailure(
                f"{self.definition.name}: {scenario}: expected the saga to unwind from node "
                f"{node!r}, got outcome {result.outcome} (failed node {result.failed_node}, "
                f"error {result.error})"
            )

    # --- the checks ---------------------------------------------------------------------

    def check_actions_idempotent(self) -> int:
        """Every action executed twice ends where a normal run ends."""
        _, end, _ = self.baseline()
        scenario = "every action executed twice"
        _, result = self._run(transform(self.definition, actions_twice=True))
        if result.outcome != "succeeded":
            raise HarnessFailure(
                f"{self.definition.name}: {scenario}: the saga did not succeed: "
                f"{result.outcome}: {result.error}"
            )
        self._expect_world(end, scenario, "the end of a normal run")
        return 1

    def check_unwind_at_each_node(
        self, *, undos_twice: bool = False, nodes: Iterable[str] | None = None
    ) -> int:
        """A failure at each node (or at each of `nodes`) unwinds the saga back to
        the starting world. Limit `nodes` only for a saga whose later nodes are a
        point of no return by design, and test those nodes' failures separately."""
        wanted = None if nodes is None else set(nodes)
        unknown = (wanted or set()) - {n.name for n in self.definition.nodes}
        if unknown:
            raise HarnessUsageError(f"no such nodes: {sorted(unknown)}")
        for node in self.definition.nodes:
            if wanted is not None and node.name not in wanted:
                continue
            scenario = f"failure injected at node {node.name!r}" + (
                " with every undo executed twice" if undos_twice else ""
            )
            start, result = self._run(
                transform(self.definition, fail_at=node.name, undos_twice=undos_twice)
            )
            self._expect_unwound(result, node.name, scenario)
            self._expect_world(start, scenario, "the start")
        return len(self.definition.nodes) if wanted is None else len(wanted)

    def check_undos_idempotent(self, *, nodes: Iterable[str] | None = None) -> int:
        """As check_unwind_at_each_node, with every undo executed twice."""
        return self.check_unwind_at_each_node(undos_twice=True, nodes=nodes)

    def check_crash_at_each_point(self, *, fail_at: str | None = None) -> int:
        """Kill a child process running the saga at each checkpoint; recovery must
        finish it correctly. Returns the number of crash points tried."""
        if not isinstance(self.definition_spec, str):
            raise HarnessUsageError(
                "the crash check runs the saga in a child process: give the saga as a "
                "'module:function' path"
            )
        if self.deps_spec is not None and not isinstance(self.deps_spec, str):
            raise HarnessUsageError("the crash check needs deps as a 'module:function' path")
        _, end, _ = self.baseline()
        definition = transform(self.definition, fail_at=fail_at)
        total = 0

        def counter(_cp: Checkpoint) -> None:
            nonlocal total
            total += 1

        _, result = self._run(definition, counter)
        if fail_at is not None:
            self._expect_unwound(result, fail_at, f"failure injected at node {fail_at!r}")

        spare: subprocess.Popen[str] | None = self._spawn_child(fail_at)
        try:
            for point in range(1, total + 1):
                assert spare is not None
                child, spare = spare, (self._spawn_child(fail_at) if point < total else None)
                self._crash_once(definition, child, point, total, fail_at, end)
        finally:
            if spare is not None:
                spare.kill()
                spare.communicate()
        return total

    def _crash_once(
        self,
        definition: SagaDefinition,
        child: subprocess.Popen[str],
        point: int,
        total: int,
        fail_at: str | None,
        end: Any,
    ) -> None:
        scenario = f"crash at checkpoint {point} of {total}" + (
            f" (failure injected at {fail_at!r})" if fail_at else ""
        )
        try:
            self.reset()
            params = self._params()
            start = self.world()
            saga_id = uuid.uuid4()
        finally:
            if sys.exc_info()[0] is not None:
                child.kill()
                child.communicate()
        where = self._run_child(child, saga_id, params, point, scenario)
        scenario += f" (after {where})"
        with self.db.connect() as conn:
            logged = saga_log.get(conn, saga_id) is not None
        if not logged:
            # Killed before the saga's first log write committed (that write inserts
            # the saga row): nothing of it may exist, in the log or in the world.
            self._expect_world(start, scenario, "the start (the saga never started)")
            return
        self._recover(definition, saga_id, scenario)
        with self.db.connect() as conn:
            rec = saga_log.get_required(conn, saga_id)
        if rec.saga_state != "done" or rec.outcome not in ("succeeded", "unwound"):
            raise HarnessFailure(
                f"{self.definition.name}: {scenario}: after recovery the saga is "
                f"{rec.saga_state} (outcome {rec.outcome})"
            )
        if rec.outcome == "succeeded":
            if fail_at is not None:
                raise HarnessFailure(
                    f"{self.definition.name}: {scenario}: succeeded despite the failure"
                )
            self._expect_world(end, scenario, "the end of a normal run")
        else:
            self._expect_world(start, scenario, "the start (the saga unwound)")

    def check_all(self, *, crash: bool = True) -> None:
        self.baseline()
        self.check_actions_idempotent()
        self.check_unwind_at_each_node()
        self.check_undos_idempotent()
        if crash:
            self.check_crash_at_each_point()

    # --- crash machinery ----------------------------------------------------------------

    def _spawn_child(self, fail_at: str | None) -> subprocess.Popen[str]:
        """Start a child that imports everything and connects, then waits on stdin for
        its run (so its start-up overlaps the parent's recovery of the previous point)."""
        static = {
            "db_url": self.db_url,
            "definition": self.definition_spec,
            "deps": self.deps_spec,
            "fail_at": fail_at,
            "lease_secs": self.lease_secs,
        }
        env = dict(os.environ)
        # The child must import what this process can (the saga's test module).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        return subprocess.Popen(
            [sys.executable, "-m", "udx.saga.harness", json.dumps(static)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _run_child(
        self,
        child: subprocess.Popen[str],
        saga_id: uuid.UUID,
        params: dict[str, Any],
        kill_at: int,
        scenario: str,
    ) -> str:
        run = {"params": params, "saga_id": str(saga_id), "kill_at": kill_at}
        try:
            out, err = child.communicate(json.dumps(run) + "\n", timeout=self.child_timeout_secs)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise HarnessFailure(f"{scenario}: the child process hung") from None
        if child.returncode != -signal.SIGKILL:
            raise HarnessUsageError(
                f"{scenario}: the child process was not killed (exit {child.returncode}); "
                f"stderr:\n{err[-2000:]}"
            )
        return out.strip().splitlines()[-1] if out.strip() else "?"

    def _recover(self, definition: SagaDefinition, saga_id: uuid.UUID, scenario: str) -> None:
        with self.db.connect() as conn:
            rec = saga_log.get(conn, saga_id)
        if rec is None:
            raise HarnessFailure(f"{scenario}: the saga is not in the log")
        if rec.saga_state not in saga_log.ACTIVE_STATES:
            return
        if rec.lease_expires is not None:
            wait = (rec.lease_expires - utcnow()).total_seconds()
            if wait > 0:
                time.sleep(wait + 0.01)
        deadline = time.monotonic() + 10 * self.lease_secs + 5
        with SagaExecutor(self.db, [definition], deps=self._deps, lease_secs=5.0) as ex:
            while True:
                results = [r for r in ex.recover() if r.saga_id == saga_id]
                if results:
                    return
                # A lease renewed just before the kill may still be running out.
                if time.monotonic() > deadline:
                    raise HarnessFailure(f"{scenario}: recovery never adopted saga {saga_id}")
                time.sleep(self.lease_secs / 4)


def _child(static: dict[str, Any]) -> None:
    """The child side of the crash check: get ready, read the run from stdin, run the
    saga and SIGKILL self at checkpoint N."""
    db = open_database(static["db_url"])
    definition = transform(load_definition(static["definition"]), fail_at=static.get("fail_at"))
    deps = _make_deps(static.get("deps"), db)
    with db.connect():
        pass  # connect now, while the parent is still busy
    line = sys.stdin.readline()
    if not line:
        return  # the parent did not need this spare child
    spec = json.loads(line)
    seen = 0

    def hook(cp: Checkpoint) -> None:
        nonlocal seen
        seen += 1
        if seen == spec["kill_at"]:
            # Say where we died (the parent reports it), then die without cleanup.
            sys.stdout.write(f"{cp.kind} {cp.node or ''}".strip() + "\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    executor = SagaExecutor(
        db, [definition], deps=deps, lease_secs=float(static["lease_secs"]), on_checkpoint=hook
    )
    result = executor.run(definition.name, spec["params"], saga_id=uuid.UUID(spec["saga_id"]))
    sys.stdout.write(f"finished: {result.outcome}\n")


if __name__ == "__main__":  # pragma: no cover - runs in the crash check's child
    _child(json.loads(sys.argv[1]))
