#!/usr/bin/env bash
# How many Triton kernel variants a churning batch compiles (fresh Triton cache), and how long it takes:
#   bash experiments/kernel_variants.sh LABEL
# Session 10 ran it for the engine before and after `_jit` (no specialisation on table-pointer alignment or
# on sizes that change every forward): results/kernel_variants_h100_session10.txt
tc=$(mktemp -d); start=$(date +%s)
TRITON_CACHE_DIR=$tc timeout 150 python experiments/graph_churn.py --jobs 120 --rows 128 --step-tokens 24 > "/tmp/churn_$1.log" 2>&1; rc=$?
echo "$1 rc=$rc seconds=$(( $(date +%s) - start ))"; tail -2 "/tmp/churn_$1.log"
find "$tc" -name '*.json' -not -name '__grp*' | sed 's#.*/##' | sort | uniq -c
