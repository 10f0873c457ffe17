"""`import fastlstm` must not import torch (torch is only for export and training)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
import fastlstm
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not heavy, f"import fastlstm imported {heavy[:5]}"
assert "safetensors.torch" not in sys.modules, "import fastlstm imported safetensors.torch"
for name in ("load", "Model", "ModelConfig", "LSTM", "GRU", "RNN", "export"):
    assert hasattr(fastlstm, name), name
print("ok")
"""


def test_import_does_not_import_torch():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

