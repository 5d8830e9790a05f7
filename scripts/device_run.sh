#!/usr/bin/env bash
# One call on the GPU machine (H100/H200, Ubuntu 24.04, CUDA 13, torch/transformers installed, no
# network), from the repository root. Needs the bundle made here by scripts/gpu_bundle.sh,
# carried as .gpu-bundle. Stages (STAGES, space-separated, default "model kernels"):
#   goldens  the Hugging Face goldens (tools/make_goldens.py, tools/demo_model_goldens.py for the
#            demo and the code model) -> $OUT/golden.tar.gz, to unpack into tests/data/golden/
#   model    = tests + forward
#   tests    the CUDA backend's GPU tests: kernel ops, GEMV, decode and prefill attention,
#            cluster scores, sampling, k-means, the whole model vs the goldens and the CPU, the
#            server on the GPU
#   forward  the forward benchmark on the Llama-3-8B shape (bench/cuda/gpu_forward_bench.cc)
#   kmeans   the batched GPU k-means benchmark (bench/cuda/kmeans_bench.cc)
#   cascade  the forward benchmark's decode at batches 1/8/32/64 (BATCHES) against one 128K context
#            and against 4 contexts of 32K: dense and squeezed (BUDGETS), per-sequence and
#            cascade, index by the GPU k-means
#   torch    the PyTorch dense model in one CUDA graph (bench/torch_model_baseline.py), per-sequence
#            and cascade, the same shapes as the cascade stage
#   serving  through the gRPC server: 1/8/32/64 concurrent clients on one 128K context and on 4
#            contexts, dense and squeezed (bench/run_serving.sh)
#   ttft     the forward benchmark at 128K (index by GPU k-means, with a coarse level): squeezed
#            and hierarchical decode and the time to first token of
#            1K and 4K-token inputs, dense and squeezed
#   e2e      through the gRPC server on the 8B shape (random weights): register a 113K-token
#            context, Generate dense / squeezed at batch 1 and 8, a 1K-token input's TTFT
#   index    the forward benchmark at 128K with the index's k-means stopping once at most
#            KMEANS_MIN_CHANGED (0.005) of a head's labels change: index time, squeezed decode
#            (TTFT_ARGS, INDEX_ARGS: more arguments for the ttft and index stages' runs)
#   torch-prefill  the PyTorch dense model's chunked prefill of 128K tokens on cuDNN and its time
#            to first token of 1K and 4K-token inputs (bench/torch_model_baseline.py --prefill;
#            PREFILL_TOKENS to change the 128K): the baseline of the ttft stage
#   accuracy the retrieval accuracy benchmark through the server on the GPU (bench/run_accuracy.sh)
#   codebase the codebase benchmark through the server on the GPU with the code model
#            (bench/run_codebase.sh; the bundle made with BINS="squeeze-server" WITH_STDLIB=1):
#            CODEBASE_SETTINGS, CODEBASE_N tasks per file (0: all), CODEBASE_LENGTHS (K tokens),
#            CODEBASE_LIMIT_S; results in $OUT/codebase.json, the tasks in $OUT/codebase-tasks.tar.xz
#            (TASKS=DIR runs tasks made elsewhere instead)
#   kernels  attention kernel tests and benchmarks vs PyTorch SDPA (bench/run_gpu.sh)
#   prefill  the prefill attention kernels (mma.sync and wgmma) vs PyTorch SDPA (cuDNN / flash),
#            bench/run_gpu.sh's prefill part without its test (run it in the tests stage)
#   scores   gpu-prefill-bench at 16K only: its cluster-scores table (mma.sync vs wgmma), quickly
#   variants the decode attention benchmark's variants at 128K / 512K (VARIANTS, ';'-separated
#            argument sets; default: 2 waves of the attention grid, the two-launch lookup,
#            no programmatic launch, the hierarchical lookup)
#   profile  per-kernel GPU time of the decode attention benchmark under Nsight Compute (ncu),
#            PROFILE_CONFIGS (default 1x131072): where a squeezed step's time goes, launch gaps
#            being the step's time less the kernels'
#   forward-ab  the forward benchmark's decode (FORWARD_AB_ARGS; default 128K, batches 1/8/32,
#            squeezed 0.1 by the GPU k-means) by gpu-forward-bench-base (the bundle's EXTRA, built
#            from an earlier commit) and by gpu-forward-bench, alternately, AB_ROUNDS (2) times each
#   profile-forward  per-kernel GPU time of whole decode steps (the forward benchmark at batch 1
#            against an 8K context, FORWARD_PROFILE_ARGS to change) under ncu, and the same run
#            without ncu for the steps' wall time: the step less its kernels is launch gaps and copies
# Logs travel back as $OUT/logs.tar.gz (the device tool returns at most 8 files). Each stage has
# a time limit so one hang cannot eat the call.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-/tmp/squeeze-device}
LOGS=/tmp/squeeze-logs
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1
STAGES=${STAGES:-model kernels}
has() { [[ " $STAGES " == *" $1 "* ]]; }
# Nsight Compute, for the profile stages.
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null \
      | head -1)

