#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for tests/test_slurm.py.
#   bash workflow/scripts/slurm_single_node.sh start   # install if needed (apt-get), configure, start daemons
#   bash workflow/scripts/slurm_single_node.sh stop
# The node offers this machine's CPUs and 80% of its memory in partition `gpu` (the name the profile uses; no
# GPUs). No slurmdbd: job completions are logged by jobcomp/filetxt in $STATE/log/jobcomp.txt (what the test
# reads to see that the jobs went through sbatch), and the plugin polls with squeue (MinJobAge keeps finished
# jobs visible). Needs root (daemons, /etc/slurm).
set -euo pipefail
STATE=${REID_SLURM_STATE:-/tmp/reid-slurm}
ACTION=${1:-start}

if [ "$ACTION" = stop ]; then
    pkill -x slurmd || true
    pkill -x slurmctld || true
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
mkdir -p "$STATE"/{spool,state,log} /etc/slurm /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    (command -v mungekey >/dev/null && mungekey --create --force) || dd if=/dev/urandom of=/etc/munge/munge.key bs=1k count=1 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged --force

host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=reid
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=gpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 30); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed)'; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "SLURM did not come up: see $STATE/log" >&2
exit 1
