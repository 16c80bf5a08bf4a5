"""What the deploy/ tests share: where the recipes are, and running a command for its output.

tests/test_deploy.py checks the recipes statically (fast); tests/test_image.py builds and runs
the image with podman (slow).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def run(*argv: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `argv`, capturing its output as text; never raises on a non-zero exit."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
