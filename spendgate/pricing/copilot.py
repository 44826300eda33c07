"""GitHub Copilot premium requests, shown next to the list-price equivalent of a Copilot request.

Copilot bills by requests, not tokens: each user request to a model counts as N premium requests
(N: the model's multiplier), and premium requests beyond the plan's allowance cost a flat rate.
The data is a small dated table, ``pricing/copilot_premium.yaml`` (with its source), so a change
at GitHub is a reviewed edit. Budgets are charged the list-price equivalent (comparable across
providers); the premium-request figure is a second view, kept in the row's price detail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

FILE = "copilot_premium.yaml"


@dataclass(frozen=True, slots=True)
class PremiumTable:
    multipliers: tuple[tuple[str, Decimal], ...]  # (model glob, premium requests per user request)
    overage_usd: Decimal  # USD per premium request beyond the allowance
    source: str
    checked: str

    def multiplier(self, model: str) -> tuple[str, Decimal] | None:
        """(matching row, multiplier) for a model: an exact row first, then globs in file order."""
        m = model.lower().strip()
        for pattern, value in self.multipliers:
            if pattern == m:
                return pattern, value
        for pattern, value in self.multipliers:
            if "*" in pattern and fnmatchcase(m, pattern):
                return pattern, value
        return None

    def view(self, model: str | None, initiator: str | None) -> dict[str, Any]:
        """The premium-request view of one request (JSON-able, kept in price_detail)."""
        out: dict[str, Any] = {"overage_usd_per_premium_request": str(self.overage_usd),
                               "source": f"{self.source} (checked {self.checked})"}
        found = self.multiplier(model) if model else None
        if found is None:
            return {**out, "premium_requests": None, "note": f"no Copilot multiplier known for {model!r}"}
        row, mult = found
        counted = (initiator or "user").lower() != "agent"
        premium = mult if counted else Decimal(0)
        out.update({"model_row": row, "multiplier": str(mult), "premium_requests": str(premium),
                    "overage_usd": str(premium * self.overage_usd)})
        if not counted:
            out["note"] = "X-Initiator: agent (a follow-up inside a user turn): not a premium request"
        return out


def parse(text: str, where: str) -> PremiumTable:
    """Raises ValueError naming the file when the table is malformed."""
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("multipliers"), dict):
        raise ValueError(f"{where}: expected a mapping with 'multipliers'")
    try:
        rows = tuple((str(k).lower(), Decimal(str(v))) for k, v in doc["multipliers"].items())
        overage = Decimal(str(doc.get("overage_usd_per_premium_request", "0.04")))
    except ArithmeticError as e:
        raise ValueError(f"{where}: not a number: {e}") from None
    return PremiumTable(rows, overage, str(doc.get("source", where)), str(doc.get("checked", "?")))


def load(pricing_dir: Path | None) -> PremiumTable | None:
    """The table in `pricing_dir` (or the shipped one); None (logged) when it cannot be read."""
    if pricing_dir is None or not (pricing_dir / FILE).exists():
        from spendgate import resources

        pricing_dir = resources.pricing_dir()
    path = pricing_dir / FILE
    try:
        return parse(path.read_text(), str(path))
    except (OSError, ValueError, yaml.YAMLError) as e:
        log.warning("spendgate: Copilot premium-request table unusable (%s): premium requests not shown", e)
        return None
