"""SQL, one module per table family. Every function takes an open Connection so
callers compose transactions; `Database.transaction` supplies retries."""
