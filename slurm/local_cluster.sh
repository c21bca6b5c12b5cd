#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and for trying the sbatch/submitit paths locally.
#
#   eval "$(bash slurm/local_cluster.sh start)"   # installs SLURM if missing (root, apt), starts it, prints
#                                                # the SLURM_CONF export that sbatch/squeue/scontrol need
#   bash slurm/local_cluster.sh status
#   bash slurm/local_cluster.sh stop              # stops both daemons and removes the cluster's directory
#
# CPU-only node with this machine's cores and memory; no munge (auth/none, cred/none), no cgroups
# (proctrack/linuxproc, task/none), no accounting daemon (so no sacct: job logs and scontrol instead).
# Config, state and logs live in $HOGWILD_SLURM_DIR (default /tmp/hogwild_slurm).
set -euo pipefail
dir="${HOGWILD_SLURM_DIR:-/tmp/hogwild_slurm}"
conf="$dir/slurm.conf"
host="$(hostname -s)"

fail() { echo "local_cluster: $*" >&2; exit 1; }

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && return
  [ "$(id -u)" = 0 ] || fail "SLURM is not installed and installing it needs root (apt-get install slurmctld slurmd slurm-client)"
  command -v apt-get >/dev/null || fail "SLURM is not installed and this machine has no apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client; } \
    >"${TMPDIR:-/tmp}/hogwild_slurm_apt.log" 2>&1 \
    || fail "apt-get install of SLURM failed; see ${TMPDIR:-/tmp}/hogwild_slurm_apt.log"
}

write_conf() {
  local cpus mem_mb
  cpus="$(nproc)"
  mem_mb="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))"
  mkdir -p "$dir/state" "$dir/spool" "$dir/logs"
  cat >"$conf" <<EOF
ClusterName=hogwildlocal
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmctldPort=${HOGWILD_SLURMCTLD_PORT:-6817}
SlurmdPort=${HOGWILD_SLURMD_PORT:-6818}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/logs/slurmctld.log
SlurmdLogFile=$dir/logs/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

start() {
  install
  if running slurmctld && running slurmd; then echo "export SLURM_CONF=$conf"; return; fi
  stop_daemons
  write_conf
  export SLURM_CONF="$conf"
  slurmctld -f "$conf" || fail "slurmctld did not start; see $dir/logs/slurmctld.log"
  slurmd -f "$conf" || fail "slurmd did not start; see $dir/logs/slurmd.log"
  for _ in $(seq 1 60); do  # the node registers within a few seconds
    if sinfo -h -N -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
      echo "export SLURM_CONF=$conf"
      return
    fi
    sleep 0.5
  done
  tail -5 "$dir/logs/slurmctld.log" "$dir/logs/slurmd.log" >&2 || true
  stop_daemons
  fail "the node did not come up within 30 s (logs above)"
}

stop_daemons() {
  local name pid
  for name in slurmd slurmctld; do
    if running "$name"; then
      pid="$(cat "$dir/$name.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

stop() {
  export SLURM_CONF="$conf"
  [ -f "$conf" ] && command -v scancel >/dev/null && scancel --quiet --user="$(id -un)" 2>/dev/null || true
  stop_daemons
  rm -rf "$dir"
}

status() {
  if running slurmctld && running slurmd; then
    SLURM_CONF="$conf" sinfo -N
    SLURM_CONF="$conf" squeue
  else
    echo "local SLURM cluster not running ($dir)"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) fail "usage: $0 start|stop|status" ;;
esac
