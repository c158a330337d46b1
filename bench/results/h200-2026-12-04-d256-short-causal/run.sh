export PYTHONPATH=. CUFLASH_CACHE_DIR=/tmp/cc; O=$OUT/r; mkdir -p $O; A=kernels_cu/dev/fwd_grid_ab.py
python3 -m cuflash compile --arch sm_90a --only fwd90 --dtypes bf16,fp16 --features "" --features causal --features causal,softcap,sink --features causal,varlen -j 16 > $O/compile.log 2>&1; tail -1 $O/compile.log
(python3 -m pytest tests/gpu/test_forward.py -k sm90 -q -p no:cacheprovider > $O/t_fwd.log 2>&1) &
(python3 -m pytest tests/gpu/test_varlen.py tests/gpu/test_variants.py -k "256" -q -p no:cacheprovider > $O/t_var.log 2>&1) &
(SANITIZER_TOOLS="memcheck racecheck" SANITIZER_DISABLE_SM90=0 SANITIZE_SECTIONS=forward bench/gpu_check.sh $O/san --tests "--co -q tests/gpu/test_launch_plans.py" --bench "" --decode "" > $O/san.log 2>&1) &
wait; tail -1 $O/t_fwd.log $O/t_var.log; grep -h "sanitizer" $O/san.log
for i in 1 2; do SEQLENS=512,1024,2048,4096 python3 $A new 256; SEQLENS=512,1024,2048,4096 SHORT_ROWS=64:2048 python3 $A old 256; done 2>&1 | grep "causal=1" > $O/ab.txt
for m in new old; do R=64:2048; [ $m = new ] && R=64:2048,256:4096; VARLEN=1 SHORT_ROWS=$R SEQLENS=512,1024,2048,4096 python3 $A v$m 256; done 2>&1 | grep "causal=1" >> $O/ab.txt; sort -s -k2,3 $O/ab.txt
python3 -m cuflash bench --mode fwd --headdim 256 --causal yes --seqlen 512,1k,2k,4k --peers sdpa-cudnn > $O/bench.txt 2>&1; tail -9 $O/bench.txt
