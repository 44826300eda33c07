"""Laptops reporting to a central gateway (issue 15, part 5): see docs/scale-out.md, "Laptops".

* `ingest` (the centre): validates pushed ledger rows (client input), attributes them to the
  authenticated user, lands each once by request id in the centre's ledger and budget counters,
  and grants laptops their lease of room on the user's budgets.
* `charging` (the centre): which windows and budgets a pushed row may charge (back-dated rows count
  at their receipt; past the user's room, the user's own budgets only).
* `roster` (the centre): the laptops that called in, and those that went silent.
* `uplink` (the laptop): the durable outbox (every local row the centre has not acknowledged),
  the pusher thread with back-off, the lease it admits against while the centre answers, and the
  policy's `offline_allowance` while it does not.
"""
