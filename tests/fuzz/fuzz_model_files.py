"""Long fuzz run of fastlstm's model loader: mutate valid model files, load each, run the model.

    python tests/fuzz/fuzz_model_files.py --count 100000 --seed 0

Input i is made from seed file and mutators chosen by random.Random(f"{seed}:{i}"), so any
input can be rebuilt on its own (--only i --save-failures DIR writes it out).  Each input is
written to a file and given to `fastlstm.load`; the outcome is

    loaded      a Model that runs: finite logits, token ids in range, text from its tokenizer
    ValueError  the file was refused with a ValueError
    failure     any other exception, or a loaded model that misbehaves
    hang        the input took longer than --timeout seconds (SIGALRM); a hang inside C code,
                where no Python signal handler can run, is caught by faulthandler's watchdog
                at 5x --timeout, which dumps every thread's stack and exits with status 1
    crash       the process dies (faulthandler prints the stack; current.txt holds the index)

Prints a summary and exits with status 1 if anything but `loaded` and `ValueError` happened.
Runs this checkout's fastlstm (build it first: python setup.py build_ext --inplace); needs torch,
which builds the seed files with fastlstm.export.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import os
import platform
import random
import resource
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import model_mutators as mm  # noqa: E402

RNN_TYPE_KEYWORDS = [None] * 17 + ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


class Hang(BaseException):
    """Raised by the SIGALRM handler: not an Exception, so nothing in fastlstm can catch it."""


def make_input(seeds: dict[str, bytes], seed: int, index: int, max_steps: int):
    rng = random.Random(f"{seed}:{index}")
    name = rng.choice(mm.SEED_NAMES)
    blob, applied = mm.mutate(seeds[name], rng, max_steps)
    rnn_type = rng.choice(RNN_TYPE_KEYWORDS)
    return name, blob, applied, rnn_type


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs to run")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed")
    parser.add_argument("--start", type=int, default=0, help="first input index")
    parser.add_argument("--only", type=int, default=None, help="run input INDEX alone")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per input")
    parser.add_argument("--max-steps", type=int, default=3, help="mutators per input, at most")
    parser.add_argument("--workdir", default=None, help="where seed files and inputs go")
    parser.add_argument("--save-failures", default=None, metavar="DIR",
                        help="write each failing input (and its traceback) there")
    parser.add_argument("--progress", type=int, default=10_000, help="print every N inputs")
    args = parser.parse_args(argv)

    workdir = args.workdir or mm.fresh_dir()
    os.makedirs(workdir, exist_ok=True)
    if not faulthandler.is_enabled():  # (pytest enables it itself)
        faulthandler.enable(file=sys.__stderr__)
    started = time.time()
    seeds = mm.build_seed_files(workdir)
    path = os.path.join(workdir, "input.safetensors")
    current = os.path.join(workdir, "current.txt")

    def on_alarm(signum, frame):
        raise Hang()

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    indices = [args.only] if args.only is not None else range(args.start, args.start + args.count)
    outcomes = collections.Counter()
    by_seed = collections.defaultdict(collections.Counter)
    mutators = collections.Counter()
    problems = []
    slowest = (0.0, None)
    t0 = time.time()
    for n, index in enumerate(indices, 1):
        name, blob, applied, rnn_type = make_input(seeds, args.seed, index, args.max_steps)
        with open(path, "wb") as f:
            f.write(blob)
        with open(current, "w") as f:
            f.write(f"{index}\n")
        faulthandler.dump_traceback_later(5 * args.timeout, exit=True, file=sys.__stderr__)
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        start = time.perf_counter()
        detail = None
        try:
            outcome = mm.check_file(path, rnn_type)
        except Hang:
            outcome, detail = "hang", f"over {args.timeout} s"
        except mm.Failure as e:
            outcome, detail = "failure", str(e)
        except Exception as e:  # noqa: BLE001 - the harness itself must not stop the run
            outcome = "failure"
            detail = f"harness: {type(e).__name__}: {e}\n{traceback.format_exc()}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
        elapsed = time.perf_counter() - start
        if elapsed > slowest[0]:
            slowest = (elapsed, index)
        outcomes[outcome] += 1
        by_seed[name][outcome] += 1
        mutators.update(applied)
        if detail is not None:
            problems.append((index, name, applied, rnn_type, outcome, detail))
            print(f"[{outcome}] input {index} ({name}, {' + '.join(applied)}, rnn_type="
                  f"{rnn_type!r}):\n{detail}", flush=True)
            if args.save_failures:
                os.makedirs(args.save_failures, exist_ok=True)
                stem = os.path.join(args.save_failures, f"{outcome}-{args.seed}-{index}")
                with open(stem + ".safetensors", "wb") as f:
                    f.write(blob)
                with open(stem + ".txt", "w") as f:
                    f.write(f"{name} {applied} rnn_type={rnn_type!r}\n{detail}\n")
        if args.progress and n % args.progress == 0:
            rate = n / (time.time() - t0)
            print(f"{n:,} inputs, {rate:,.0f}/s: {dict(outcomes)}", flush=True)

    signal.signal(signal.SIGALRM, previous_handler)
    duration = time.time() - started
    total = sum(outcomes.values())
    bad = total - outcomes["loaded"] - outcomes["ValueError"]
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\n== fastlstm loader fuzz: summary ==")
    print(f"command:  python tests/fuzz/fuzz_model_files.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine:  {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus, Python {platform.python_version()}")
    import numpy
    import safetensors

    print(f"versions: numpy {numpy.__version__}, safetensors {safetensors.__version__}")
    print(f"inputs:   {total:,} (seed {args.seed}, indices {indices[0]}..{indices[-1]})")
    print(f"duration: {duration:,.1f} s (including building the seed files)")
    for outcome in ("loaded", "ValueError", "failure", "hang"):
        print(f"  {outcome:<11} {outcomes[outcome]:>9,}")
    print("per seed file:")
    for name in mm.SEED_NAMES:
        print(f"  {name:<22} {dict(by_seed[name])}")
    print(f"mutators applied: {dict(sorted(mutators.items()))}")
    print(f"slowest input: {slowest[1]} ({slowest[0] * 1000:.1f} ms); "
          f"peak RSS {maxrss_mb:,.0f} MB")
    print(f"result:   {'FAIL' if bad else 'OK'}: {bad} failures or hangs")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # this checkout's fastlstm
    sys.exit(main())
