pkill -INT -f '^python -m hogwild_bench'
for i in $(seq 150); do pgrep -f '^python -m hogwild_bench' > /dev/null || break; sleep 2; done
pgrep -fa '^python -m hogwild_bench'; date +%s > /tmp/t_stop; echo stopped $(cat /tmp/t_stop)
bash $(dirname $0)/poll.sh 0
