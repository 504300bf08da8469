# Source on the H200 box once /root/wheels holds chunks c0..c6 of `stage-wheels.sh .gpu --serve`
# and /root/stage holds .gpu/c7, .gpu-extra/e0 and .gpu-extra/e1 (docs/BENCHMARKS.md, "Staging").
# (Where the checkout plus one chunk exceeds the 64 MiB carry limit, `bash docs/gpu/rechunk.sh` makes
# 30 MB pieces .gpu-small/s0..s13 to copy into /root/wheels instead of c0..c6.)
# Installs vLLM 0.25 + Ray Serve + Locust into /root/site, swaps Ray 2.60 for 2.57.1 (the Serve LLM
# release for vLLM 0.25), puts matplotlib on the path, and makes this checkout's vLLM plugins
# visible (entry points via a minimal dist-info: the box has no network for a pip install).
source /root/stage/c7/install.sh
if [ ! -f /root/site/ray-2.57.1.dist-info/METADATA ]; then
  rm -rf /root/site/ray /root/site/ray-2.60.0.dist-info
  whl=/root/stage/$(cat /root/stage/e1/ray.name)
  cat /root/stage/e0/ray.part.0 /root/stage/e1/ray.part.1 > "$whl"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site "$whl"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site /root/stage/e1/wheels/jsonref-*.whl
  # matplotlib and friends go last on the path, so the box's own packages (pillow, six...) win.
  python3 -m pip install -q --no-index --no-deps --no-compile --target /root/plot /root/stage/e1/wheels/*.whl
fi
export PYTHONPATH=/root/site:$PWD:/root/plot VLLM_USE_FLASHINFER_SAMPLER=0 PATH=/root/site/bin:$PATH
d=/root/site/nestedfp_serve-0.1.0.dist-info
mkdir -p $d
printf 'Metadata-Version: 2.1\nName: nestedfp-serve\nVersion: 0.1.0\n' > $d/METADATA
printf '[vllm.general_plugins]\nnestedfp = kernels.vllm_plugin:register\n\n[vllm.stat_logger_plugins]\nnestedfp_policy_signals = deployments.engine_stats:PolicySignalsStatLogger\n' > $d/entry_points.txt
python3 -c "import ray, vllm; print('ray', ray.__version__, 'vllm', vllm.__version__)"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
