#!/usr/bin/env bash
# A real one-node Slurm cluster for tests and CI: munge, MariaDB, slurmdbd (accounting),
# slurmctld and slurmd, with two fake GPUs through GRES (so jobs get CUDA_VISIBLE_DEVICES).
#
#   scripts/cluster/slurm.sh install   Debian packages (idempotent; quick when present)
#   scripts/cluster/slurm.sh start     start every daemon, wait until the node is idle
#   scripts/cluster/slurm.sh stop      stop every daemon it started (idempotent)
#   scripts/cluster/slurm.sh status    say what runs
#
# Needs root on Debian bookworm; no systemd: every daemon runs in the foreground under setsid,
# its PID in $HARNESS_SLURM_DIR/pids (default /tmp/harness-slurm). Config files are written to
# /etc/slurm (where every client looks); state, logs, the database and the fake GPU devices live
# in the scratch folder. Slurm's ports (6817-6819) are fixed: one such cluster per machine.
set -euo pipefail

scratch="${HARNESS_SLURM_DIR:-/tmp/harness-slurm}"
cluster=harness
conf_dir=/etc/slurm
marker="# written by harness scripts/cluster/slurm.sh"
start_timeout="${HARNESS_SLURM_TIMEOUT:-60}"
packages=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
daemons=(slurmd slurmctld slurmdbd mariadbd munged)   # stop order
db_socket=/run/mysqld/mysqld.sock

die() { echo "slurm.sh: $*" >&2; exit 1; }
log() { echo "slurm.sh: $*" >&2; }

pid_of() { cat "$scratch/pids/$1" 2>/dev/null || true; }
alive() {
  local pid
  pid="$(pid_of "$1")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds, or fail naming WHAT.
wait_for() {
  local seconds="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "$what not ready after ${seconds}s (logs in $scratch/log)"
    fi
    sleep 0.2
  done
}

# launch NAME COMMAND...: run COMMAND in the foreground of its own session, record its PID.
launch() {
  local name="$1"
  shift
  if alive "$name"; then
    return
  fi
  setsid "$@" >>"$scratch/log/$name.out" 2>&1 </dev/null &
  echo $! >"$scratch/pids/$name"
}

cmd_install() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "packages already installed"
    return
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_configs() {
  local cpus mem_mb
  cpus="$(nproc)"
  mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) * 9 / 10 / 1024))
  if [[ -f "$conf_dir/slurm.conf" ]] && ! grep -qF "$marker" "$conf_dir/slurm.conf"; then
    die "$conf_dir/slurm.conf exists and was not written by this script; not touching it"
  fi
  mkdir -p "$conf_dir" "$scratch"/{pids,log,state,spool,dev}
  # Two distinct device files (one shared path makes the node INVAL; plain files are refused).
  ln -sfn /dev/null "$scratch/dev/nvidia0"
  ln -sfn /dev/null "$scratch/dev/nvidia1"
  cat >"$conf_dir/slurm.conf" <<EOF
$marker
ClusterName=$cluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$scratch/state
SlurmdSpoolDir=$scratch/spool
SlurmctldPidFile=$scratch/state/slurmctld.pid
SlurmdPidFile=$scratch/spool/slurmd.pid
SlurmctldLogFile=$scratch/log/slurmctld.log
SlurmdLogFile=$scratch/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
KillWait=5
GresTypes=gpu
AccountingStorageTRES=gres/gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$scratch/log/jobcomp.txt
NodeName=localhost CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$conf_dir/gres.conf" <<EOF
$marker
AutoDetect=off
NodeName=localhost Name=gpu File=$scratch/dev/nvidia[0-1]
EOF
  # slurmdbd refuses a config readable by others (it holds the database password).
  install -m 600 /dev/null "$conf_dir/slurmdbd.conf"
  cat >"$conf_dir/slurmdbd.conf" <<EOF
$marker
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$scratch/state/slurmdbd.pid
LogFile=$scratch/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=harness
StorageLoc=slurm_acct_db
EOF
}

start_munge() {
  install -d -o munge -g munge -m 755 /run/munge
  launch munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground
  wait_for 10 munge bash -c 'munge -n | unmunge'
}

