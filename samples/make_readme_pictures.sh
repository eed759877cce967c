#!/usr/bin/env bash
# README's before/after pictures (samples/readme/*.jpg), made with vidcycle itself from the shipped
# samples and the built-in demo model. Run from the repository root with vidcycle installed.
set -euo pipefail
cd "$(dirname "$0")/.."
frames=$(mktemp -d)
trap 'rm -rf "$frames"' EXIT
vidcycle extract samples/summer_clip.mp4 -o "$frames" --fps 0.5
vidcycle apply "$frames/summer_clip_000048.png" -m demo-summer2winter --side-by-side \
    -o samples/readme/clip-frame.jpg --overwrite
vidcycle apply samples/photos/summer_1.jpg -m demo-summer2winter --side-by-side -o samples/readme/photo.jpg --overwrite
