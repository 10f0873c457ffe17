#!/usr/bin/env bash
# Run fastlstm's kernel tests under a memory checker and say whether fastlstm's own code
# (the extension modules fastlstm._rnn, _generate, _matmul, _forecast, _packed built from
# src_pyx/)
# is clean.
#
#   tests/memcheck/run.sh [valgrind|asan|all] [--canary]      (default: all)
#
# valgrind  valgrind memcheck on the extensions as built in this checkout (build them first:
#           python setup.py build_ext --inplace), PYTHONMALLOC=malloc so every Python and NumPy
#           buffer is a malloc block memcheck watches; --track-origins, definite leaks.  Runs a
#           subset of the kernel tests (VALGRIND_K below) and tests/memcheck/exercise_kernels.py
#           once per kernel path in VALGRIND_ISA (default "avx2 portable": valgrind has no
#           AVX-512, so the avx512 path is ASan's alone).  ~45 min on 2 cores (torch alone
#           takes a minute to import under valgrind).
# asan      AddressSanitizer + UndefinedBehaviorSanitizer: copies the checkout to a temporary
#           directory, builds the extensions there with -fsanitize=address,undefined (setup.py
#           untouched: CFLAGS/LDFLAGS), and runs ALL the kernel test files (ASAN_K below), the
#           concurrency and contention tests, and exercise_kernels.py once per kernel path the
#           CPU has (FASTLSTM_ISA), with libasan preloaded into Python.  ~5 min + ~8 min build.
# --canary  also run tests/memcheck/canary.py (a deliberate out-of-bounds read in _rnn) under
#           each checker and require that it IS reported: proof the checker sees our kernels.
#
# Verdict: tests/memcheck/summarize.py classifies every report.  Exit status 0 when every test
# passed and no error or definite leak involves fastlstm's code; the logs stay in $OUT.
# Environment: PYTHON (default: python3 on PATH; its real executable is used, not a shim),
# MEMCHECK_OUT (default: a new directory under ${TMPDIR:-/tmp}), VALGRIND_ISA (see above).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/tests/memcheck"
MODE="all"
CANARY=0
for arg in "$@"; do
  case "$arg" in
    valgrind|asan|all) MODE="$arg" ;;
    --canary) CANARY=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

PY="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"
OUT="${MEMCHECK_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/fastlstm-memcheck.XXXXXX")}"
mkdir -p "$OUT"
echo "python: $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"
echo "logs:   $OUT"

KERNEL_TESTS=(tests/test_matmul.py tests/test_precision.py tests/test_numerics.py
              tests/test_generation.py tests/test_model_vs_torch.py
              tests/test_layers_vs_torch.py tests/test_sampler.py
              tests/test_kernel_paths.py tests/test_forecast.py)
# Under ASan: every test but the two-threads timing test, and test_kernel_paths' two tests
# that start Python with only FASTLSTM_ISA, PATH and PYTHONPATH in its environment: without
# LD_PRELOAD the sanitized extensions cannot load there (ASan's runtime must come first).
# exercise_kernels.py runs each kernel path in a process of its own, FASTLSTM_ISA set.
ASAN_K="not two_threads_vs_one and not the_environment_variable \
and not forced_by_the_environment"
# Under valgrind (~100x slower): leave out argument validation that never reaches a kernel,
# n = 2051 products (exercise_kernels.py has one), per-case checks other than logits/state and
# two-pieces, the torch-module copies of the layer cases, the chi-square sampling tests, and
# the validation-loss runs (30k tokens per precision; exercise_kernels.py covers those paths).
# Also the tests whose kernels run in a child process (test_kernel_paths' FASTLSTM_ISA tests):
# valgrind does not follow exec (no --trace-children), so they would check nothing here;
# the bundled model's seeded text at batch 64 (64 rows x 80 tokens, float32 and int8, 1 and 2
# threads, 1.9M parameters: 18 min alone under valgrind; the batch-1 team case stays); and
# test_forecast's refused inputs, which never reach a kernel; and the int8 load's memory peak,
# measured with tracemalloc, whose own traceback blocks valgrind finds lost at exit (under a
# fastlstm frame when they record a PackedModel's allocation).
VALGRIND_K="not bad_values and not bad_prompts and not 2051 and not test_config \
and not test_initial_state and not test_state_is_not_modified and not test_one_dimensional_ids \
and not greedy_continuation and not (test_layer_matches_torch and (from_torch or unbatched)) \
and not layer_random_shapes and not draws_follow_the_distribution and not validation_loss \
and not the_environment_variable and not forced_by_the_environment \
and not (same_text_on_one_and_two_threads and 64) and not bad_series and not bad_steps \
and not bad_states and not bad_forecaster and not tensors_are_checked and not bad_csv \
and not without_a_float32_copy"
# The kernel paths exercise_kernels.py runs under valgrind (those of them this CPU has).
VALGRIND_ISA="${VALGRIND_ISA:-avx2 portable}"

status=0

