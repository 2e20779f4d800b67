"""The command line: parse, call the library, render. Nothing here is imported by
lower layers, and nothing heavy (SQLAlchemy, httpx, psycopg) is imported at module
level, so `udx --help` and shell completion stay fast."""
