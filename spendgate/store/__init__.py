"""Storage: the ledger and its DuckDB implementation (`ledger`), and the read-side SQL helpers
(`sql`)."""
