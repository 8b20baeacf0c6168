"""A fit whose algebra is too large for its budget: VectorAction(dim=64), m = 4096, with the defaults.

Runs the same short fit without and with the callback, each in a new process, and prints the wall
times, their ratio and each process's peak resident memory (``ru_maxrss``).

    python benchmarks/huge_algebra.py [--dim 64] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _fit(dim: int, epochs: int, with_callback: bool) -> None:
    import warnings

    import lightning as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from liegg_lightning import LieGGCallback, VectorAction

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    x = torch.randn(512, dim)
    y = (x * x).sum(1, keepdim=True)

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(dim, 64), nn.SiLU(), nn.Linear(64, 1))

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.net(inputs)

        def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
            inputs, target = batch  # type: ignore[misc]
            return nn.functional.mse_loss(self(inputs), target)

        def validation_step(self, batch: object, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    callbacks = [LieGGCallback(VectorAction(dim=dim))] if with_callback else []
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    data = TensorDataset(x, y)
    started = time.perf_counter()
    trainer.fit(Model(), DataLoader(data, batch_size=64), DataLoader(data, batch_size=64))
    print(json.dumps({"fit_s": time.perf_counter() - started, "analyses": len(callbacks[0].history) if callbacks
                      else None, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--child", choices=["with", "without"])
    args = parser.parse_args()
    if args.child:
        _fit(args.dim, args.epochs, args.child == "with")
        return
    out = {}
    for case in ("without", "with"):
        proc = subprocess.run([sys.executable, __file__, "--dim", str(args.dim), "--epochs", str(args.epochs),
                               "--child", case], capture_output=True, text=True, check=True)
        out[case] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["fit_ratio"] = out["with"]["fit_s"] / out["without"]["fit_s"]
    print(json.dumps({"dim": args.dim, "m": args.dim ** 2, **out}, indent=1))


if __name__ == "__main__":
    main()
