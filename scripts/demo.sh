#!/usr/bin/env bash
# The demo: both RaSeRec stages with a SASRec encoder on Beauty, on a short schedule (--demo:
# 5 pre-training epochs with "windows" batches, 3 RAFT epochs; a few minutes on 2 free cores).
# Torch's threads follow the cores free at the start (--threads N overrides); it prints one
# result table and where it wrote its files (runs/demo/).
source "$(dirname "$0")/_env.sh"
exec python examples/sasrec.py --dataset beauty --demo "$@"
