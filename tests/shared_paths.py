"""Where the project's read-only shared folder lives: `../shared` beside the checkout (as in CI), or $TTRL_SHARED_DIR."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TTRL_SHARED_DIR", ROOT.parent / "shared")).resolve()
NEMO2_FIXTURE = str(SHARED / "fixtures" / "nemo2-qwen2-tied")
