#!/usr/bin/env bash
# Every agent in a comparison on real Fashion-MNIST: 3 seeds each, the shipped teachers, the `rank` fidelity,
# the comparison presets (`--preset quick` where an agent has one: no method-own final training, since the
# leaderboard gives every agent's best student the same shared final training). Results in
# benchmarks/README.md ("Comparisons"); about 1.5 hours on 2 CPU cores.
#
#   bash benchmarks/compare_fashion.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/compare_fashion}"
SEEDS=3
BUDGET=16

# removal space, ResNet-20 (N2N's space; ESNAC acts on it too)
python run_agent.py --env removal-resnet20-fashionmnist --agent n2n,esnac,random,ppo,a2c \
  --seeds $SEEDS --budget $BUDGET --preset quick --out "$OUT/removal-resnet20"
# ranking-affine space, ResNet-20 (LeGR's space and its two baselines)
python run_agent.py --env ranking-affine-resnet20-fashionmnist --agent legr,l2-global,uniform,random \
  --seeds $SEEDS --budget $BUDGET --preset quick --out "$OUT/ranking-affine-resnet20"
# channel-ratio space, LeNet-5 (DeepHoyer's MNIST setting; its `fast` preset)
python run_agent.py --env channel-ratio-lenet5-fashionmnist --agent hoyer,random,ppo,a2c \
  --seeds $SEEDS --budget $BUDGET --preset fast --out "$OUT/channel-ratio-lenet5"
# channel-ratio space with TAS's options (a width per conv, a depth per stage, students from scratch)
python run_agent.py --env channel-ratio-resnet20-fashionmnist --agent tas,random \
  --seeds $SEEDS --budget $BUDGET --preset quick --out "$OUT/channel-ratio-tas-resnet20"
