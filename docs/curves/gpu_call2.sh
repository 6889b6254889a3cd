#!/bin/bash
# All 50-epoch curves at once on one GPU. usage: bash dev/gpu.sh TRAIN_DEADLINE_S EVAL_DEADLINE_S
set -u
T0=$(date +%s); TRAIN=$1; EVAL=$2
DEVICE=${DEVICE:-cuda}; EXTRA=${EXTRA:-}; N=${N:-10000}; OUT=${OUT:-/tmp/out}
R=gpuruns; rm -rf $R; mkdir -p $R $OUT
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  python3 -c "import torch,torchvision;print(torch.__version__,torchvision.__version__)"; } > $R/machine.txt 2>&1
job() {
  local name=$1; shift
  local start=$(date +%s)
  timeout -s TERM -k 30 $((T0 + TRAIN - start)) python3 "$@" --device $DEVICE --data-root dev/data --out $R/$name $EXTRA > $R/$name.log 2>&1
  local rc=$?
  echo "exit $rc, wall $(( $(date +%s) - start )) s" >> $R/$name.log
  local left=$((T0 + EVAL - $(date +%s)))
  if [ "$name" = cyclegan ]; then
    timeout -s KILL $left python3 evaluate.py $R/$name --json --device $DEVICE --n $N > $R/$name.eval.json 2> $R/$name.eval.err
  else
    timeout -s KILL $left python3 evaluate.py $R/$name --curve --json --device $DEVICE --n $N > $R/$name.curve.json 2> $R/$name.curve.err
  fi
  echo "eval exit $?, done at $(( $(date +%s) - T0 )) s" >> $R/$name.log
}
job acgan-s0 acgan.py --seed 0 &
job dcgan-s0 dcgan.py --seed 0 --epochs 50 &
job dcgan-s1 dcgan.py --seed 1 --epochs 50 &
(sleep 90; nvidia-smi >> $R/machine.txt 2>&1) &
wait $(jobs -p | head -n 3)
for f in $R/*.log; do echo "== $f"; tail -n 3 $f; done
tar czf $OUT/results.tar.gz $R/*.txt $R/*.log $R/*.json $R/*.err $R/*/losses.csv \
  $(ls $R/*/epoch_0{01,05,10,20,30,40,50}.png $R/*/epoch_001.png 2>/dev/null) $(for d in $R/*/; do ls $d/epoch_*.png 2>/dev/null | tail -1; done)
last() { ls $R/$1/generator_epoch_*.pt 2>/dev/null | tail -1; }
tar cf $OUT/snap3.tar $(last acgan-s0) $(last dcgan-s0) $(last dcgan-s1)
ls -la $OUT
