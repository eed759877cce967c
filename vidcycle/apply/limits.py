"""The numbers apply's options default to and are bounded by, written once: the library's options, its
checks and the command line's --help read them here, where nothing heavy loads (no PyAV, OpenCV or
torch), so `vidcycle apply --help` stays instant."""

# Inputs whose header declares more pixels per frame are refused before decoding: far above any camera
# (a 100 MP panorama, an 8K frame at 33 MP), far below the 23 GB a 1 MB 30000x30000 PNG would take.
DEFAULT_MAX_PIXELS = 500_000_000

# Flicker reduction (apply.temporal) is off unless asked for; a bare `--temporal` means this strength.
# 0.6: the weakest strength tried that removed over half of a moving object's flicker; it also moved a
# stand-in's output closer to its flicker-free truth than 0.5 did: not trading truth for stillness.
# Measured: benchmarks/README.md, "Temporal strength".
RECOMMENDED_TEMPORAL_STRENGTH = 0.6
MAX_TEMPORAL_STRENGTH = 0.95  # 1 would never let a new frame in