# pytest's verdict from its JUnit file (the process exit code can be the checker's).
junit_ok() {
  "$PY" - "$1" <<'EOF'
import sys, xml.etree.ElementTree as ET
try:
    suite = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(f"pytest: no result file {sys.argv[1]} (the process died?)")
    sys.exit(1)
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
t, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
print(f"pytest: {t} tests, {f} failures, {e} errors, {s} skipped")
sys.exit(1 if f or e or t == 0 else 0)
EOF
}

# valgrind PREFIX COMMAND...: memcheck, one XML (PREFIX.<pid>.xml) per process.
# PYTHONMALLOC=malloc: no pymalloc arenas hiding blocks.  Passive OpenMP waits: spinning
# threads are very slow under valgrind, which runs one thread at a time.  Shorter superblocks
# (--vex-guest-max-insns, default 60): a run over every weight precision once died with
# "VEX temporary storage exhausted" translating a block of 256-bit code.
vg() {
  local prefix="$1"; shift
  PYTHONMALLOC=malloc OMP_WAIT_POLICY=passive PYTHONDONTWRITEBYTECODE=1 \
  valgrind --tool=memcheck --track-origins=yes --num-callers=40 --vex-guest-max-insns=30 \
    --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --suppressions="$HERE/valgrind.supp" --xml=yes --xml-file="$prefix.%p.xml" \
    --log-file="$prefix.%p.log" "$@"
}

# The kernel paths fastlstm.isa says this CPU can run, slowest first: paths DIR [ENV...].
paths() {
  (cd "$1" && shift && "$@" "$PY" -c 'import fastlstm.isa as i; print(*i.available())')
}