start_mariadb() {
  install -d -o mysql -g mysql -m 755 /run/mysqld "$scratch/mysql"
  if ! setpriv --reuid=mysql --regid=mysql --init-groups test -w "$scratch/mysql"; then
    die "user mysql cannot write $scratch/mysql: make the folders above it traversable (chmod o+x)"
  fi
  if [[ ! -d "$scratch/mysql/mysql" ]]; then
    mariadb-install-db --user=mysql --datadir="$scratch/mysql" --skip-test-db \
      --auth-root-authentication-method=socket >"$scratch/log/mariadb-install.out" 2>&1 ||
      die "mariadb-install-db failed (see $scratch/log/mariadb-install.out)"
  fi
  launch mariadbd mariadbd --user=mysql --datadir="$scratch/mysql" --socket="$db_socket" \
    --pid-file="$scratch/mysql/mariadbd.pid" --skip-networking \
    --log-error="$scratch/log/mariadbd.log"
  wait_for 30 MariaDB mysqladmin --socket="$db_socket" ping
  mariadb --socket="$db_socket" <<'EOF'
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'harness';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

# cancel_jobs: cancel every job of the cluster and wait until none is left, so that no job
# step (slurmstepd and its processes) outlives the daemons.
cancel_jobs() {
  local jobs deadline=$((SECONDS + 30))
  jobs="$(squeue -h -o %A 2>/dev/null | sort -u)" || return 0
  [[ -n "$jobs" ]] || return 0
  log "cancelling jobs: $(echo $jobs)"
  # shellcheck disable=SC2086
  scancel $jobs >/dev/null 2>&1 || true
  while [[ -n "$(squeue -h -o %A 2>/dev/null)" ]] && ((SECONDS < deadline)); do sleep 0.5; done
}

start_slurm() {
  launch slurmdbd slurmdbd -D
  wait_for 20 slurmdbd sacctmgr -n list cluster
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$cluster"; then
    sacctmgr -i add cluster "$cluster" >/dev/null
    # An account and association so that `--account harness` is a valid choice in tests.
    sacctmgr -i add account "$cluster" Cluster="$cluster" >/dev/null
    sacctmgr -i add user root Account="$cluster" Cluster="$cluster" >/dev/null
  fi
  local fresh=0
  alive slurmctld || fresh=1
  launch slurmctld slurmctld -D
  wait_for 20 slurmctld bash -c 'scontrol ping | grep -q UP'
  launch slurmd slurmd -D -N localhost
  wait_for 20 "slurmd" scontrol show node localhost
  if ((fresh)); then
    cancel_jobs  # jobs in the saved state, left by a cluster that was not stopped
  fi
  wait_for 30 "slurmd (node idle)" bash -c '[[ "$(sinfo -h -o %T)" == idle ]]'
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Refuse to start next to daemons this script did not start (another scratch folder, or a
# system Slurm): they hold the same sockets and ports.
check_foreign() {
  local owner="another cluster or a system service; stop it first"
  if ! alive munged && munge -n >/dev/null 2>&1; then
    die "a munged not started from $scratch is running ($owner)"
  fi
  if ! alive mariadbd && [[ -S "$db_socket" ]] && mysqladmin --socket="$db_socket" ping \
    >/dev/null 2>&1; then
    die "a MariaDB not started from $scratch answers on $db_socket ($owner)"
  fi
  local name port
  for name in slurmctld:6817 slurmd:6818 slurmdbd:6819; do
    port="${name#*:}"
    name="${name%:*}"
    if ! alive "$name" && listening "$port"; then
      die "port $port ($name) is taken by a process not started from $scratch ($owner)"
    fi
  done
}

cmd_start() {
  [[ $EUID -eq 0 ]] || die "start needs root"
  for exe in slurmctld slurmd slurmdbd munged mariadbd; do
    command -v "$exe" >/dev/null || die "$exe not found: run '$0 install' first"
  done
  check_foreign
  local t0=$SECONDS
  write_configs
  (
    # One overall deadline on top of each step's own.
    start_munge
    start_mariadb
    start_slurm
  ) &
  local starter=$!
  local deadline=$((SECONDS + start_timeout))
  while kill -0 "$starter" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill "$starter" 2>/dev/null || true
      die "cluster not up after ${start_timeout}s (logs in $scratch/log); run '$0 stop'"
    fi
    sleep 0.2
  done
  wait "$starter" || die "start failed; run '$0 stop' to clean up"
  log "up in $((SECONDS - t0))s: $(sinfo -h -o '%P %T %G' | head -1) (scratch $scratch)"
}

# stop_one NAME SECONDS: wait for NAME's process to exit, then TERM, then KILL it.
stop_one() {
  local name="$1" seconds="$2" pid deadline
  pid="$(pid_of "$name")"
  if [[ -n "$pid" ]]; then
    deadline=$((SECONDS + seconds))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) still running: SIGTERM"
      kill -TERM "$pid" 2>/dev/null || true
      sleep 2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$scratch/pids/$name"
}

cmd_stop() {
  if alive slurmctld && alive slurmd; then
    cancel_jobs
  fi
  if alive slurmctld || alive slurmd; then
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  stop_one slurmd 15
  stop_one slurmctld 15
  if alive slurmdbd; then
    sacctmgr -i shutdown >/dev/null 2>&1 || true
  fi
  stop_one slurmdbd 15
  if alive mariadbd; then
    mysqladmin --socket="$db_socket" shutdown >/dev/null 2>&1 || true
  fi
  stop_one mariadbd 30
  if alive munged; then
    kill -TERM "$(pid_of munged)" 2>/dev/null || true
  fi
  stop_one munged 10
  log "stopped"
}

cmd_status() {
  local name
  for name in "${daemons[@]}"; do
    if alive "$name"; then
      echo "$name running (pid $(pid_of "$name"))"
    else
      echo "$name stopped"
    fi
  done
  if alive slurmctld; then
    sinfo -h -o '%P %T %G'
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 install|start|stop|status" >&2
    exit 2
    ;;
esac
