"""Database access: column types, the schema, engines, transactions, migrations."""
