import re
from pathlib import Path

from setuptools import find_packages, setup

# the version is written once, in vidcycle/version.py
VERSION = re.search(r'__version__ = "([^"]+)"', Path("vidcycle/version.py").read_text(encoding="utf-8")).group(1)

setup(
    name="vidcycle",
    version=VERSION,
    description="Train CycleGAN generator pairs on unpaired footage and apply them to whole videos and photo folders",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["vidcycle", "vidcycle.*"]),
    package_data={"vidcycle": ["builtin_models/*.safetensors", "recipes/*.toml", "runtime/*.c"]},
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "av>=12",
        "opencv-python-headless>=4.12",  # imdecodeWithMetadata / imencodeWithMetadata
        "numpy>=1.24",
        "click>=8.1",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "pillow>=9",  # image headers read without decoding (OpenCV has no such call); torchvision needs it too
        # float32 on CPUs without native bf16 (most laptops) runs 1.16-1.42x faster in ONNX Runtime
        # (benchmarks/engine_speed.py); onnx writes the checked graph it runs
        "onnxruntime>=1.17",
        "onnx>=1.15",
        # KID and FID on the Inception-v3 port published FID figures use, and their estimators: not ours
        # to rewrite (needs only torch, torchvision, numpy, pillow, tqdm)
        "torch-fidelity>=0.4",
    ],
    extras_require={
        # playwright drives the browser tests of `vidcycle serve` (Debian's chromium, launched by path)
        "test": ["pytest>=7", "playwright>=1.40"],
        # `vidcycle serve`: Gradio (uploads, image slider, video player, tables, timers; FastAPI underneath).
        # 6.16.0 is the first release past every file-access advisory we found: GHSA-j36p-7w88-g82j
        # (FileExplorer path traversal, fixed 6.16.0), CVE-2026-28414 (/static/ absolute paths on Windows,
        # fixed 6.7.0); the 5.x line is inside both ranges. Checked with 6.31.0.
        "web": ["gradio>=6.16,<7"],
        "tensorboard": ["tensorboard"],
        # onnxscript only for export_onnx(exporter="dynamo"); the default exporter needs neither it nor a GPU
        "dynamo": ["onnxscript"],
    },
    entry_points={"console_scripts": ["vidcycle=vidcycle.cli:entry_point"]},
)
