"""Deployment kit: one site config rendered into PAC, OS profiles, scripts and agent settings.

Pure (no mitmproxy): `site` loads and validates the config, `pac` writes and evaluates the PAC
file, `render` writes every artifact. `spendgate mdm render` and `spendgate doctor` use them.
"""
