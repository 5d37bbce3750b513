#!/usr/bin/env bash
# Prove dlm's CUDA and TensorRT paths on a machine with an NVIDIA GPU and its driver, and write
# OUT/report.md and OUT/results.csv (default OUT: build/gpu-check; one log per check in OUT/logs).
#
#   scripts/gpu-check.sh [OUT]
#
# It makes its own venv (.venv-gpu) with onnxruntime-gpu (the version the runtime pins) and the
# CUDA, cuDNN and TensorRT wheels of the majors that build links (GPU_WHEELS overrides the
# list), checks that the provider libraries find all they need, builds
# dlm (the cuda and tensorrt features are on by default), and runs on each provider (cuda,
# tensorrt) and precision:
#   - dlm info -v: the provider that took each graph's nodes;
#   - generate, unguided and guided (content, POS, span);
#   - the DDIM and DDPM trajectory fixtures (tests/trajectory.rs) against the PyTorch reference
#     the CPU matches to 3e-6: tokens equal, x0_hat within 1e-2 in fp32 and 5e-2 in fp16 (the
#     content-guided fixture in fp32);
#   - dlm profile, step budgets 10, 50, 100, 200 at batch 1 and 16, and at 50 steps with the
#     clamping trick's search in dlm (--clamp-on host) instead of the graph's, and how many of 8
#     sentences the two give differently;
# then with the denoiser's tensors bound (--binding fixed) and, on cuda, with CUDA graphs of
# each shape (--binding cuda-graph; refused on tensorrt): the shapes bound, the trajectory
# fixtures, the sentences of per-run binding, the step time; then an unknown --ep-option key (ONNX Runtime's error must name it), --precision int8 (refused
# on cuda and tensorrt), --device auto (it must
# choose tensorrt), TensorRT's cold start (empty engine cache) against its warm start, and
# `dlm build-engines` into an empty cache followed by a generation on it, each with its peak RSS
# (the figure the unit's MemoryMax needs on a GPU). A check that fails is reported, not fatal;
# the script exits 1 when any failed.
# Without an NVIDIA GPU it prints one line and exits 2.
set -euo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi is missing or lists none); run it where a GPU and its driver are" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(mkdir -p "${1:-$root/build/gpu-check}" && cd "${1:-$root/build/gpu-check}" && pwd)"   # relative to the caller
cd "$root"
mkdir -p "$out/logs"
ort_version="$(sed -n 's/^VERSION = "\(.*\)".*/\1/p' scripts/fetch_ort.py)"
venv="${GPU_VENV:-$root/.venv-gpu}"
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)

