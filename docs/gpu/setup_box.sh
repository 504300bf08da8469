# Source on the H200 box after the staged wheel chunks are in /root/wheels (see docs/BENCHMARKS.md).
# Installs vLLM 0.25 + Ray Serve + Locust into /root/site and makes this checkout's vLLM plugins
# visible (entry points via a minimal dist-info: the box has no network for a pip install).
source .gpu/c7/install.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site .whl/*.whl
export PYTHONPATH=/root/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PATH=/root/site/bin:$PATH
d=/root/site/nestedfp_serve-0.1.0.dist-info
mkdir -p $d
printf 'Metadata-Version: 2.1\nName: nestedfp-serve\nVersion: 0.1.0\n' > $d/METADATA
printf '[vllm.general_plugins]\nnestedfp = kernels.vllm_plugin:register\n\n[vllm.stat_logger_plugins]\nnestedfp_policy_signals = deployments.engine_stats:PolicySignalsStatLogger\n' > $d/entry_points.txt
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
