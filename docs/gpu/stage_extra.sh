#!/usr/bin/env bash
# Stage what the H200 box needs on top of ../shared/gpu/stage-wheels.sh --serve:
#   - Ray 2.57.1: the Ray release whose Serve LLM imports vLLM 0.25.0's module layout (the
#     staged Ray 2.60 targets vLLM >= 0.27 and fails at import); replaces Ray 2.60 on the box;
#   - matplotlib and its pure dependencies (loadtests' timeline.png), jsonref (ray.serve.llm).
# Output: .gpu-extra/e0 and .gpu-extra/e1, each small enough for one `run` carry next to a chunk.
#   usage: bash docs/gpu/stage_extra.sh      (from the repo root, on a machine with PyPI access)
set -euo pipefail
out=.gpu-extra
rm -rf "$out"; mkdir -p "$out/e0" "$out/e1/wheels" "$out/tmp"
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform any -d "$1" "${@:2}" 2>&1 | grep -v '^WARNING' || true; }
dl "$out/tmp" ray==2.57.1
dl "$out/e1/wheels" jsonref==1.1.0 matplotlib==3.11.2 contourpy==1.4.0 cycler==0.12.1 fonttools==4.68.0 \
  kiwisolver==1.5.1 pyparsing==3.3.3 python-dateutil==2.9.0.post0 six==1.17.0 pillow==13.0.0
whl=$(ls "$out"/tmp/ray-2.57.1-*.whl)
basename "$whl" > "$out/e1/ray.name"
split -b 50000000 -d -a 1 "$whl" "$out/tmp/ray.part."
mv "$out/tmp/ray.part.0" "$out/e0/"; mv "$out/tmp/ray.part.1" "$out/e1/"
rm -rf "$out/tmp"
du -sh "$out"/e0 "$out"/e1