run_valgrind() {
  command -v valgrind >/dev/null || { echo "valgrind not found" >&2; return 1; }
  (cd "$ROOT" && "$PY" -c 'import fastlstm._rnn, fastlstm._generate, fastlstm._matmul, fastlstm._forecast, fastlstm._packed') || {
    echo "build the extensions first: python setup.py build_ext --inplace" >&2; return 1; }
  local name src
  for name in _rnn _generate _matmul _forecast _packed; do  # a rough staleness check: its .pyx, and
    for src in "$ROOT/src_pyx/$name.pyx" "$ROOT"/src_pyx/*.{pxd,pxi,h}; do  # what it includes
      if [ "$src" -nt "$(ls "$ROOT"/fastlstm/$name.*.so | head -1)" ]; then
        echo "warning: fastlstm/$name is older than $src (python setup.py build_ext --inplace)" >&2
        break
      fi
    done
  done
  local dir="$OUT/valgrind" ok=0 isa cpu
  mkdir -p "$dir"
  rm -rf "$dir"/vg.* "$dir/canary" "$dir"/exercise-*.txt
  cpu=" $(paths "$ROOT") "
  echo "== valgrind $(valgrind --version): pytest subset + exercise_kernels.py (kernel paths: $VALGRIND_ISA)"
  (cd "$ROOT" && vg "$dir/vg" "$PY" -m pytest -p no:cacheprovider -o junit_family=legacy -q \
      --junitxml="$dir/junit.xml" "${KERNEL_TESTS[@]}" -k "$VALGRIND_K") > "$dir/pytest.txt" 2>&1
  tail -n 3 "$dir/pytest.txt"
  junit_ok "$dir/junit.xml" || ok=1
  for isa in $VALGRIND_ISA; do
    case "$cpu" in *" $isa "*) ;; *) echo "exercise_kernels.py, $isa: not on this CPU"; continue ;; esac
    (cd "$ROOT" && FASTLSTM_ISA="$isa" vg "$dir/vg" "$PY" "$HERE/exercise_kernels.py") \
        > "$dir/exercise-$isa.txt" 2>&1
    grep -q "exercise_kernels: OK" "$dir/exercise-$isa.txt" || ok=1
    echo "exercise_kernels.py, FASTLSTM_ISA=$isa: $(tail -n 2 "$dir/exercise-$isa.txt" | tr '\n' ' ')"
  done
  "$PY" "$HERE/summarize.py" valgrind "$dir"/vg.*.xml > "$dir/summary.txt" || ok=1
  sed -n '1,12p;/^fastlstm errors/p' "$dir/summary.txt" | awk '!seen[$0]++'
  echo "(full summary: $dir/summary.txt)"
  if [ "$CANARY" = 1 ]; then
    mkdir -p "$dir/canary"
    (cd "$ROOT" && vg "$dir/canary/vg" "$PY" "$HERE/canary.py") \
        > "$dir/canary/out.txt" 2>&1
    if "$PY" "$HERE/summarize.py" valgrind "$dir"/canary/vg.*.xml > "$dir/canary/summary.txt"; then
      echo "canary: NOT reported -- the checker does not see fastlstm's kernels"; ok=1
    else
      echo "canary: reported as expected ($(grep -m1 '^  fastlstm' "$dir/canary/summary.txt" | xargs))"
    fi
  fi
  return $ok
}

# sanitized LOGDIR COMMAND...: run with libasan + libubsan preloaded, reports to LOGDIR.
# PYTHONMALLOC=malloc: ASan's malloc (redzones, quarantine) under every Python/NumPy buffer.
# Errors abort at once (halt_on_error); exitcode=0 so that LeakSanitizer's end-of-run report
# (CPython's own leaks) cannot mask pytest's verdict, which is read from its JUnit XML.
sanitized() {
  local logdir="$1"; shift
  LD_PRELOAD="$LIBASAN $LIBUBSAN" PYTHONMALLOC=malloc PYTHONDONTWRITEBYTECODE=1 \
  ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:exitcode=0:log_path=$logdir/asan" \
  LSAN_OPTIONS="exitcode=0" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logdir/ubsan" \
  "$@"
}

summarize_asan() {  # LOGDIR OUTFILE: exit status of summarize.py
  local logs=()
  for f in "$1"/asan.* "$1"/ubsan.*; do [ -e "$f" ] && logs+=("$f"); done
  if [ ${#logs[@]} -eq 0 ]; then
    printf 'AddressSanitizer/UBSan: no reports at all\nfastlstm errors: 0 (clean)\n' > "$2"
    return 0
  fi
  "$PY" "$HERE/summarize.py" asan "${logs[@]}" > "$2"
}

run_asan() {
  local dir="$OUT/asan" ok=0
  mkdir -p "$dir"
  LIBASAN="$(gcc -print-file-name=libasan.so)"
  LIBUBSAN="$(gcc -print-file-name=libubsan.so)"
  [ -e "$LIBASAN" ] && [ -e "$LIBUBSAN" ] || { echo "gcc's libasan/libubsan not found" >&2; return 1; }
  local copy="$dir/repo"
  rm -rf "$copy" && mkdir -p "$copy"
  # The checkout as it is (tracked and new files; no build products).
  (cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf -) | tar -xf - -C "$copy"
  echo "== AddressSanitizer + UBSan (gcc $(gcc -dumpfullversion)): sanitized build in $copy"
  (cd "$copy" && CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g" \
      LDFLAGS="-fsanitize=address,undefined" "$PY" setup.py build_ext --inplace) > "$dir/build.txt" 2>&1 || {
    echo "sanitized build failed: $dir/build.txt" >&2; return 1; }
  rm -rf "$dir"/asan.* "$dir"/ubsan.* "$dir"/exercise-*.txt "$dir/probe"
  mkdir -p "$dir/probe"
  local isa isas
  isas="$(paths "$copy" sanitized "$dir/probe")"
  echo "== pytest ${KERNEL_TESTS[*]} tests/test_concurrency.py tests/test_contention.py; exercise_kernels.py (kernel paths: $isas)"
  (cd "$copy" && sanitized "$dir" "$PY" -m pytest -p no:cacheprovider -o junit_family=legacy -q --junitxml="$dir/junit.xml" \
      "${KERNEL_TESTS[@]}" tests/test_concurrency.py tests/test_contention.py -k "$ASAN_K") > "$dir/pytest.txt" 2>&1
  tail -n 3 "$dir/pytest.txt"
  junit_ok "$dir/junit.xml" || ok=1
  for isa in $isas; do
    (cd "$copy" && FASTLSTM_ISA="$isa" sanitized "$dir" "$PY" tests/memcheck/exercise_kernels.py) \
        > "$dir/exercise-$isa.txt" 2>&1
    grep -q "exercise_kernels: OK" "$dir/exercise-$isa.txt" || ok=1
    echo "exercise_kernels.py, FASTLSTM_ISA=$isa: $(tail -n 2 "$dir/exercise-$isa.txt" | tr '\n' ' ')"
  done
  summarize_asan "$dir" "$dir/summary.txt" || ok=1
  sed -n '1,6p;/^fastlstm errors/p' "$dir/summary.txt" | awk '!seen[$0]++'
  echo "(full summary: $dir/summary.txt)"
  if [ "$CANARY" = 1 ]; then
    rm -rf "$dir/canary" && mkdir -p "$dir/canary"
    (cd "$copy" && sanitized "$dir/canary" "$PY" tests/memcheck/canary.py) > "$dir/canary/out.txt" 2>&1
    if summarize_asan "$dir/canary" "$dir/canary/summary.txt"; then
      echo "canary: NOT reported -- the checker does not see fastlstm's kernels"; ok=1
    else
      echo "canary: reported as expected ($(grep -h -m1 -o 'heap-buffer-overflow.*' "$dir"/canary/asan.* | head -1))"
    fi
  fi
  return $ok
}

date -u +"date: %Y-%m-%d %H:%M:%S UTC"
if [ "$MODE" = asan ] || [ "$MODE" = all ]; then run_asan || status=1; fi
if [ "$MODE" = valgrind ] || [ "$MODE" = all ]; then run_valgrind || status=1; fi
echo
if [ $status = 0 ]; then echo "memcheck ($MODE): CLEAN"; else echo "memcheck ($MODE): FAILED (see $OUT)"; fi
exit $status
