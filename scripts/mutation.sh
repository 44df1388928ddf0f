#!/usr/bin/env bash
# Mutation testing of the core with mutmut 3 (`pip install -e ".[dev]"`). Not run in CI: a whole area is a couple of
# thousand mutants, hours on a 2-core machine, so sample it with --only / --names (see docs/development.md).
#
#   scripts/mutation.sh analyses                 # one area: analyses, features, search or lab
#   scripts/mutation.sh lab --only 'ssl_core/lab/findings.py,ssl_core/lab/cka.py'    # some of its modules (globs)
#   scripts/mutation.sh features --only 'ssl_core/features/encoder.py' \
#       --names 'ssl_core.features.encoder.xǁPatchFeaturesǁ*'                          # some mutants (name globs)
#   scripts/mutation.sh lab --tests 'tests/test_lab_findings.py'   # other test files than the table below
#   scripts/mutation.sh analyses --again         # re-test only the mutants that were not killed, with the new
#                                                # sources and tests (the files and test files of the first run)
#   scripts/mutation.sh lab --score              # print the score of the last run again
#
# Each area runs in its own folder mutants/AREA/ (git-ignored): a copy of ssl_core/, app/, tests/ and a
# pyproject.toml whose [tool.mutmut] is the repository's plus the area's `only_mutate` files and test files below.
# mutmut copies that again into mutants/AREA/mutants/, mutates the chosen functions there, records which tests
# reach each function, and runs only those tests against each mutant (stopping at the first failure). Afterwards:
#   cd mutants/AREA && mutmut show NAME          # the diff of one mutant
#   cd mutants/AREA && mutmut browse             # all of them, interactively
# The score, (killed + timeout) / tested, is printed per module and kept in mutants/AREA/score.json; the mutants
# not killed are listed in mutants/AREA/survivors.txt. "no tests" mutants (in functions that no selected test
# reaches) count as not killed; mutants left unchecked (outside --names) are not counted.
#
# Environment: PY (interpreter with mutmut and the project's dependencies; default python3), JOBS (mutants run in
# parallel; default 2).
set -euo pipefail
{ # the whole script is read before it runs, so editing it during a (long) run does not disturb that run
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-python3}
JOBS=${JOBS:-2}

# The test files that cover each area. Only fast ones (seconds, small random-weight models, no browser), so that
# each mutant's tests finish quickly; the encoder test's full-size models (seconds each) are deselected.
# tests/test_architecture.py is left out everywhere: it reads the source files, which mutmut rewrites.
SLOW_ENCODER_CASES="dinov3-vith16plus siglip2-so400m14 siglip2-so400m14-378 dinov3-vitl16 aimv2-vitl14 pe-core-l14"
declare -A TESTS=(
  [analyses]="tests/test_analyses.py tests/test_dense.py tests/test_families.py tests/test_umap_cka.py
              tests/test_lab_findings.py tests/test_reconstruct.py tests/test_core_references.py
              tests/test_positions.py tests/test_lab.py"
  [features]="tests/test_encoder.py tests/test_families.py tests/test_pipeline.py tests/test_dense.py
              tests/test_analyses.py tests/test_cli.py tests/test_umap_cka.py tests/test_core_references.py
              $(for c in $SLOW_ENCODER_CASES; do
                  printf -- ' --deselect=tests/test_encoder.py::test_grid_shapes_for_odd_sized_images[%s]' "$c"; done)"
  [search]="tests/test_index.py tests/test_index_durability.py tests/test_index_cli.py tests/test_core_references.py"
  [lab]="tests/test_lab_findings.py tests/test_lab.py tests/test_core_references.py"
)

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

AREA=${1:-}
[ -n "$AREA" ] || usage 2
case $AREA in -h|--help) usage 0 ;; esac
[ -n "${TESTS[$AREA]+x}" ] || { echo "unknown area '$AREA' (analyses, features, search, lab)" >&2; exit 2; }
shift
MODE=fresh
ONLY=("ssl_core/$AREA/*")
NAMES=()
while [ $# -gt 0 ]; do
  case $1 in
    --again) MODE=again ;;
    --score) MODE=score ;;
    --only) shift; IFS=',' read -ra ONLY <<< "$1" ;;
    --names) shift; IFS=',' read -ra NAMES <<< "$1" ;;
    --tests) shift; TESTS[$AREA]=$1 ;;
    *) echo "unknown option $1" >&2; usage 2 ;;
  esac
  shift
