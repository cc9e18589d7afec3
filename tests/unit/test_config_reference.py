"""docs/config-reference.md is generated from the config dataclasses and must match them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_current():
    proc = subprocess.run([sys.executable, "scripts/gen_config_reference.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_field_is_documented():
    text = (ROOT / "docs" / "config-reference.md").read_text()
    undocumented = [line.split("`")[1] for line in text.splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not undocumented, f"config fields without a comment on their dataclass: {undocumented}"
