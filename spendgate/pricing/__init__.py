"""Pricing: usage to USD. Rates and computation (`rates`), the pinned genai-prices catalogue
(`catalogue`), and re-pricing stored rows with its audit (`reprice`)."""
