"""A tiny authoritative DNS server on loopback for the DNS inventory tests.

dnspython parses each query and builds the answer from a record table. It only
ever listens on 127.0.0.1 and only answers what the table holds.
"""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset


class FakeDns:
    def __init__(self, with_additional: bool = True) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.with_additional = with_additional
        self.silent = False  # drop every query (a dead server)
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, rdtype: str, *values: str) -> None:
        key = (dns.name.from_text(name).to_text(), rdtype)
        self.records.setdefault(key, []).extend(values)

    def start(self) -> FakeDns:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            query = dns.message.from_wire(wire)
            q = query.question[0]
            rdtype = dns.rdatatype.to_text(q.rdtype)
            self.queries.append((q.name.to_text(), rdtype))
            if self.silent:
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            values = self.records.get((q.name.to_text(), rdtype))
            known_names = {n for n, _ in self.records}
            if values:
                response.answer.append(dns.rrset.from_text(q.name, 60, "IN", rdtype, *values))
                if rdtype == "SRV" and self.with_additional:
                    for v in values:
                        target = v.split()[-1]
                        for t in ("AAAA", "A"):
                            extra = self.records.get((dns.name.from_text(target).to_text(), t))
                            if extra:
                                response.additional.append(
                                    dns.rrset.from_text(target, 60, "IN", t, *extra)
                                )
            elif q.name.to_text() not in known_names:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)
