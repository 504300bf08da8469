#!/usr/bin/env bash
# Re-split the staged wheel chunks (.gpu/c0 .. the one before the last, from ../shared/gpu/stage-wheels.sh)
# into pieces small enough for one device `run` carry next to this checkout: the carry limit (64 MiB)
# counts the working tree too, and docs/benchmarks has grown past what a 57 MiB chunk leaves room for.
# Output: .gpu-small/s0, s1, ... one piece each, named part.NN.K so that `cat part.*` on the box (the
# last chunk's install.sh) still joins everything in order. The last chunk (install.sh) travels whole.
#   usage: bash docs/gpu/rechunk.sh [MB]     (default 30), then per piece I:
#   run(carry=[".gpu-small/sI"], command="mkdir -p /root/wheels && cp .gpu-small/sI/part.* /root/wheels/")
set -euo pipefail
mb=${1:-30}
out=.gpu-small
last=$(ls -d .gpu/c* | sort -V | tail -1)
rm -rf "$out"
i=0
for f in $(ls .gpu/c*/part.* | sort); do
  [ "$(dirname "$f")" = "$last" ] && continue
  tmp=$(mktemp -d)
  split -b "${mb}000000" -d -a 1 "$f" "$tmp/$(basename "$f")."
  for p in $(ls "$tmp"/* | sort); do
    mkdir -p "$out/s$i" && mv "$p" "$out/s$i/" && i=$((i + 1))
  done
  rmdir "$tmp"
done
echo "$i pieces under $out (s0 .. s$((i - 1))); $last travels whole"
