#!/usr/bin/env bash
# The one prepared GPU check of issue #6 (and the GPU paths of #16-#18): at most 565 s of step
# limits (sum), start-up excluded, so it fits one device call (10 min per command) with the start-up
# in a 15-minute budget.
#
#   OUT=/some/folder bash benchmarks/run_device_checks.sh       # from the repository root
#
# Runs tests/test_gpu.py (CUDA vs CPU runs, bf16 attacks, corruptions, transfer, quantized variants), then, with random weights, bench_attack.py (loops a/b/c, FLOPs, limits,
# peak memory) for efficientat-mn04, cnn14 and ast with (c) in bf16 and the bf16-vs-fp32
# attacked-mAP comparison, AST's (c) in fp32 and with torch.compile of the network only, mn04 with
# CUDA graphs (compile mode reduce-overhead), and
# bench_eval.py for cnn14 and mn04. Every step has its own time limit, so one slow step cannot
# eat the budget; each writes $OUT/<step>.txt (stdout+stderr) and $OUT/<step>.json;
# $OUT/summary.txt collects the tables.
set -u
OUT="${OUT:-results_device}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 || true
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1

# step NAME LIMIT_S command...
step() {
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "== $name rc=$rc $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  grep -v "^#" "$OUT/$name.txt" | grep -E "clips/s|ratio|FLOP|limit|bf16 vs|loop|_audiobench|_toolbox|_library|Error" >> "$OUT/summary.txt" || true
}

# correctness on CUDA first (tests/test_gpu.py: CUDA vs CPU results, bf16 attack in its ball, pinned loader)
t0=$SECONDS
timeout --kill-after=10 130 "$PY" -m pytest -q -m gpu tests/test_gpu.py > "$OUT/gpu_tests.txt" 2>&1
echo "== gpu_tests rc=$? $((SECONDS - t0)) s: $(tail -n 1 "$OUT/gpu_tests.txt")" | tee -a "$OUT/summary.txt"

A="$PY benchmarks/bench_attack.py --device cuda --steps 10 --eps 0.002 --clip-seconds 10 --threads 4 --repeats 3"
E="$PY benchmarks/bench_eval.py --device cuda --clip-seconds 10 --threads 4 --repeats 3"

# attacks: (a)/(b) are always fp32; (c) in bf16 (fast path) and fp32 (exact mode); mn04 first (cheap)
step attack_mn04_b64_bf16   40 $A --model efficientat-mn04 --batch-size 64 --precision bf16 --compare-precision
step attack_cnn14_b32_bf16  45 $A --model cnn14 --batch-size 32 --precision bf16 --compare-precision
step attack_cnn14_b64_bf16  25 $A --model cnn14 --batch-size 64 --precision bf16 --only c --no-bytes
step attack_ast_b32_bf16    80 $A --model ast --batch-size 32 --precision bf16 --compare-precision --repeats 2
step attack_ast_b32_fp32    30 $A --model ast --batch-size 32 --precision fp32 --only c --no-bytes --repeats 2
# compile of the network only (dynamic=False); compile time falls in the warm-up only
step attack_ast_b32_bf16_compile 70 $A --model ast --batch-size 32 --precision bf16 --only c --no-bytes --compile --repeats 2
# CUDA graphs for the small, launch-bound mn04 (torch.compile mode="reduce-overhead", network only)
step attack_mn04_b64_bf16_cudagraphs 45 $A --model efficientat-mn04 --batch-size 64 --precision bf16 --only c --no-bytes --compile --compile-mode reduce-overhead --repeats 2
# clean evaluation end to end (shard in page cache) vs model only
step eval_cnn14_b64_bf16    30 $E --model cnn14 --batch-size 64 --precision bf16 --clips 1024
step eval_mn04_b64_bf16     30 $E --model efficientat-mn04 --batch-size 64 --precision bf16 --clips 1024

# AudioSet-C corruptions against mn04's forward on the device (issue #16: each within 3x, or explained)
step corruptions_mn04_b32   40 $PY benchmarks/bench_corruptions.py --device cuda --batch-size 32 --repeats 2

echo "done $(date -u +%H:%M:%S)" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
