"""Read side: named queries over the ledger shared by the CLI and the web layer (`queries`) and
the dashboard's aggregates and exports (`dashboard`)."""
