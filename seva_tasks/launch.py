"""Train across processes: `fit` under `accelerate launch` (DDP, DeepSpeed), one process per GPU or CPU slot.

    train.num_processes=2                                   # configs/accelerate/ddp.yaml (the default)
    train.accelerate_config=configs/accelerate/zero2.yaml train.num_processes=8

The stage's config travels as JSON; each process runs `python -m seva_tasks.stages.train CFG MODEL
PAIRS OUT`. The world size the trainer actually had is checked against `num_processes`: accelerate's
MULTI_CPU type silently runs one process without an mpirun hostfile (configs/accelerate/ddp.yaml).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from seva_tasks.base import resolve
from seva_tasks.errors import StageError

DDP = Path("configs/accelerate/ddp.yaml")
log = logging.getLogger(__name__)


def config_file(accelerate_config: Path | None, num_processes: int) -> Path | None:
    """The accelerate config to launch with, or None to train in this process."""
    if accelerate_config is not None:
        return resolve(accelerate_config)
    return resolve(DDP) if num_processes > 1 else None


def launch(cfg, config: Path, base: Path, pairs: Path, out_dir: Path) -> None:
    """Run the train stage's `fit` under `accelerate launch --config_file config`; StageError if it fails
    or ran another number of processes than `cfg.num_processes`."""
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    cfg_file = out_dir / "checkpoints" / "train_config.json"
    cfg_file.write_text(cfg.model_dump_json())
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--num_processes", str(cfg.num_processes), "-m", "seva_tasks.stages.train", str(cfg_file), str(base), str(pairs), str(out_dir)]
    log.info("Launching: %s", " ".join(cmd))
    if subprocess.run(cmd, cwd=resolve(".")).returncode != 0:  # zero*.yaml's json paths are project-relative
        raise StageError(f"Training under accelerate failed (command above, config {config}). "
                         "Fix the error it printed and rerun: training resumes from its last checkpoint.")
    world = json.loads((out_dir / "checkpoints" / "run_info.json").read_text())["processes"]
    if world != cfg.num_processes:
        raise StageError(f"accelerate ran the training at world size {world}, not train.num_processes={cfg.num_processes} "
                         f"(config {config}). A MULTI_CPU config starts one process without an mpirun hostfile: use "
                         f"{DDP} (distributed_type MULTI_GPU, which also runs on CPUs), then rerun.")