done

WORK=$ROOT/mutants/$AREA

score() {
  "$PY" - "$WORK" "$AREA" <<'PYTHON'
import collections, json, sys
from pathlib import Path
from mutmut.stats import status_by_exit_code
work, area = Path(sys.argv[1]), sys.argv[2]
by_file, survivors = {}, []
for meta in sorted((work / "mutants/ssl_core").rglob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    counts = collections.Counter(status_by_exit_code[c] for c in codes.values() if c is not None)
    if counts:
        by_file[str(meta.relative_to(work / "mutants"))[:-5]] = dict(counts)
    survivors += [f"{name}: {status_by_exit_code[c]}" for name, c in codes.items()
                  if c is not None and status_by_exit_code[c] in ("survived", "no tests", "suspicious")]
total = collections.Counter()
for counts in by_file.values():
    total.update(counts)
tested = sum(total.values()) - total["skipped"]
caught = total["killed"] + total["timeout"] + total["caught by type check"]
for path, counts in by_file.items():
    print(f"  {path:36s} {sum(counts.values()):5d} tested {counts.get('killed', 0) + counts.get('timeout', 0):5d} "
          f"killed {counts.get('survived', 0):4d} survived {counts.get('no tests', 0):4d} no tests")
summary = dict(area=area, tested=tested, killed=total["killed"], timeout=total["timeout"],
               survived=total["survived"], no_tests=total["no tests"], suspicious=total["suspicious"],
               score=round(caught / tested, 4) if tested else None, files=by_file)
(work / "score.json").write_text(json.dumps(summary, indent=2) + "\n")
(work / "survivors.txt").write_text("".join(line + "\n" for line in survivors))
print(f"{area}: {tested} mutants tested, {caught} killed (timeouts included), {total['survived']} survived, "
      f"{total['no tests']} reached by no selected test, {total['suspicious']} suspicious; "
      + (f"score {100 * caught / tested:.1f}%" if tested else "nothing tested"))
print(f"not killed: {work / 'survivors.txt'}")
PYTHON
}

if [ "$MODE" = score ]; then score; exit 0; fi

# Lay the area's copy (fresh: from scratch; again: refresh sources and tests, keep mutmut's results).
[ "$MODE" = fresh ] && rm -rf "$WORK"
mkdir -p "$WORK"
"$PY" - "$ROOT" "$WORK" "$MODE" "${TESTS[$AREA]}" "${ONLY[@]}" <<'PYTHON'
import json, shutil, sys, tomllib
from pathlib import Path
root, work, mode, tests, only = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5:]
ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
for name in ("ssl_core", "app", "tests"):
    shutil.copytree(root / name, work / name, ignore=ignore, dirs_exist_ok=True)
for name in ("assets", "docs"):
    if not (work / name).exists():
        (work / name).symlink_to(root / name)
text = (root / "pyproject.toml").read_text()
settings = tomllib.loads(text)["tool"]["mutmut"]
settings.update(only_mutate=only, pytest_add_cli_args_test_selection=tests)
head, _, tail = text.partition("[tool.mutmut]")
tail = tail[tail.find("\n[", 1):] if "\n[" in tail else ""
body = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
new = f"{head}[tool.mutmut]\n{body}{tail}"
target = work / "pyproject.toml"
if not target.exists() or mode == "fresh":  # --again keeps the run's own files and tests (a change resets mutmut)
    target.write_text(new)
PYTHON

cd "$WORK"
if [ "$MODE" = again ] && [ -f survivors.txt ]; then
  mapfile -t names < <(sed -n 's/^\([^:]*\): .*$/\1/p' survivors.txt)
  echo "re-testing the ${#names[@]} mutants that were not killed"
  rm -f mutants/mutmut-stats.json  # rebuild which tests reach which function: tests may have changed, not only grown
  [ ${#names[@]} -eq 0 ] || "$PY" -m mutmut run --max-children "$JOBS" "${names[@]}" > mutmut.log 2>&1
else
  "$PY" -m mutmut run --max-children "$JOBS" ${NAMES[@]+"${NAMES[@]}"} > mutmut.log 2>&1
fi || { tail -n 40 mutmut.log; exit 1; }
cd "$ROOT"
score
exit
}
