#!/usr/bin/env bash
# One prepared GPU session (how benchmarks/results/cuda.json is made): a correctness check of the
# engine on CUDA against the CPU, the --quick smoke, then each benchmark section with its own time limit
# (SECTION_LIMIT seconds each, USER_FEEL_LIMIT for the ResNet-18 fits, which need torchvision), and
# issue 32's real-model table on CUDA (REAL_MODELS_LIMIT seconds; CUDA peaks from max_memory_allocated).
# Usage: OUT=/some/folder bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT="${OUT:-/tmp/liegg_gpu}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/check.txt"
python3 - <<'PY' 2>&1 | tee -a "$OUT/check.txt"
import torch, lightning as L
from liegg_lightning import VectorAction, ImageAction, analyze, LieGGCallback
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.SiLU(), torch.nn.Linear(64, 3))
x = torch.randn(2048, 10)
cpu = analyze(net, x, VectorAction(5, 2), reference_algebra="so")
gpu = analyze(net.cuda(), x.cuda(), VectorAction(5, 2), reference_algebra="so")
rel = float((cpu.singular_values - gpu.singular_values).abs().max() / cpu.singular_values.max())
print("cuda vs cpu singular values, max rel err:", rel)
cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 28 * 28, 10)).cuda()
img = torch.randn(256, 1, 28, 28, device="cuda")
fwd = analyze(cnn, img, ImageAction(), derivative="forward")
rev = analyze(cnn, img, ImageAction(), derivative="reverse")
print("forward vs reverse on cuda, max rel err:", float((fwd.variances - rev.variances).abs().max() / rev.variances.max()))
PY
python3 benchmarks/run.py --device cuda --quick --out /tmp/liegg_quick > "$OUT/quick.txt" 2>&1; echo "quick rc=$?" | tee -a "$OUT/quick.txt"
for section in overhead solve methods user_feel; do
  limit="${SECTION_LIMIT:-150}"
  [ "$section" = user_feel ] && limit="${USER_FEEL_LIMIT:-300}"
  # one pair of new processes for the first-fit column: each starts CUDA and trains a ResNet-18 afresh
  USER_FEEL_FRESH="${USER_FEEL_FRESH:-1}" timeout "$limit" python3 benchmarks/run.py --device cuda --only "$section" --out "$OUT" > "$OUT/$section.txt" 2>&1
  echo "$section rc=$?" | tee -a "$OUT/$section.txt"
done
# real models at real size on CUDA: the same table as on the CPU, with the CUDA peak of each phase
timeout "${REAL_MODELS_LIMIT:-400}" python3 benchmarks/real_models.py --device cuda --repeats 3 \
  --json "$OUT/real_models_cuda.json" > "$OUT/real_models.txt" 2>&1
echo "real_models rc=$?" | tee -a "$OUT/real_models.txt"
