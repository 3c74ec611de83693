"""Files bundled with the app (icons, stylesheets, prompt templates, sample documents).

They live in the top-level ``resources/`` folder of the source tree. A frozen app or an installed wheel has
them as ``slowtune/resources`` inside the package, which ``importlib.resources`` finds; a source checkout has
them beside the package. Every reader goes through ``resource_path`` so both work.
"""

from __future__ import annotations

from importlib import resources as _ir
from pathlib import Path


def resources_root() -> Path:
    packaged = Path(str(_ir.files("slowtune"))) / "resources"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "resources"


def resource_path(*parts: str) -> Path:
    path = resources_root().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"slowtune resource {'/'.join(parts)} is missing from {resources_root()}")
    return path
