#!/usr/bin/env bash
# The main job: both RaSeRec stages with a SASRec encoder on Beauty, short schedule.
source "$(dirname "$0")/_env.sh"
exec python examples/sasrec.py --dataset beauty --demo "$@"
