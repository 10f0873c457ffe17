"""`import fastlstm` must not import torch (torch is only for export and training), nor Keras,
TensorFlow or h5py (h5py is imported only to read a Keras file)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fastlstm

# The folder holding the fastlstm these tests import (site-packages after `pip install .`, the
# checkout after an in-place build), so the fresh interpreter imports the same one.
PACKAGE_PARENT = Path(fastlstm.__file__).resolve().parents[1]

SCRIPT = """
import sys
import fastlstm
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not heavy, f"import fastlstm imported {heavy[:5]}"
assert "safetensors.torch" not in sys.modules, "import fastlstm imported safetensors.torch"
for name in ("keras", "h5py", "tensorflow"):
    assert name not in sys.modules, f"import fastlstm imported {name}"
for name in ("load", "Model", "ModelConfig", "LSTM", "GRU", "RNN", "export", "convert",
             "Forecaster", "ForecasterConfig"):
    assert hasattr(fastlstm, name), name
fastlstm.load().forward([1, 2, 3])  # a safetensors file: h5py stays out too
assert "h5py" not in sys.modules, "loading a safetensors file imported h5py"
print("ok")
"""


def run_fresh(script: str, tmp_path) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter, outside the checkout, importing this fastlstm."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_import_does_not_import_torch(tmp_path):
    result = run_fresh(SCRIPT, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_importing_train_and_cli_does_not_import_torch(tmp_path):
    script = ("import sys, fastlstm.train, fastlstm.cli\n"
              "assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch'\n")
    result = run_fresh(script, tmp_path)
    assert result.returncode == 0, result.stderr

