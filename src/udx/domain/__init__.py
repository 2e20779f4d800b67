"""Domain types and the export state machine. No I/O lives here."""
