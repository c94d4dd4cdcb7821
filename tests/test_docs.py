"""The user guide (docs/, Sphinx) builds with warnings as errors, and its configuration reference
is generated from the config dataclasses, so every key is documented with its real default.
Sphinx comes with the test extra. ~10-30 s (one Sphinx build)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nequip_fast.model.config import ModelConfig
from nequip_fast.train.config import DataConfig, OutputConfig, TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (DataConfig, ModelConfig, TrainingConfig, OutputConfig)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    pytest.importorskip("sphinx", reason="the docs build needs Sphinx (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("docs")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(ROOT / "docs"), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, f"the docs do not build cleanly:\n{done.stdout}\n{done.stderr}"
    return out


def test_docs_build_without_warnings(built):
    for page in ("index", "install", "configuration", "lammps", "errors"):
        assert (built / f"{page}.html").is_file()


def test_configuration_reference_lists_every_key(built):
    import html
    import re

    text = html.unescape(re.sub(r"<[^>]+>", "", (built / "configuration.html").read_text()))
    for cls in CONFIGS:
        for field in dataclasses.fields(cls):
            assert field.name in text, f"{cls.__name__}.{field.name} is missing from the configuration reference"
    assert "0.005" in text and "runs/nequip" in text  # defaults come from the dataclasses


def test_an_undocumented_key_fails_the_build():
    pytest.importorskip("sphinx", reason="the docs extension imports Sphinx")
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        import config_reference
    finally:
        sys.path.pop(0)

    @dataclasses.dataclass
    class Partly:
        """A config.

        alpha: documented.
        """

        alpha: int = 1
        beta: float = 2.0

    with pytest.raises(ValueError, match="beta"):
        config_reference.rows(Partly)
    assert config_reference.rows(TrainingConfig)  # the real ones are complete
