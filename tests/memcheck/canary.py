"""A deliberate out-of-bounds read in a fastlstm kernel, to show the checker sees one.

fastlstm._rnn.forward trusts its arguments (fastlstm.Model validates them first); handed the
token id `vocab` directly, it copies the row just past the end of layer 0's lookup table.
run.sh runs this under the checker and expects the summary to report a fastlstm error.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's fastlstm
import fastlstm  # noqa: E402
from fastlstm import _rnn  # noqa: E402

model = fastlstm.load(num_threads=1)
cfg = model.config
h = np.zeros((cfg.num_layers, 1, cfg.output_size), np.float32)
c = np.zeros((cfg.num_layers, 1, cfg.hidden_size), np.float32)
logits = np.empty((1, 1, cfg.vocab_size), np.float32)
bad = np.array([[cfg.vocab_size]], np.int64)  # one past the last row
_rnn.forward(model.packed, h=h, c=c, ids=bad, logits=logits, num_threads=1)
print("canary: the out-of-bounds call returned (the checker must have reported it)")
