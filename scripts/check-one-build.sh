#!/usr/bin/env bash
# The README's two commands share one build: `cargo run --release -p migserve` (the main job)
# and `cargo test --release` (the tests) must compile every crate they have in common with the
# same features, or the tests rebuild candle and most of the main job's dependencies. Cargo
# unifies the features of the dev-dependencies only in the test build: this compares, for
# each package (and version) of the main job's build, the features the two builds turn on,
# and names any that differ (the fix: ask for those features in the main build's Cargo.toml).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tree() { cargo tree --locked --prefix none --format '{p}|{f}' "$@" | sed 's/ (\*)$//; s/ (proc-macro)$//'; }
main="$(tree -p migserve -e normal,build)"
tests="$(tree -e all)"
python3 - "$main" "$tests" <<'PY'
import sys
def features(text):
    out = {}
    for line in text.splitlines():
        if "|" in line:
            package, feats = line.split("|", 1)
            out.setdefault(package.strip(), set()).update(f for f in feats.split(",") if f)
    return out
main, tests = features(sys.argv[1]), features(sys.argv[2])
differ = [(p, sorted(tests.get(p, set()) - f)) for p, f in sorted(main.items()) if tests.get(p, set()) - f]
for package, extra in differ:
    print(f"check-one-build: the test build turns on {extra} of {package}, the main job's build does not")
if differ:
    sys.exit(1)
print(f"check-one-build: the tests reuse the main job's {len(main)} packages as built")
PY
