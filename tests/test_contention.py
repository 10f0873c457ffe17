"""Two threads sharing one sequence while other work holds the cores.

With fewer rows than threads, the threads of a call meet at barriers several times a token
(stack.pxd's Team).  When another process keeps a member off its core, every barrier waits
a scheduler time slice for it; thread 0 notices that it mostly waits and goes on alone for
a while (stack.pxd's team_wants_solo).  Here both threads are pinned to one core, the
worst case: the text and the logits must stay bitwise those of one thread, and thread 0
must have gone alone in decoding and in forward's prefill.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastlstm

PACKAGE_PARENT = Path(fastlstm.__file__).resolve().parents[1]

CHILD = r"""
import os
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before OpenMP starts its threads
import time
import numpy as np
import fastlstm
from fastlstm import _generate, _rnn

one, two = fastlstm.load(num_threads=1), fastlstm.load(num_threads=2)
kw = dict(max_new_tokens=400, temperature=0.8, seed=3)
start = time.perf_counter()
same_text = one.generate("ROMEO.", **kw) == two.generate("ROMEO.", **kw)
streamed = "".join(two.stream("JULIET.", **kw)) == one.generate("JULIET.", **kw)
ids = np.arange(1500)[None] % one.config.vocab_size
same_logits = np.array_equal(one.forward(ids)[0].view(np.uint32), two.forward(ids)[0].view(np.uint32))
print(same_text, streamed, same_logits, _generate.team_solo_until() > 0, _rnn.team_solo_until() > 0,
      round(time.perf_counter() - start, 2))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_two_threads_on_one_core_go_alone_with_the_same_bits(tmp_path):
    env = dict(os.environ, OMP_PROC_BIND="false")
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    same_text, streamed, same_logits, decode_alone, prefill_alone, seconds = result.stdout.split()
    assert (same_text, streamed, same_logits) == ("True", "True", "True")
    assert (decode_alone, prefill_alone) == ("True", "True"), seconds
