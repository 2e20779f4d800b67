"""`udx pantry-sim`: run a simulated pantry in the foreground until Ctrl-C."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `pantry-sim` command to `app`."""
    app.command("pantry-sim")(pantry_sim)


def pantry_sim(
    listen: str = typer.Option(
        "127.0.0.1:17000",
        "--listen",
        metavar="ADDRESS",
        help='Address to listen on: "ip:port" or "[ipv6]:port".'
    ),
    latency: float = typer.Option(
        0.0, "--latency", metavar="SECONDS", help="Seconds to wait before each answer."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print each request."),
) -> None:
    """Run a simulated Crucible Pantry (attach, volume status, detach, status)."""
    import signal
    import sys
    import threading

    from udx.domain.address import PantryAddress
    from udx.domain.errors import BadInput
    from udx.pantry.sim import RequestRecord, SimulatedPantry

    addr = PantryAddress.parse(listen)
    if latency < 0:
        raise BadInput("--latency must not be negative")
    sim = SimulatedPantry(addr.ip_text, addr.port)
    if not quiet:

        def show(rec: RequestRecord) -> None:
            sys.stdout.write(f"{rec.method} {rec.path} -> {rec.status}\n")
            sys.stdout.flush()

        sim.on_request = show
    sim.set_latency(latency)
    try:
        sim.start()
    except OSError as err:
        raise BadInput(f"cannot listen on {addr}: {err.strerror or err}") from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    # Signal handlers can only be set from the main thread (not, e.g., in a test
    # that runs the command in a thread; there the caller stops it otherwise).
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sys.stdout.write(f"simulated pantry listening on {sim.address} (Ctrl-C to stop)\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sim.stop()
    sys.stdout.write(f"simulated pantry {sim.address} stopped\n")
    sys.stdout.flush()
