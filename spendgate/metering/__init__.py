"""Metering: what a provider call used. The exchange lifecycle (`meter`), the stream tap
(`streams`), SSE and JSON-array framing (`framing`), per-provider adapters (`providers`) and
undecrypted AI connections (`opaque`)."""