[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"${pip[@]}" "onnxruntime-gpu==$ort_version"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
capi="$site/onnxruntime/capi"
export ORT_DYLIB_PATH="$capi/libonnxruntime.so.$ort_version"
[[ -f "$ORT_DYLIB_PATH" ]] || { echo "gpu-check: $ORT_DYLIB_PATH missing from onnxruntime-gpu" >&2; exit 1; }
# The CUDA, cuDNN and TensorRT majors this onnxruntime-gpu was built against, from its provider
# libraries' NEEDED entries (libcudart.so.12, libcudnn.so.9, libnvinfer.so.10), then the wheels
# of those majors (GPU_WHEELS overrides the list).
needed="$(readelf -d "$capi"/libonnxruntime_providers_{cuda,tensorrt}.so 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')"
major() { grep -o "$1\.so\.[0-9]*" <<< "$needed" | head -n 1 | sed 's/.*\.//'; }
cuda="$(major libcudart)" cudnn="$(major libcudnn)" trt="$(major libnvinfer)"
cuda="${cuda:-12}"
wheels="${GPU_WHEELS:-nvidia-cuda-runtime-cu$cuda nvidia-cublas-cu$cuda nvidia-cudnn-cu$cuda${cudnn:+==$cudnn.*} nvidia-cufft-cu$cuda nvidia-curand-cu$cuda nvidia-cuda-nvrtc-cu$cuda tensorrt-cu$cuda-libs${trt:+==$trt.*}}"
echo "gpu-check: onnxruntime-gpu $ort_version wants CUDA ${cuda}, cuDNN ${cudnn:-?}, TensorRT ${trt:-?}: $wheels"
# shellcheck disable=SC2086  # the list is words
"${pip[@]}" $wheels
libs="$capi"
for dir in "$site"/nvidia/*/lib "$site"/tensorrt_libs; do [[ -d "$dir" ]] && libs="$libs:$dir"; done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing="$(ldd "$capi"/libonnxruntime_providers_{cuda,tensorrt}.so 2>&1 | grep 'not found' | sort -u || true)"
if [[ -n "$missing" ]]; then
  echo "gpu-check: the providers' libraries are not all found (set GPU_WHEELS):" >&2
  echo "$missing" >&2
  exit 1
fi

echo "gpu-check: building dlm (the cuda and tensorrt features are default)"
cargo build --release
dlm="$root/target/release/dlm"
cache="$out/trt-cache"
mkdir -p "$cache"
export DLM_TRT_CACHE="$cache"
unset RUST_LOG   # an empty RUST_LOG would silence -v
csv="$out/results.csv"
echo "check,provider,precision,status,seconds,detail" > "$csv"
failed=0

# check NAME PROVIDER PRECISION EXPECT -- COMMAND...: run it, log it, one CSV row. EXPECT is ok
# (exit 0) or fail:TEXT (a non-zero exit whose output contains TEXT). The detail is the output's
# lines that match DETAIL (a grep pattern) or, by default and on failure, its last line.
check() {
  local name="$1" provider="$2" precision="$3" expect="$4"
  shift 5
  local log="$out/logs/$name-$provider-$precision.log" start end status=ok rc=0
  start="$(date +%s.%N)"
  "$@" > "$log" 2>&1 || rc=$?
  end="$(date +%s.%N)"
  case "$expect" in
    ok) [[ $rc -eq 0 ]] || status=FAIL ;;
    fail:*) [[ $rc -ne 0 ]] && grep -qF -- "${expect#fail:}" "$log" || status=FAIL ;;
  esac
  [[ $status == ok ]] || failed=1
  local detail
  if [[ -n "${DETAIL:-}" && $status == ok ]]; then
    detail="$( (grep -E -- "$DETAIL" "$log" || true) | sed 's/^.*\] //' | tr '\n' ' ')"
  else
    detail="$(tail -n 1 "$log")"
  fi
  detail="$(printf '%s' "$detail" | tr -d '"|' | cut -c1-300)"
  printf '%s,%s,%s,%s,%s,"%s"\n' "$name" "$provider" "$precision" "$status" \
    "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')" "$detail" >> "$csv"
  echo "gpu-check: $name $provider $precision: $status"
}

for provider in cuda tensorrt; do
  for precision in fp32 fp16; do
    run=("$dlm" --device "$provider" --precision "$precision")
    DETAIL='placed on|runs on' check info "$provider" "$precision" ok -- "${run[0]}" info -v --device "$provider"
    DETAIL='' check generate "$provider" "$precision" ok -- "${run[0]}" generate "${run[@]:1}" --steps 50 --num 4 --seed 7
    check content "$provider" "$precision" ok -- "${run[0]}" generate "${run[@]:1}" --steps 50 --num 2 --seed 7 --content food=Italian
    check pos "$provider" "$precision" ok -- "${run[0]}" generate "${run[@]:1}" --steps 50 --num 2 --seed 7 --pos "PROPN AUX DET ADJ NOUN PUNCT"
    check span "$provider" "$precision" ok -- "${run[0]}" generate "${run[@]:1}" --steps 50 --num 2 --seed 7 --span 2,4,NP
    DETAIL='largest|replayed|test result' check trajectory "$provider" "$precision" ok -- \
      env DLM_TEST_DEVICE="$provider" DLM_TEST_PRECISION="$precision" \
      cargo test --release --test trajectory -- --nocapture --test-threads 1
    DETAIL='' check profile "$provider" "$precision" ok -- "${run[0]}" profile "${run[@]:1}" --quiet \
      --budgets 10,50,100,200 --batches 1,16 --repeat 5 --csv "$out/profile-$provider-$precision.csv"
    # the clamping trick's search in dlm instead of the graph's (the default):
    # its cost, and whether the sentences are the same (near-ties may round differently in fp16)
    DETAIL='' check profile-clamp-host "$provider" "$precision" ok -- "${run[0]}" profile "${run[@]:1}" --quiet \
      --clamp-on host --budgets 50 --batches 1,16 --repeat 5 --csv "$out/profile-clamp-host-$provider-$precision.csv"
    same="$(diff <("${run[0]}" generate "${run[@]:1}" --steps 50 --num 8 --seed 7 2>/dev/null) \
      <("${run[0]}" generate "${run[@]:1}" --clamp-on host --steps 50 --num 8 --seed 7 2>/dev/null) | grep -c '^>' || true)"
    echo "gpu-check: clamping on the engine vs the host, $provider $precision: $same of 8 sentences differ"
    printf 'clamp-engine-vs-host,%s,%s,info,0,"%s of 8 sentences differ"\n' "$provider" "$precision" "$same" >> "$csv"
    # the denoiser's tensors bound at fixed addresses, then (cuda) CUDA graphs of each shape:
    # the same trajectories as per-run (the fixtures), the same sentences (batch 4, then 1), and
    # their step time; -v logs each shape bound and its graph
    bindings=(fixed)
    [[ $provider == cuda ]] && bindings+=(cuda-graph)
    for binding in "${bindings[@]}"; do
      DETAIL='bound at' check "bound-$binding" "$provider" "$precision" ok -- "${run[0]}" generate "${run[@]:1}" \
        --binding "$binding" -v --steps 20 --num 5 --batch 4 --seed 7
      DETAIL='largest|replayed|test result' check "trajectory-$binding" "$provider" "$precision" ok -- \
        env DLM_TEST_DEVICE="$provider" DLM_TEST_PRECISION="$precision" DLM_BINDING="$binding" \
        cargo test --release --test trajectory -- --nocapture --test-threads 1
      check "same-sentences-$binding" "$provider" "$precision" ok -- diff \
        <("${run[0]}" generate "${run[@]:1}" --steps 50 --num 5 --batch 4 --seed 7 2>/dev/null) \
        <("${run[0]}" generate "${run[@]:1}" --binding "$binding" --steps 50 --num 5 --batch 4 --seed 7 2>/dev/null)
      DETAIL='' check "profile-$binding" "$provider" "$precision" ok -- "${run[0]}" profile "${run[@]:1}" --quiet \
        --binding "$binding" --budgets 50 --batches 1,16 --repeat 5 --csv "$out/profile-$binding-$provider-$precision.csv"
    done
  done
done

check cuda-graph-refused tensorrt fp32 "fail:not tensorrt" -- "$dlm" generate --device tensorrt --binding cuda-graph --steps 2
check unknown-option cuda fp32 fail:no_such_option -- "$dlm" generate --device cuda --steps 2 --ep-option cuda:no_such_option=1
for provider in cuda tensorrt; do  # the int8 denoiser is the CPU's: refused, naming what to use
  check int8-refused "$provider" int8 "fail:precision int8 is the CPU's" -- "$dlm" generate --device "$provider" --precision int8 --steps 2
done
cold="$out/trt-cold"
rm -rf "$cold"
DETAIL='' check tensorrt-cold tensorrt fp16 ok -- "$dlm" generate --device tensorrt --precision fp16 --trt-cache "$cold" --steps 10 --num 1 --seed 1
DETAIL='' check tensorrt-warm tensorrt fp16 ok -- "$dlm" generate --device tensorrt --precision fp16 --trt-cache "$cold" --steps 10 --num 1 --seed 1
engines="$( (find "$cold" -name '*.engine' 2>/dev/null || true) | wc -l)"

# RSS: run a command and print its peak resident set size (the unit's MemoryMax on a GPU)
rss() {
  "$venv/bin/python" -c 'import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(f"peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024} MiB", flush=True)
sys.exit(code)' "$@"
}
DETAIL='device' check auto tensorrt fp16 ok -- "$dlm" info --device auto --no-sessions
grep -q 'device     auto: tensorrt' "$out/logs/auto-tensorrt-fp16.log" || { echo "gpu-check: --device auto did not choose tensorrt"; failed=1; }
prebuilt="$out/trt-prebuilt"
rm -rf "$prebuilt"
DETAIL='peak RSS|build-engines' check build-engines tensorrt fp16 ok -- rss "$dlm" build-engines --device tensorrt --precision fp16 --trt-cache "$prebuilt"
DETAIL='peak RSS' check generate-rss tensorrt fp16 ok -- rss "$dlm" generate --device tensorrt --precision fp16 --trt-cache "$prebuilt" --steps 50 --num 4 --seed 7 --content food=Italian
DETAIL='peak RSS' check generate-rss cuda fp32 ok -- rss "$dlm" generate --device cuda --precision fp32 --steps 50 --num 4 --seed 7 --content food=Italian

{
  echo "# gpu-check"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), dlm $(git rev-parse --short HEAD), \`scripts/gpu-check.sh\`"
  echo
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
  echo "- ONNX Runtime: onnxruntime-gpu $ort_version ($("$dlm" info --device cpu | sed -n 's/^  build *//p'))"
  echo "- wheels: $("$venv/bin/pip" freeze | (grep -E '^(onnxruntime|nvidia|tensorrt)' || true) | tr '\n' ' ')"
  echo "- TensorRT engines built on the cold start: $engines (one directory per graph content)"
  echo "- peak RSS (for the unit's MemoryMax): $(grep -h 'peak RSS' "$out"/logs/build-engines-*.log "$out"/logs/generate-rss-*.log 2>/dev/null | tr '\n' ' ')"
  echo
  echo "| check | provider | precision | status | seconds | detail |"
  echo "|---|---|---|---|---|---|"
  tail -n +2 "$csv" | sed 's/,"/|/; s/"$//' | awk -F'|' '{ split($1, f, ","); printf "| %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3], f[4], f[5], $2 }'
  echo
  echo "Step latency (dlm profile, ms per request; profile-PROVIDER-PRECISION.csv has every column):"
  for file in "$out"/profile-*.csv; do
    [[ -f "$file" ]] || continue
    echo
    echo "$(basename "$file" .csv):"
    echo '```'
    cat "$file"
    echo '```'
  done
} > "$out/report.md"
echo "gpu-check: $out/report.md, $csv"
exit "$failed"
