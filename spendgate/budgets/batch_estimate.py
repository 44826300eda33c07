"""The reservation of an OpenAI batch whose input file the gateway saw uploaded (USD).

Each model's requests in the file (metering/providers/batch_input.py) are priced at that model's
batch rates: input as the bytes of their bodies (CHARS_PER_TOKEN per token, all uncached), output
as their declared caps, each at most the policy's typical output for the model (as a single
call's estimate is), and the policy's typical output for a request that declares none. A model
without a price goes by `unpriced` (its fallback rates; `block` refuses the batch: None).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from spendgate.metering.meter import CHARS_PER_TOKEN
from spendgate.policy.model import Policy
from spendgate.pricing.rates import Pricer, compute
from spendgate.usage import Usage

BATCH_VARIANT = "batch"


def batch_input_cost(pricer: Pricer, policy: Policy, provider: str, estimate: Any, now: datetime,
                     fallback: Callable[[Policy, Usage], Decimal | None]) -> Decimal | None:
    """USD to reserve for a batch of `estimate` (an InputEstimate); None: refuse (unpriced: block)."""
    total = Decimal(0)
    for part in estimate.parts:
        typical = policy.typical_output(part.model)
        declared = part.lines - part.undeclared
        usage = Usage(input_tokens=math.ceil(part.input_bytes / CHARS_PER_TOKEN),
                      output_tokens=min(part.declared_output, declared * typical) + part.undeclared * typical)
        rates = pricer.rates(provider, part.model, now, BATCH_VARIANT) if part.model else None
        cost = compute(rates, usage).cost if rates is not None else None
        if cost is None:
            cost = fallback(policy, usage)
        if cost is None:
            return None
        total += cost
    return total
