"""The end of a torchrun/accelerate-launch process: tear the process group down while the interpreter is alive."""

from __future__ import annotations

import gc
import sys


def end_process_group(wait: bool = True) -> None:
    """Destroy torchrun's process group, if one is initialised; call it last in every process.

    Without it gloo's worker threads can outlive the interpreter and a run that finished and wrote its results
    still exits with SIGABRT ("terminate called without an active exception"). The group's C++ object lives as
    long as something references it — e.g. the DDP wrapper an ``Accelerator`` keeps of a prepared model, often in
    a reference cycle — so garbage is collected around the destroy. ``wait``: every process first meets the
    others at a barrier (leave it off on an error path, where another process may never arrive).
    """
    if "torch" not in sys.modules:  # nothing imported torch: no process group can exist
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    gc.collect()
