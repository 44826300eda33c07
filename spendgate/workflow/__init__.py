"""Workflow: what happens around a budget besides admission. Tiered alerts (`alerts`), increase
requests and grants (`approvals`), notification sinks (`sinks`), the append-only audit trail
(`audit`), wired together once in `service`. Knows nothing of HTTP."""