if [ -f .gpu-bundle/bundle.tar.xz ]; then
  mkdir -p /tmp/bundle && tar -xJf .gpu-bundle/bundle.tar.xz -C /tmp/bundle
  # cuBLAS comes from the machine's CUDA toolkit (too large to carry).
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
  done
  export LD_LIBRARY_PATH="/tmp/bundle/lib:${LD_LIBRARY_PATH:-}"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader

if has goldens; then
  G=/tmp/golden
  timeout 240 python3 tools/make_goldens.py --out "$G" > "$LOGS/make_goldens.log" 2>&1 \
    || echo "goldens: exit $?"
  timeout 120 python3 tools/demo_model_goldens.py --out "$G/squeeze-demo.json" \
    >> "$LOGS/make_goldens.log" 2>&1 || echo "demo goldens: exit $?"
  timeout 120 python3 tools/demo_model_goldens.py --model models/squeeze-code \
    --tasks tests/data/code_model_tasks.jsonl --out "$G/squeeze-code.json" \
    >> "$LOGS/make_goldens.log" 2>&1 || echo "code model goldens: exit $?"
  tail -14 "$LOGS/make_goldens.log"
  tar -czf "$OUT/golden.tar.gz" -C "$G" .
fi

if has model || has tests; then
  export SQUEEZE_SOURCE_DIR="$ROOT"
  for t in ${TESTS:-model_ops_test gemv_test attention_kernels_test prefill_attention_test cluster_scores_test sampling_gpu_test kmeans_gpu_test cuda_model_test}; do
    echo "== $t"
    timeout 240 /tmp/bundle/$t > "$LOGS/$t.log" 2>&1
    echo "$t: exit $?"
    grep -E "^\[  (FAILED|PASSED) |^\[cuda|Failure|rror" "$LOGS/$t.log" | head -30
  done
fi

if has model || has forward; then
  echo "== gpu-forward-bench (Llama-3-8B shape, random weights)"
  timeout 200 /tmp/bundle/gpu-forward-bench --model=bench/configs/llama3-8b \
    --prefill_tokens=32768 --decode_steps=32 --squeezed_budgets=0.2,0.1,0.05 2>&1 \
    | tee "$LOGS/forward_32k.log"
  timeout 200 /tmp/bundle/gpu-forward-bench --model=bench/configs/llama3-8b \
    --prefill_tokens=131072 --decode_steps=8 2>&1 | tee "$LOGS/forward_128k.log"
fi

if has cascade; then
  echo "== gpu-forward-bench: batches ${BATCHES:-1,8,32,64} against one 128K context"
  timeout "${CASCADE_LIMIT:-330}" /tmp/bundle/gpu-forward-bench --model=bench/configs/llama3-8b \
    --prefill_tokens=131072 --decode_steps=8 --kmeans --squeezed_budgets="${BUDGETS:-0.1}" \
    --batches="${BATCHES:-1,8,32,64}" 2>&1 | tee "$LOGS/cascade_128k.log" | grep -v "^  hier"
  if [ -z "${ONE_CONTEXT:-}" ]; then
    echo "== gpu-forward-bench: batches ${BATCHES:-8,32,64} against 4 contexts of 32K"
    timeout 200 /tmp/bundle/gpu-forward-bench --model=bench/configs/llama3-8b \
      --prefill_tokens=32768 --decode_steps=8 --kmeans --squeezed_budgets="${BUDGETS:-0.1}" \
      --batches="${BATCHES4:-8,32,64}" --contexts=4 2>&1 | tee "$LOGS/cascade_4x32k.log"
  fi
fi

if has torch; then
  echo "== PyTorch dense model, one CUDA graph per step: one 128K context"
  timeout 280 python3 bench/torch_model_baseline.py --context 131072 \
    --batches "${BATCHES:-1,8,32,64}" --json "$LOGS/torch_128k.json" 2>&1 | tee "$LOGS/torch_128k.log"
  if [ -z "${ONE_CONTEXT:-}" ]; then
    echo "== PyTorch dense model: 4 contexts of 32K"
    timeout 200 python3 bench/torch_model_baseline.py --context 32768 --contexts 4 \
      --batches "${BATCHES4:-8,32,64}" --json "$LOGS/torch_4x32k.json" 2>&1 \
      | tee "$LOGS/torch_4x32k.log"
  fi
