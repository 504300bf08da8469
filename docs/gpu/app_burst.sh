# The whole app on one H200 under bursty load: static fp16, static fp8 and adaptive, same load.
# usage: bash docs/gpu/app_burst.sh OUTDIR  (after sourcing docs/gpu/setup_box.sh)
set -u
out=${1:?outdir}
python3 -c "from deployments.tiny_model import dummy_weights_model_dir as d; d('/root/models/llama-3.1-8b', '/root/m8b')"
export NESTEDFP_MODEL_PATH=/root/m8b NESTEDFP_MODEL_ID=llama-8b-dummy NESTEDFP_REPLICAS=1 \
  NESTEDFP_GPUS_PER_REPLICA=1 NESTEDFP_CPUS_PER_REPLICA=1 NESTEDFP_ADMIN_TOKEN=bench \
  NESTEDFP_MAX_ONGOING_REQUESTS=512 NESTEDFP_MAX_QUEUED_REQUESTS=4096 \
  NESTEDFP_ENGINE_KWARGS='{"load_format": "dummy", "max_model_len": 4096, "gpu_memory_utilization": 0.85, "max_num_seqs": 256}' \
  NESTEDFP_POLICY__NAME=slo NESTEDFP_POLICY__PARAMS='{"ttft_s": 2.0, "tpot_s": 0.05}'
setsid serve run app:main > $out/serve.log 2>&1 < /dev/null &
for i in $(seq 1 60); do curl -sf localhost:8000/v1/models >/dev/null && break; sleep 5; done
curl -s localhost:8000/v1/models | head -c 300; echo
