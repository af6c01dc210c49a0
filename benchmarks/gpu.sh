#!/usr/bin/env bash
# The prepared device run of issue 30 (under 8 minutes on one GPU): benchmarks/gpu.py on CUDA, figures to
# $OUT/gpu.json (or results/bench_gpu.json). Needs python3.11+ with the project's requirements (the device
# machine's own torch is used where it has one; missing packages install from requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch, torchvision, cv2, skimage, scipy, pydicom, highdicom, open_clip, torchxrayvision" 2>/dev/null
then
    $PY -m pip install --quiet -r requirements.txt
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
OUT_FILE=${OUT:+$OUT/gpu.json}
PYTHONUNBUFFERED=1 timeout 480 $PY benchmarks/gpu.py --device cuda --json "${OUT_FILE:-results/bench_gpu.json}" "$@"
