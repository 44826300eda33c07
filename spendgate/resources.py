"""Where the shipped files are: the example policy, the pinned prices, the MDM kit, the addons.

In a source checkout they are the top-level folders people edit (`policies/`, `pricing/`, `mdm/`,
`addons/`). Installed from a wheel they ship as package data under `spendgate/_data/` (see
pyproject.toml's package-dir mapping) and are found with `importlib.resources`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
# a checkout: our pyproject.toml and the addons folder beside the package
CHECKOUT: Path | None = _ROOT if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "addons").is_dir() else None


def folder(name: str) -> Path:
    """`policies`, `pricing`, `mdm` or `addons`: the checkout's folder, else the installed copy.

    Raises FileNotFoundError when neither exists (a broken install).
    """
    if CHECKOUT is not None:
        return CHECKOUT / name
    path = Path(str(resources.files("spendgate") / "_data" / name))
    if not path.is_dir():
        raise FileNotFoundError(f"spendgate is installed without its {name}/ files ({path})")
    return path


def example_policy() -> Path:
    return folder("policies") / "example.yaml"


def pricing_dir() -> Path:
    """The pinned catalogue (`catalogue.json`, its lock) and `overrides.yaml`."""
    return folder("pricing")


def mdm_templates() -> Path:
    return folder("mdm") / "templates"


def addon() -> Path:
    """The mitmproxy script to load: `mitmdump -s "$(spendgate addon)"`."""
    return folder("addons") / "gateway.py"


def data_root() -> Path:
    """Where `data/` (the default ledger) lives: the checkout, else the working directory."""
    return CHECKOUT if CHECKOUT is not None else Path.cwd()
