"""Sphinx configuration of the nequip_fast user guide (build: python -m sphinx -W -b html docs docs/_build)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "nequip_fast"
author = "nequip_fast developers"
extensions = ["config_reference"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "NequIP potentials with fused kernels", "fixed_sidebar": True}
highlight_language = "none"