fi

if has serving; then
  echo "== serving through the gRPC server (bench/run_serving.sh)"
  timeout "${SERVING_LIMIT:-420}" bash bench/run_serving.sh /tmp/bundle 2>&1 \
    | tee "$LOGS/serving.log"
fi

if has kmeans; then
  echo "== kmeans-bench: one layer of the 8B shape at 128K (8 heads x 131072 keys, k 6554)"
  timeout 300 /tmp/bundle/kmeans-bench 2>&1 | tee "$LOGS/kmeans_bench.log"
fi

if has ttft; then
  echo "== gpu-forward-bench: 128K context, squeezed decode and time to first token"
  timeout 300 /tmp/bundle/gpu-forward-bench --model=bench/configs/llama3-8b \
    --prefill_tokens=131072 --decode_steps=8 --squeezed_budgets=0.1,0.05 --kmeans --hierarchical \
    --query_tokens=1024,4096 ${TTFT_ARGS:-} 2>&1 | tee "$LOGS/forward_128k_ttft.log"
  echo "== the same inputs' dense attention in PyTorch SDPA (cuDNN, flash), one layer"
  timeout 120 python3 bench/torch_attention_baseline.py --context=131072 \
    --query_tokens=1024,4096 2>&1 | tee "$LOGS/torch_context_prefill.log"
fi

if has index; then
  echo "== gpu-forward-bench: the index of a 128K context with the k-means' early stop"
  timeout 240 /tmp/bundle/gpu-forward-bench --model=bench/configs/llama3-8b \
    --prefill_tokens=131072 --decode_steps=8 --squeezed_budgets=0.1,0.05 --kmeans --hierarchical \
    --kmeans_min_changed="${KMEANS_MIN_CHANGED:-0.005}" ${INDEX_ARGS:-} 2>&1 \
    | tee "$LOGS/forward_128k_index.log"
fi

if has torch-prefill; then
  echo "== PyTorch dense model: prefill 128K tokens, inputs against them"
  timeout 300 python3 bench/torch_model_baseline.py --prefill "${PREFILL_TOKENS:-131072}" \
    --query_tokens 1024,4096 --json "$LOGS/torch_prefill.json" 2>&1 | tee "$LOGS/torch_prefill.log"
fi

if has accuracy; then
  echo "== accuracy through the server on the GPU (demo model, as the CPU run in bench/RESULTS.md)"
  timeout 420 bash bench/run_accuracy.sh /tmp/bundle ${ACCURACY_N:-10} 4096 8192 \
    > "$LOGS/accuracy.log" 2>&1 || echo "run_accuracy.sh: exit $?"
  tail -40 "$LOGS/accuracy.log"
fi

if has codebase; then
  echo "== codebase benchmark through the server on the GPU (code model)"
  MODEL="$ROOT/models/squeeze-code" STDLIB=/tmp/bundle/stdlib/python3.11 PYTHON=python3 \
    SERVER_FLAGS="--device=cuda" KEEP_TASKS=/tmp/codebase-tasks \
    BENCH_FLAGS="--settings=${CODEBASE_SETTINGS:-dense,squeezed:0.1,squeezed-step:0.1,squeezed-step:0.03,pages:0.1,recent:0.1} --concurrency=48 --json=$OUT/codebase.json" \
    timeout "${CODEBASE_LIMIT_S:-540}" bash bench/run_codebase.sh /tmp/bundle "${CODEBASE_N:-0}" \
    "${CODEBASE_LENGTHS:-8,16}" > "$LOGS/codebase.log" 2>&1 || echo "run_codebase.sh: exit $?"
  pkill -f "squeeze-server --model=$ROOT/models/squeeze-code" 2>/dev/null
  tail -30 "$LOGS/codebase.log"
  [ -d /tmp/codebase-tasks ] && tar -cJf "$OUT/codebase-tasks.tar.xz" -C /tmp codebase-tasks
fi

if has e2e; then
  echo "== through the gRPC server: Llama-3-8B shape, random weights, 113K-token context"
  timeout 400 bash bench/run_server_e2e.sh /tmp/bundle "${E2E_REPEATS:-35}" 2>&1 \
    | grep -v -E "^(tokenizing|prefill|clustering|calibrating|persisting|done) " \
    | tee "$LOGS/server_e2e.log"
