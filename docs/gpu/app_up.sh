# Start the whole app on the H200 box (Llama-3.1-8B shapes, dummy weights; one replica per GPU with
# NESTEDFP_REPLICAS=N on an N-GPU box, or NESTEDFP_GPUS_PER_REPLICA=G for tensor-parallel replicas) unless it already answers,
# then smoke-test it. Source after docs/gpu/setup_box.sh:  source docs/gpu/app_up.sh OUTDIR
# NESTEDFP_STEP_TOKENS sets vLLM's step budget (max_num_batched_tokens, the prefill chunk). Default 1792: the
# fp16 steps of a prefill burst then take a median 48 ms under fp16_load, inside the 50-ms TPOT SLO, against 52 ms
# at 2048 (`python -m loadtests.step_cost` prints them as full steps; docs/BENCHMARKS.md, "A 1792-token step budget").
# Prefix caching is off: the dummy model's word-level tokenizer maps load-test prompts to repeated
# unknown tokens, so cached prefixes would make prefill free. Policy and SLO targets come from NESTEDFP_POLICY__* if set (defaults below).
# Every engine step is logged to OUTDIR/steps.jsonl (NESTEDFP_STEP_LOG) to find stalls afterwards.
out=${1:?outdir}; mkdir -p "$out"
[ -f /root/m8b/config.json ] || python3 -c "from deployments.tiny_model import dummy_weights_model_dir as d; d('/root/models/llama-3.1-8b', '/root/m8b')"
export NESTEDFP_MODEL_PATH=/root/m8b NESTEDFP_MODEL_ID=llama-8b-dummy NESTEDFP_REPLICAS=${NESTEDFP_REPLICAS:-1} \
  NESTEDFP_GPUS_PER_REPLICA=${NESTEDFP_GPUS_PER_REPLICA:-1} NESTEDFP_CPUS_PER_REPLICA=1 NESTEDFP_ADMIN_TOKEN=bench \
  NESTEDFP_MAX_ONGOING_REQUESTS=1024 NESTEDFP_MAX_QUEUED_REQUESTS=4096 \
  NESTEDFP_ENGINE_KWARGS="{\"load_format\": \"dummy\", \"max_model_len\": 8192, \"gpu_memory_utilization\": 0.85, \"max_num_seqs\": 256, \"max_num_batched_tokens\": ${NESTEDFP_STEP_TOKENS:-1792}, \"enable_prefix_caching\": false}"
export NESTEDFP_STEP_LOG=${NESTEDFP_STEP_LOG:-$out/steps.jsonl}
# Every stats sample the controller receives goes to OUTDIR/signals.jsonl, to replay policies offline
# (python -m loadtests.policy_replay).
export NESTEDFP_SIGNAL_LOG=${NESTEDFP_SIGNAL_LOG:-$out/signals.jsonl}
export NESTEDFP_POLICY__NAME=${NESTEDFP_POLICY__NAME:-slo} NESTEDFP_POLICY__PARAMS=${NESTEDFP_POLICY__PARAMS:-'{"ttft_s": 1.0, "tpot_s": 0.05}'}
# NESTEDFP_FAST_PATH=1: Ray Serve's HAProxy ingress and throughput options (deployments/fast_path.py). To restart
# the app after that mode, `python3 -m ray.scripts.scripts stop --force` leaves HAProxy running: `pkill -x haproxy`.
if ! curl -sf localhost:8000/v1/models >/dev/null; then
  [ "${NESTEDFP_FAST_PATH:-0}" = 1 ] && eval "$(python3 -m deployments.fast_path)" && env | grep '^RAY_SERVE_'
  t0=$(date +%s)
  # `python -m ray.serve.scripts` is the `serve` CLI (pip --target does not refresh bin/ scripts).
  setsid nohup python3 -m ray.serve.scripts run app:main > "$out/serve.log" 2>&1 < /dev/null &
  pid=$!
  # Ready means a completion is served and every replica reports to the controller: /v1/models
  # answers from the ingress before any replica is up.
  replicas() { curl -s localhost:8000/admin/precision -H 'authorization: Bearer bench' |
    python3 -c 'import json, sys; print(len(json.load(sys.stdin)["replicas"]))' 2>/dev/null; }
  for i in $(seq 1 175); do
    curl -sf -m 5 localhost:8000/v1/completions -H 'content-type: application/json' \
      -d '{"model": "llama-8b-dummy", "prompt": "ready", "max_tokens": 1}' >/dev/null &&
      [ "$(replicas)" = "$NESTEDFP_REPLICAS" ] && break
    kill -0 $pid 2>/dev/null || { echo "serve exited"; break; }
    # A replica that keeps failing at start-up is restarted by Serve forever: stop waiting, show why.
    # One failure can heal on restart (two engines racing for a port did, before tcpstore_port.py).
    if [ "$(grep -ac "Engine core initialization failed" "$out/serve.log")" -ge 3 ]; then
      echo "a replica failed to start (Serve keeps restarting it); first errors:"
      grep -aE "Error: |error: " "$out/serve.log" | sed 's/\x1b\[[0-9;]*m//g' | awk '!seen[$0]++' | head -8 | cut -c1-300
      break
    fi
    sleep 3
  done
  echo "app serving after $(( $(date +%s) - t0 )) s"
  grep -aE "warmed|warm-up failed|Model loading took|Graph capturing finished|torch.compile takes|init engine" "$out/serve.log" | cut -c1-220
fi
curl -s localhost:8000/v1/models | head -c 300; echo
curl -s -D - localhost:8000/v1/completions -H 'content-type: application/json' \
  -d '{"model": "llama-8b-dummy", "prompt": "the quick brown fox", "max_tokens": 8}' | grep -iE "^x-nestedfp|HTTP/|choices" | head -c 600; echo
curl -s localhost:8000/admin/precision -H 'authorization: Bearer bench' | head -c 600; echo
