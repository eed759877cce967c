#!/usr/bin/env bash
# Remake the files in this folder with vidcycle 0.1.0 as it was before the restructuring (70f14e0):
#   bash tests/data/release-0.1.0/make.sh        (from the repository root, with vidcycle's dependencies)
# They stand for what users of that release have on disk, so they must come from that release's code.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
here="$root/tests/data/release-0.1.0"
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach "$work/old" 70f14e0 >/dev/null
export VIDCYCLE_HOME="$work/home"
old() { (cd "$work/old" && PYTHONPATH="$work/old" python -m vidcycle "$@" > /dev/null); }
old train --x "$root/samples/summer_clip.mp4" --y "$root/samples/winter_clip.mp4" --recipe tiny \
    --set model.ngf=4 --set model.ndf=4 --set optim.pool_size=2 --set schedule.checkpoint_every=4 \
    --max-steps 4 --name summer2winter --out "$work/run" --workers 0 --precision fp32 --no-export
old models export "$work/run" --name summer2winter
old distill summer2winter --data "$root/samples/summer_clip.mp4" --recipe distill-tiny --set student.ngf=2 \
    --set schedule.checkpoint_every=3 --name student --max-steps 3 --out "$work/distill-run" --workers 0 \
    --precision fp32 --no-export
for run in run distill-run; do
    mkdir -p "$here/$run"
    cp "$work/$run"/{checkpoint.pt,run.json,recipe.toml} "$here/$run/"
done
cp "$VIDCYCLE_HOME/models/summer2winter.safetensors" "$here/"
