"""Read valgrind memcheck XML files (or AddressSanitizer logs) and say whether fastlstm's own
code is clean.

An error is fastlstm's when any frame of any of its stacks (where it happened, and for an
uninitialised value where that value was created) is in fastlstm's extension modules
(fastlstm/_rnn, _generate, _matmul, _forecast, _packed) or their sources (src_pyx/: the .pyx,
.pxd and .pxi files and every header: kernels.h, matmul.h, tile_i8.h, gates.h,
gru_reset_before.h, team.h, isa.h).
That includes OpenBLAS, libgomp or libc called from our kernels.  Errors elsewhere are listed,
not counted against fastlstm, in these categories:

* cpython-zero-int: CPython 3.11's maybe_small_long() computes `Py_SIZE(v) * v->ob_digit[0]`
  for a freshly allocated int whose size is 0, reading a digit it never wrote; memcheck then
  treats the resulting (correct) pointer to the small int 0 as undefined wherever it flows.
  Recognised by the value's origin (allocated in _PyLong_New) or a maybe_small_long frame.
  Fixed in CPython 3.12 (medium_value no longer reads ob_digit[0] for size 0).
* other: anything else outside fastlstm (torch, numpy, CPython at exit ...), listed in full.

Usage:  summarize.py valgrind FILE.xml...  |  summarize.py asan LOGFILE...
Exit status: 0 when no error (and no definite leak) is fastlstm's, 1 otherwise.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter

# The extension modules (setup.py) and the files they are built from.  valgrind names a
# frame's file without its directory, ASan with it.
MODULES = ("_rnn", "_generate", "_matmul", "_forecast", "_packed")
HEADERS = ("gates", "matmul", "tile_i8", "gru_reset_before", "team", "isa", "kernels")
OURS_OBJ = re.compile(rf"fastlstm/({'|'.join(MODULES)})\.cpython")
OURS_FILE = re.compile(rf"(^|/)({'|'.join(MODULES)})\.(c|pyx)$|\.pxd$|\.pxi$"
                       rf"|(^|/)({'|'.join(HEADERS)})\.h$")
LEAK_KINDS = {"Leak_DefinitelyLost", "Leak_IndirectlyLost", "Leak_PossiblyLost",
              "Leak_StillReachable"}


def frame_text(f: ET.Element) -> str:
    fn = f.findtext("fn") or "???"
    file, line = f.findtext("file"), f.findtext("line")
    where = f"{file}:{line}" if file else (f.findtext("obj") or "?")
    return f"{fn} ({where})"


def is_ours(frame: ET.Element) -> bool:
    return bool(OURS_OBJ.search(frame.findtext("obj") or "")
                or OURS_FILE.search(frame.findtext("file") or ""))


def classify_valgrind(error: ET.Element) -> str:
    kind = error.findtext("kind")
    stacks = error.findall("stack")
    frames = [f for s in stacks for f in s.findall("frame")]
    fns = [f.findtext("fn") or "" for f in frames]
    if kind in ("UninitValue", "UninitCondition") and len(stacks) > 1:
        origin = [f.findtext("fn") or "" for f in stacks[1].findall("frame")]
        if "_PyLong_New" in origin:
            return "cpython-zero-int"
    if kind in ("UninitValue", "UninitCondition") and "maybe_small_long" in fns:
        return "cpython-zero-int"
    if any(is_ours(f) for f in frames):
        return "fastlstm"
    return "other"


def describe(error: ET.Element, depth: int = 12) -> str:
    what = error.findtext("what") or error.findtext("xwhat/text") or error.findtext("kind")
    lines = [f"  {what}"]
    for i, stack in enumerate(error.findall("stack")):
        if i:
            aux = error.findall("auxwhat")
            lines.append(f"   {aux[i - 1].text if len(aux) >= i else 'origin'}:")
        for f in stack.findall("frame")[:depth]:
            lines.append(f"    {'*' if is_ours(f) else ' '} {frame_text(f)}")
    return "\n".join(lines)


def read_valgrind_xml(path: str) -> tuple[list[ET.Element], dict[str, int], int, int]:
    """(errors, occurrences by unique id, suppressed count, documents) of one --xml-file.

    A process that forks (subprocess, before its exec) leaves valgrind writing the child's
    preamble into the parent's open XML file, so one file can hold several <?xml ...?>
    documents, interleaved, some never closed.  Children that only exec write no errors; the
    errors and the final <errorcounts> of the parent are spread over the documents.  So every
    complete <error> and <errorcounts> element in the file is read, wherever it sits."""
    text = open(path, errors="replace").read()
    errors = [ET.fromstring(m.group(0)) for m in re.finditer(r"<error>.*?</error>", text, re.S)]
    occurrences: dict[str, int] = {}
    for m in re.finditer(r"<errorcounts>.*?</errorcounts>", text, re.S):
        for pair in ET.fromstring(m.group(0)).findall("pair"):
            occurrences[pair.findtext("unique")] = int(pair.findtext("count"))
    suppressed = 0
    for m in re.finditer(r"<suppcounts>.*?</suppcounts>", text, re.S):
        suppressed += sum(int(p.findtext("count")) for p in ET.fromstring(m.group(0)).findall("pair"))
    return errors, occurrences, suppressed, text.count("<?xml")


def summarize_valgrind(paths: list[str]) -> int:
    counts: Counter = Counter()      # category -> occurrences
    contexts: Counter = Counter()    # category -> distinct contexts
    shown: dict[str, list[str]] = {"fastlstm": [], "other": []}
    suppressed = 0
    leaks = Counter()
    for path in paths:
        errors, occurrences, supp, _ = read_valgrind_xml(path)
        suppressed += supp
        for error in errors:
            kind = error.findtext("kind")
            category = classify_valgrind(error)
            if kind in LEAK_KINDS:
                leaks[(category, kind)] += int(error.findtext("xwhat/leakedbytes") or 0)
                if kind != "Leak_DefinitelyLost":
                    continue
            n = occurrences.get(error.findtext("unique"), 1)
            counts[category] += n
            contexts[category] += 1
            if category in shown:
                shown[category].append(f"[{kind}, x{n}, {path}]\n{describe(error)}")
    ours = counts["fastlstm"]
    print(f"valgrind memcheck, {len(paths)} XML file(s):")
    for category in ("fastlstm", "cpython-zero-int", "other"):
        print(f"  {category:18s} {counts[category]:6d} errors from {contexts[category]} contexts")
    print(f"  suppressed (tests/memcheck/valgrind.supp): {suppressed}")
    for (category, kind), nbytes in sorted(leaks.items()):
        print(f"  leak {kind:22s} {category:10s} {nbytes} bytes")
    for category in ("fastlstm", "other"):
        if shown[category]:
            print(f"\n--- {category} errors ---")
            print("\n\n".join(shown[category]))
    print(f"\nfastlstm errors: {ours}" + (" (clean)" if ours == 0 else " (NOT CLEAN)"))
    return 1 if ours else 0


# ------------------------------------------------------------------------------ ASan

ASAN_ERROR = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)")
ASAN_FRAME = re.compile(r"^\s*#\d+ 0x[0-9a-f]+ in (\S+) (\S+)")


def summarize_asan(paths: list[str]) -> int:
    ours_reports, other_reports = [], []
    leaks = Counter()
    for path in paths:
        text = open(path, errors="replace").read()
        # UBSan's runtime errors are one line each ("file:line:col: runtime error: ...").
        for line in text.splitlines():
            if "runtime error:" in line:
                (ours_reports if OURS_FILE.search(line.split(":")[0]) or "src_pyx" in line
                 else other_reports).append(f"[{path}] {line}")
        for block in re.split(r"\n(?=Direct leak|Indirect leak|=+\n==\d+==ERROR)", text):
            frames = [m.groups() for m in map(ASAN_FRAME.match, block.splitlines()) if m]
            ours = any(OURS_OBJ.search(w) or OURS_FILE.search(w.split(":")[0]) or "src_pyx" in w
                       for _, w in frames)
            head = block.strip().splitlines()[0] if block.strip() else ""
            if head.startswith(("Direct leak", "Indirect leak")):
                nbytes = int(re.match(r"\w+ leak of (\d+)", head).group(1))
                leaks[("fastlstm" if ours else "other", head.split()[0])] += nbytes
                if ours and head.startswith("Direct"):
                    ours_reports.append(f"[{path}]\n{block.strip()}")
            elif ASAN_ERROR.search(block) and "LeakSanitizer" not in block:
                (ours_reports if ours else other_reports).append(f"[{path}]\n{block.strip()}")
    print(f"AddressSanitizer/UBSan, {len(paths)} log file(s):")
    print(f"  fastlstm errors: {len(ours_reports)}")
    print(f"  errors outside fastlstm: {len(other_reports)}")
    for (category, kind), nbytes in sorted(leaks.items()):
        print(f"  {kind} leaks, {category}: {nbytes} bytes")
    for title, reports in (("fastlstm", ours_reports), ("other", other_reports)):
        if reports:
            print(f"\n--- {title} ---")
            print("\n\n".join(reports))
    print(f"\nfastlstm errors: {len(ours_reports)}"
          + (" (clean)" if not ours_reports else " (NOT CLEAN)"))
    return 1 if ours_reports else 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("valgrind", "asan"):
        print(__doc__)
        return 2
    return summarize_valgrind(argv[1:]) if argv[0] == "valgrind" else summarize_asan(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
