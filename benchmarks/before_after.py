"""A benchmark before and after a change, in one invocation: the same script from a git ref and from
this working tree, in turns, so the machine's load falls on both alike.

    python benchmarks/before_after.py --ref 752c35f --rounds 3 --metric '^end-to-end\\s+([0-9.]+)' \\
        -- benchmarks/apply_speed.py --skip-rss
    python benchmarks/before_after.py --ref 752c35f --lower-is-better \\
        --metric 'ours default \\(\\w+\\)\\s+([0-9.]+)' -- benchmarks/train_speed.py --quick --steps 4

The ref is checked out into a temporary git worktree; each round runs its copy of the script, then
this tree's (the order alternating by round), each with its own tree first on PYTHONPATH. --metric
is a regular expression whose first group is the figure, read from each run's output (the first
match). Printed: each round's pair, the median of the per-round ratios after / before, and whether
it is within --tolerance (default 3%).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_description

ROOT = Path(__file__).resolve().parents[1]


def run(tree: Path, script_args: list, pattern: re.Pattern) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, str(tree / script_args[0]), *script_args[1:]], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(script_args)} failed:\n{done.stderr[-3000:]}")
    for line in done.stdout.splitlines():
        found = pattern.search(line)
        if found:
            return float(found.group(1))
    raise SystemExit(f"{tree}: no line of the output matches {pattern.pattern!r}:\n{done.stdout[-3000:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="the git ref to compare against (before)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--metric", required=True, help="regex; its first group is the figure")
    parser.add_argument("--lower-is-better", action="store_true", help="the figure is a time, not a rate")
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS]: a path relative to the repo")
    args = parser.parse_args()
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    pattern = re.compile(args.metric)
    print(f"CPU: {cpu_description()}")
    with tempfile.TemporaryDirectory() as tmp:
        before_tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before_tree), args.ref],
                       check=True, capture_output=True)
        try:
            pairs = []
            for n in range(args.rounds):
                order = [("before", before_tree), ("after", ROOT)][:: 1 if n % 2 == 0 else -1]
                figures = {label: run(tree, script, pattern) for label, tree in order}
                pairs.append((figures["before"], figures["after"]))
                print(f"round {n + 1}: before {figures['before']:.4g}, after {figures['after']:.4g}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_tree)],
                           capture_output=True)
    ratio = statistics.median(after / before for before, after in pairs)
    better = (ratio <= 1) if args.lower_is_better else (ratio >= 1)
    change = abs(ratio - 1)
    verdict = "within" if change <= args.tolerance else ("better, beyond" if better else "WORSE, beyond")
    print(f"{' '.join(script)}: after / before = {ratio:.3f} (median of {args.rounds} rounds; "
          f"{'lower' if args.lower_is_better else 'higher'} is better): {verdict} {args.tolerance:.0%}")


if __name__ == "__main__":
    main()
