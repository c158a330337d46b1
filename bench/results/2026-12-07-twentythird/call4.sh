# Twenty-third session, call 4 (what 200 s of budget hold): varlen equal d128 8k, FWD_SM90_LISTED_ROWS 4096
# (HEAD: one CTA per tile past it) against 8192 (the 8k sequences walk the persistent grid's tile list), two
# alternated rounds, and the dense call on the same tokens. From the repo root: bash <this>.
export PYTHONUNBUFFERED=1
for n in b r8; do rm -rf /tmp/$n && mkdir /tmp/$n && cp -r cuflash kernels_cu pyproject.toml /tmp/$n/; done
sed -i "s/^FWD_SM90_LISTED_ROWS = 4096$/FWD_SM90_LISTED_ROWS = 8192/" /tmp/r8/cuflash/specs.py
grep -c "^FWD_SM90_LISTED_ROWS = 8192$" /tmp/r8/cuflash/specs.py
b() { (cd /tmp/$1 && PYTHONPATH=/tmp/$1 CUFLASH_CACHE_DIR=/tmp/cc-$1 timeout 40 python3 -m cuflash bench --mode fwd \
  --no-progress --peers none $3 --headdim 128 --seqlen 8k --causal both $4 2>&1 | grep " fwd " | sed "s/^/$1-$2 /"); }
for t in b r8; do (cd /tmp/$t && PYTHONPATH=/tmp/$t CUFLASH_CACHE_DIR=/tmp/cc-$t timeout 40 python3 -m cuflash compile \
  --arch sm_90a --features varlen --features causal,varlen --features "" --features causal --dtypes bf16 \
  --only fwd90_bf16_d128 -j 8 2>&1 | tail -n 1) & done; wait
b r8 1 "" "--varlen equal"; b b 1 --no-check "--varlen equal"
b r8 2 --no-check "--varlen equal"; b b 2 --no-check "--varlen equal"; b r8 3 --no-check "--varlen equal"
b b dense --no-check ""
