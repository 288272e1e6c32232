#!/bin/bash
# SLURM batch script: one `accelerate launch` per node, each starting one training process per GPU.
#
#   sbatch accelerate_configs/slurm_multi_node.sh classify --config my.yaml [recipe flags...]
#   sbatch --nodes 4 accelerate_configs/slurm_multi_node.sh mlm --config my_mlm.yaml --max_steps 20000
#
# Every node gets the same accelerate config (multi_node.yaml by default; set ACCELERATE_CONFIG for another, e.g.
# a copy of fsdp.yaml) and the per-node values come from SLURM: --num_machines from SLURM_NNODES, --machine_rank
# from SLURM_NODEID (0 on the first node), --main_process_ip from the first host of the allocation, --num_processes
# = nodes x GPUs per node. Submit from the directory holding the configs and data (a filesystem all nodes share);
# from an installed wheel, first `transferkit cp multi_node .` and set ACCELERATE_CONFIG=multi_node.yaml.
# Environment knobs: ACCELERATE_CONFIG, MAIN_PROCESS_PORT (default 29500), GPUS_PER_NODE (default: SLURM's count),
# GRACE_SECONDS (default 600, keep it equal to the @ of --signal below).
#
# Time limit: --signal=TERM@600 has SLURM send SIGTERM to every process of the job steps (the training processes
# among them, each saving a checkpoint at its next step and exiting 0: transferkit/reliability.py) 600 s before
# --time runs out, or up to 60 s earlier (sbatch(1), --signal). Not "B:TERM": that signals only this batch shell,
# and forwarding it to srun would not help, as srun turns a SIGTERM it receives into a SIGKILL of its tasks
# ("forcing job termination", srun(1)). accelerate launch's torchrun agent is signalled too and SIGKILLs its
# workers TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds later (torch.distributed.run, default 30 s), so the script sets
# that to GRACE_SECONDS. Size the grace period as preemption_check_steps (default 10) optimizer steps plus one
# checkpoint save, with a margin: launch once with --dry_run true, which prints the seconds per optimizer step and
# per checkpoint save (timed on the output_dir disk); e.g. 10 x 2 s + 90 s = 110 s, so 300 s would do. To change it:
# sbatch --signal=TERM@900 with GRACE_SECONDS=900. Then resubmit with --resume_from_checkpoint auto to continue.
#SBATCH --job-name=transferkit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@600
#SBATCH --output=%x-%j.out

set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch $0 <recipe> --config <recipe config> [recipe flags...]" >&2
    exit 2
fi
RECIPE="$1"
shift

ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-accelerate_configs/multi_node.yaml}"
MAIN_PROCESS_PORT="${MAIN_PROCESS_PORT:-29500}"
GRACE_SECONDS="${GRACE_SECONDS:-600}"
# torchrun (inside accelerate launch) waits this long for its workers after SIGTERM, then SIGKILLs them.
TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-$GRACE_SECONDS}"
if ! python -c 'import inspect, torch.distributed.launcher.api as api
raise SystemExit("TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in inspect.getsource(api))' 2>/dev/null; then
    echo "warning: this torch's torchrun ignores TORCH_ELASTIC_SHUTDOWN_TIMEOUT and kills its workers 30 s after" \
        "SIGTERM: a checkpoint that takes longer to save is lost (a newer torch reads it)" >&2
fi
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-$(nvidia-smi --list-gpus | wc -l)}}"
NUM_MACHINES="${SLURM_NNODES:?run this script with sbatch}"
MAIN_PROCESS_IP="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)"  # sed reads all: no SIGPIPE
NUM_PROCESSES=$((NUM_MACHINES * GPUS_PER_NODE))
if [ ! -f "$ACCELERATE_CONFIG" ]; then
    echo "no accelerate config at $ACCELERATE_CONFIG (cwd $(pwd)): set ACCELERATE_CONFIG" >&2
    exit 2
fi

echo "TransferKit: $RECIPE on $NUM_MACHINES nodes x $GPUS_PER_NODE GPUs, main process $MAIN_PROCESS_IP:$MAIN_PROCESS_PORT"
export ACCELERATE_CONFIG MAIN_PROCESS_PORT NUM_MACHINES MAIN_PROCESS_IP NUM_PROCESSES RECIPE
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT

# One task per node; SLURM_NODEID is evaluated inside each task, so each node gets its own machine_rank.
# --kill-on-bad-exit stops every node when one fails instead of leaving the others waiting at a collective.
# After the time-limit SIGTERM, accelerate launch exits 143 once its workers saved and exited (the job then reads
# as failed); the checkpoint is complete by then: the ranks wait for each other after saving.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '
    exec accelerate launch \
        --config_file "$ACCELERATE_CONFIG" \
        --num_machines "$NUM_MACHINES" \
        --num_processes "$NUM_PROCESSES" \
        --machine_rank "$SLURM_NODEID" \
        --main_process_ip "$MAIN_PROCESS_IP" \
        --main_process_port "$MAIN_PROCESS_PORT" \
        -m "transferkit.recipes.$RECIPE" "$@"
' transferkit-launch "$@"
