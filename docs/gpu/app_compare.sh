# The whole-app comparisons of docs/BENCHMARKS.md ("App under bursty load"), run on the H200 box
# against the app started by docs/gpu/app_up.sh.  usage: bash docs/gpu/app_compare.sh WHICH OUTDIR
#   spike      : static fp16, static fp8, adaptive slo
#   spike-more : adaptive queue_depth and token_budget on the same spike
#   spike-hard : a shorter, higher burst (40 req/s for 15 s over 10 req/s): fp16, fp8, adaptive slo
#   spike-long : 32 req/s for 30 s over 10 req/s: near the two-replica app's measured ceiling (56-64 req/s
#                for two), held long enough that static fp16's backlog shows in its whole-run TPOT
#   trace      : Azure conversation trace segment, static fp16, static fp8, adaptive slo
# Load levels come from the capacity sweep (docs/BENCHMARKS.md): 1024-token prompts saturate fp16
# mode near 28 req/s and fp8 mode holds 32 req/s within a 50 ms TPOT.
# Rates are per replica: with NESTEDFP_REPLICAS=N (as given to app_up.sh) every rate is multiplied by N.
# With two replicas, Serve's default HTTP path was the limit at the doubled hard spike; the run that met issue 5 §3
# started the app on Ray's high-throughput path (NESTEDFP_FAST_PATH=1 for app_up.sh; docs/BENCHMARKS.md, "Two
# replicas on Ray Serve's high-throughput path").
set -u
which=${1:?spike|spike-more|trace}; out=${2:?outdir}
n=${NESTEDFP_REPLICAS:-1}
common=(--host http://127.0.0.1:8000 --admin-token bench --slo-ttft 1.0 --slo-tpot 0.05 --drain-timeout 20)
spike=(--shape spike --duration 120 --base-rate $((12 * n)) --spike-rate $((34 * n)) --spike-start 45 --spike-length 20
       --prompt-tokens 1024 --output-tokens 64)
hard=(--shape spike --duration 120 --base-rate $((10 * n)) --spike-rate $((40 * n)) --spike-start 45 --spike-length 15
      --prompt-tokens 1024 --output-tokens 64)
long=(--shape spike --duration 130 --base-rate $((10 * n)) --spike-rate $((32 * n)) --spike-start 45 --spike-length 30
      --prompt-tokens 1024 --output-tokens 64)
trace_scale=$(awk "BEGIN {print 0.22 * $n}")
case $which in
  spike)      python3 -m loadtests compare "${common[@]}" "${spike[@]}" --report "$out" --policies fp16,fp8,auto:slo ;;
  spike-more) python3 -m loadtests compare "${common[@]}" "${spike[@]}" --report "$out" --policies auto:queue_depth,auto:token_budget ;;
  spike-hard) python3 -m loadtests compare "${common[@]}" "${hard[@]}" --report "$out" --policies fp16,fp8,auto:slo ;;
  spike-long) python3 -m loadtests compare "${common[@]}" "${long[@]}" --report "$out" --policies fp16,auto:slo,fp8 ;;
  trace)      python3 -m loadtests compare "${common[@]}" --shape trace --trace azure_llm_conv_2024-05-14_20min.csv \
                --data-dir "${NESTEDFP_DATA_DIR:-../shared/data}" --trace-start 400 --duration 120 --rate-scale "$trace_scale" \
                --max-prompt-tokens 4096 --max-output-tokens 256 --report "$out" --policies fp16,fp8,auto:slo ;;
  *) echo "unknown: $which"; exit 2 ;;
esac
