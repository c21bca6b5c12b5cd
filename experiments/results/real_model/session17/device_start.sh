set -x
R=$PWD
date +%s > /tmp/t_start
cd /tmp/ship && cat p?? > q.gguf && rm p?? && sha256sum q.gguf
cd $R
export HOGWILD_CACHE=/tmp/hwcache
PYTHONPATH=/tmp/site:$R python -m hogwild_bench.models fetch qwen25_coder_15b_instruct --gguf /tmp/ship/q.gguf > /tmp/fetch.log 2>&1; tail -3 /tmp/fetch.log
setsid nohup nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > /tmp/gpu.csv 2>&1 < /dev/null &
cd /tmp/new
date +%s > /tmp/t_sweep
PYTHONPATH=/tmp/site:/tmp/new setsid nohup timeout -s INT ${1:-1380} python -m hogwild_bench +exp=gsm8k_small store.root=/tmp/full batch.max_rows=256 batch.lanes=2 batch.kv_memory_fraction=0.75 > /tmp/sweep.log 2>&1 < /dev/null &
sleep 5
PID=$(pgrep -f '^python -m hogwild_bench')
echo pid $PID
setsid nohup bash -c "sleep 300; /tmp/site/bin/py-spy record --format raw --idle --threads --nonblocking -r 50 -d 120 -p $PID -o /tmp/pyspy_raw.txt" > /tmp/pyspy.log 2>&1 < /dev/null &
