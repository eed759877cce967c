#!/usr/bin/env bash
# Rebuilds the built-in demo models (vidcycle/builtin_models/demo-*.safetensors) as samples/README.md
# describes: a CycleGAN teacher from recipes/demo-teacher.toml (about an hour on 2 CPU cores), then one
# student per direction: winter -> summer with vidcycle distill's default recipe (about 6 minutes),
# summer -> winter with recipes/demo-student-s2w.toml, the default for 4000 iterations with the stability
# term at 7.5 (about 8 minutes), the one of three tried that kept the teacher's bare trees without more
# flicker (benchmarks/README.md).
# Arguments are passed to both `vidcycle train` and `vidcycle distill`, e.g. --device cuda, or
# --set schedule.iterations=2 --set schedule.iterations_decay=2 for a quick trial of the chain.
# Run from a clone, with vidcycle installed; work goes under runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
work=runs/demo
export VIDCYCLE_HOME=$work/home
python samples/make_samples.py --out $work/data --photos 400 --seed 1000 --size 320x180
vidcycle train --x $work/data/summer --y $work/data/winter --recipe recipes/demo-teacher.toml \
    --name demo-teacher --out $work/teacher "$@"
vidcycle distill demo-teacher --data $work/data/summer --name summer2winter --out $work/summer2winter \
    --recipe recipes/demo-student-s2w.toml "$@"
vidcycle distill demo-teacher-reverse --data $work/data/winter --name winter2summer --out $work/winter2summer "$@"
cp $work/home/models/summer2winter.safetensors vidcycle/builtin_models/demo-summer2winter.safetensors
cp $work/home/models/winter2summer.safetensors vidcycle/builtin_models/demo-winter2summer.safetensors
# the headers' source named this machine's run folders: name the teacher and the rebuild instead
python - <<'PY'
from dataclasses import replace
from vidcycle.models.modelfile import load_model_file, save_model
for direction in ("summer2winter", "winter2summer"):
    path = f"vidcycle/builtin_models/demo-{direction}.safetensors"
    net, info = load_model_file(path)
    save_model(path, net, replace(info, source=f"distilled from {info.teacher['name']} by vidcycle distill "
                                               "(samples/README.md)"))
PY