fi

if has kernels; then
  OUT="$LOGS/kernels" timeout "${GPU_STAGE_LIMIT:-330}" bash bench/run_gpu.sh /tmp/bundle \
    > "$LOGS/run_gpu.log" 2>&1 || echo "run_gpu.sh: exit $?"
  grep -E "^\[  (FAILED|PASSED) |exit|rror" "$LOGS/run_gpu.log" | head -40
  cat "$LOGS/kernels/combined.txt" "$LOGS/kernels/combined_prefill.txt" 2>/dev/null
fi
if has prefill; then
  OUT="$LOGS/prefill" SKIP_DECODE=1 SKIP_TEST=1 timeout "${GPU_STAGE_LIMIT:-330}" \
    bash bench/run_gpu.sh /tmp/bundle > "$LOGS/run_gpu_prefill.log" 2>&1 \
    || echo "run_gpu.sh (prefill): exit $?"
  cat "$LOGS/prefill/gpu_prefill_bench.log" "$LOGS/prefill/combined_prefill.txt" 2>/dev/null
fi
if has scores; then
  echo "== gpu-prefill-bench at 16K only: the cluster-scores kernels (and one prefill row)"
  timeout 120 /tmp/bundle/gpu-prefill-bench --lens 16384 --reps 5 2>&1 | tee "$LOGS/scores.log"
fi
if has variants; then
  # VARIANTS: ';'-separated argument sets.
  if [ -n "${VARIANTS:-}" ]; then
    IFS=';' read -r -a VARS <<< "$VARIANTS"
  else
    VARS=("--sparse-waves 2" "--two-pass-lookup" "--no-pdl" "--hierarchical")
  fi
  for args in "${VARS[@]}"; do
    echo "== gpu-attention-bench --configs 1x131072,8x131072,1x524288 $args"
    timeout 240 /tmp/bundle/gpu-attention-bench --configs 1x131072,8x131072,1x524288 $args 2>&1 \
      | tee "$LOGS/variant_${args//[ -]/}.log" | grep -v "^device\|^(kept"
  done
fi
if has profile; then
  echo "== ncu per-kernel time: gpu-attention-bench --configs ${PROFILE_CONFIGS:-1x131072}"
  timeout 300 "$NCU" --clock-control none --metrics gpu__time_duration.sum \
    --print-summary per-kernel -k 'regex:Lookup|Centroid|Sparse|Decode|Combine|Expand' \
    /tmp/bundle/gpu-attention-bench --configs "${PROFILE_CONFIGS:-1x131072}" --reps 5 \
    ${PROFILE_ARGS:-} > "$LOGS/ncu.log" 2>&1 || echo "ncu: exit $?"
  grep -v -E "^==PROF==|^ *-+ *-+" "$LOGS/ncu.log" | cut -c1-160 | tail -150
fi
if has forward-ab; then
  ARGS=${FORWARD_AB_ARGS:---prefill_tokens=131072 --decode_steps=8 --kmeans --squeezed_budgets=0.1 --batches=1,8,32}
  for round in $(seq 1 "${AB_ROUNDS:-2}"); do
    for b in gpu-forward-bench-base gpu-forward-bench; do
      echo "== round $round: $b $ARGS"
      timeout 240 /tmp/bundle/$b $ARGS > "$LOGS/ab-$b-$round.log" 2>&1 || echo "$b: exit $?"
      grep -E "^decode|^batch|^  squeezed|without a context" "$LOGS/ab-$b-$round.log" | cut -c1-230
    done
  done
fi

if has profile-forward; then
  ARGS=${FORWARD_PROFILE_ARGS:---prefill_tokens=8192 --decode_steps=4 --batches=1 --squeezed_budgets=0.1}
  echo "== gpu-forward-bench $ARGS (no profiler)"
  timeout 200 /tmp/bundle/gpu-forward-bench $ARGS 2>&1 | tee "$LOGS/forward-plain.log" | tail -25
  echo "== ncu per-kernel time: gpu-forward-bench $ARGS"
  timeout 400 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum \
    --print-summary per-kernel /tmp/bundle/gpu-forward-bench $ARGS > "$LOGS/ncu-forward.log" 2>&1 \
    || echo "ncu: exit $?"
  grep -v -E "^==PROF==|^ *-+ *-+" "$LOGS/ncu-forward.log" | cut -c1-200 | tail -250
fi
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
ls -la "$OUT"
