"""An example or two for every command's --help and its man page's EXAMPLES
(attached by UdxGroup, so that commands keep short docstrings)."""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[str, list[str]] = {
    "": [
        "udx db init",
        "udx --db postgresql+psycopg://udx@db.example/omicron pass --json",
    ],
    "changeset": ["udx changeset", "udx changeset --json | jq '.create_required | length'"],
    "config": ["udx config init", "udx config show"],
    "config init": ["udx config init", "udx config init /etc/udx/config.toml --force"],
    "config show": ["udx config show", "UDX_SAGA_LEASE_SECS=60 udx config show --json"],
    "db": ["udx db status", "udx db upgrade"],
    "db init": ["udx db init", "udx --db postgresql+psycopg://udx@db.example/omicron db init"],
    "db seed": ["udx db seed --snapshots 100 --seed 7"],
    "db status": ["udx db status", "udx db status --json"],
    "db upgrade": ["udx db upgrade"],
    "demo": ["udx demo", "udx demo --pantries 4 --snapshots 50"],
    "export": ["udx export list --state live", "udx export show EXPORT_ID"],
    "export diagnose": [
        "udx export diagnose EXPORT_ID",
        "udx export diagnose --resource-type snapshot --resource-id UUID --json",
    ],
    "export prune": ["udx export prune --older-than 30d --dry-run", "udx export prune --json"],
    "export release": [
        "udx export release EXPORT_ID --saga SAGA_ID",
        "udx export release EXPORT_ID --saga SAGA_ID --yes --json",
    ],
    "export create": ["udx export create --resource-type snapshot --resource-id UUID"],
    "export delete": ["udx export delete EXPORT_ID", "udx export delete EXPORT_ID --yes --json"],
    "export list": [
        "udx export list --state live --pantry 10.0.0.1:17000",
        "udx export list --since 1h --sort modified -o wide",
        "udx export list -o name --state deleting | xargs -n1 udx export show",
    ],
    "export show": [
        "udx export show EXPORT_ID",
        "udx export show --resource-type snapshot --resource-id UUID --json",
    ],
    "pantry": ["udx pantry list", "udx pantry affected"],
    "pantry add": ["udx pantry add '[fd00:1122:3344:101::1]:17000'"],
    "pantry affected": ["udx pantry affected", "udx pantry affected --pantry 10.0.0.1:17000"],
    "pantry expunge": ["udx pantry expunge 10.0.0.1:17000", "udx pantry expunge ADDRESS --yes"],
    "pantry list": ["udx pantry list", "udx pantry list --no-check --no-headers"],
    "pantry-sim": ["udx pantry-sim --listen 127.0.0.1:17000"],
    "pass history": ["udx pass history", "udx pass history --limit 10 --json"],
    "pass": [
        "udx pass --dry-run",
        "udx --log-format json pass --json --metrics-file /var/lib/node_exporter/udx.prom",
    ],
    "saga": ["udx saga list --state running", "udx saga show SAGA_ID"],
    "saga abandon": ["udx saga abandon SAGA_ID --reason operator --comment 'volume gone'"],
    "saga list": ["udx saga list --state running --state unwinding", "udx saga list --json"],
    "saga prune": [
        "udx saga prune --older-than 30d --dry-run",
        "udx saga prune --include stuck --include abandoned --json",
    ],
    "saga recover": ["udx saga recover", "udx saga recover --json"],
    "saga resume": ["udx saga resume SAGA_ID"],
    "saga retry-undo": ["udx saga retry-undo SAGA_ID", "udx saga retry-undo SAGA_ID --json"],
    "saga show": ["udx saga show SAGA_ID", "udx saga show SAGA_ID --json | jq .events"],
    "status": ["udx status", "udx status --json | jq .last_pass"],
    "volume": ["udx volume list", "udx volume show VOLUME_ID"],
    "volume list": ["udx volume list", "udx volume list --deleted --all --no-headers"],
    "volume show": ["udx volume show VOLUME_ID", "udx volume show VOLUME_ID --json"],
    "whatis": ["udx whatis UUID", "udx whatis UUID --json"],
}

MARK = "\b\nExamples:\n"  # \b: click keeps the lines as written


def attach(group: Any, path: str = "") -> None:
    """Append each command's examples to its help text, once."""
    commands = getattr(group, "commands", {})
    for name, cmd in commands.items():
        attach(cmd, f"{path} {name}".strip())
    lines = EXAMPLES.get(path)
    help_text = getattr(group, "help", None) or ""
    if lines and MARK not in help_text:
        group.help = help_text.rstrip() + "\n\n" + MARK + "".join(f"  {ln}\n" for ln in lines)


def split(help_text: str) -> tuple[str, list[str]]:
    """(the help without its examples, the example lines): for the man pages."""
    if MARK not in help_text:
        return help_text, []
    head, tail = help_text.split(MARK, 1)
    return head.rstrip(), [ln.strip() for ln in tail.splitlines() if ln.strip()]
