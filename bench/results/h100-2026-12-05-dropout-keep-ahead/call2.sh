nvidia-smi --query-gpu=name --format=csv,noheader; export PYTHONPATH=.
B="--headdim 64 --seqlen 8k --causal both --batch 2 --hidden 2048 --peers none --no-check --no-progress"
bash bench/ab_kernels.sh $OUT/ab ab/old/kernels_cu 3 -- --mode bwd $B --dropout 0.1 2>&1 | tail -4
timeout 150 python3 -m pytest tests/gpu/test_dropout.py -q -p no:cacheprovider -k "not fp32 and (64 or other_features or deterministic or varlen or probs)" 2>&1 | tail -3
for tool in memcheck racecheck; do timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/results/h100-2026-12-05-dropout-keep-ahead/sanitize_dropout_d64.py > $OUT/san-$tool.log 2>&1; echo "$tool rc=$? $(grep -E '(ERROR|RACECHECK) SUMMARY|^done' $OUT/san-$tool.log | tail -2 | tr '\n' ' ')"; done
