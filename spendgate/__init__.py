"""spendgate: meter, price and cap AI coding-agent spend. The core knows nothing of mitmproxy."""

__version__ = "0.1.0"
