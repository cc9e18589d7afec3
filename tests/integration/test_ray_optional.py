"""Ray is optional: with ``ray`` unimportable, the launcher modules and the trainer's builders still import, and
``ray_main`` says how to install Ray (exit 2) instead of a traceback. Runs in a subprocess (no Ray needed here)."""

from __future__ import annotations

import subprocess
import sys

from tests.integration.trainer_fixtures import ROOT

SCRIPT = """
import sys
sys.modules['ray'] = None  # any `import ray` now raises ImportError, as on a machine without Ray
import ttrl_megatron.launch.ray_job, ttrl_megatron.launch.ray_grader, ttrl_megatron.trainer.builders
from ttrl_megatron.ray_main import main
sys.exit(main(['trainer.total_training_steps=1']))
"""


def test_everything_imports_without_ray_and_ray_main_says_how_to_get_it():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "pip install 'ray[default]==2.60.*'" in proc.stderr and "Traceback" not in proc.stderr
