#!/usr/bin/env bash
# The GPU figures of issue "Scale", in one command on a machine with a GPU and no internet:
#
#   NETCOMP_DATA=.data bash benchmarks/gpu_suite.sh      # Fashion-MNIST carried in .data/ (git-ignored)
#
# prints, in about 5 minutes on one H200:
#   1. KD seconds per 50,000-image epoch of a ResNet-18 student (bf16 autocast, channels_last, fused Adam)
#      from a ResNet-18 teacher, and its ratio to a plain DataLoader + torchvision pipeline
#      (benchmarks/kd_throughput.py), with the teacher-logit cache and 4 students at once beside it;
#   2. the env's overhead per ResNet-34 student on the GPU (benchmarks/env_overhead.py);
#   3. Ray's efficiency with fractional GPUs: 1 worker against 4 workers sharing the GPU (0.25 each)
#      (benchmarks/ray_workers.py);
#   4. the fidelity rank table of benchmarks/fidelity_rank.py at the paper setting: the cheap fidelities'
#      Spearman rho against N2N's paper fidelity (5 epochs per student), 10 ResNet-20 students.
# Fashion-MNIST: copy /usr/share/datasets/fashion-mnist/*.gz (Debian's dataset-fashion-mnist) into
# $NETCOMP_DATA/FashionMNIST/raw/ (torchvision's layout) before going offline.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${NETCOMP_DATA:-.data}"
OUT="${OUT:-gpu_suite_out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== 1. KD throughput (ResNet-18 -> ResNet-18, 50,000 images per run)"
python benchmarks/kd_throughput.py --device cuda --images 50000 --repeats 2 --workers 4 --together 4 \
  --json "$OUT/kd.json"

echo "== 2. env overhead per student (ResNet-34)"
python benchmarks/env_overhead.py --arch resnet34 --device cuda --repeats 10

echo "== 3. Ray workers sharing the GPU"
python -m benchmarks.ray_workers --device cuda --workers 1,4 --worker-gpus 0.25 || echo "ray benchmark failed"

echo "== 4. fidelity ranking at the paper setting (removal space, ResNet-20, Fashion-MNIST)"
NETCOMP_DATA="$DATA" python -m benchmarks.fidelity_rank --space removal --arch resnet20 --dataset fashionmnist \
  --students 10 --fidelities rank fast --reference paper --batch 10 --device cuda --json "$OUT/fidelity_paper.json"
