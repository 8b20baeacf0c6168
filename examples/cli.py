"""LightningCLI entry point for the O(5) regression, with ``LieGGCallback`` configured in YAML.

Run::

    python examples/cli.py fit --config examples/config.yaml
    python examples/cli.py fit --config examples/config.yaml --trainer.max_epochs=1
    python examples/cli.py fit --config examples/config.yaml --trainer.callbacks.init_args.every_n_epochs=1
    python examples/cli.py fit --help                     # every option, the callback's included

The callback, its metric (group action, reference algebra, output mode) are all set in
``config.yaml`` (see ``trainer.callbacks``). torch uses one thread (``LIEGG_THREADS`` to change).
After ``fit`` the final model is validated once more, so the callback
analyses it whatever ``every_n_epochs`` is; the last line printed is one JSON object with the
callback's latest measures (``{}`` if it made no analysis).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from lightning.pytorch.cli import LightningCLI
from o5_common import O5DataModule, O5Regressor, quiet_lightning, set_threads

from liegg_lightning import LieGGCallback


class LieGGCLI(LightningCLI):
    """LightningCLI that validates the trained model once more after ``fit``."""

    def after_fit(self) -> None:
        # the LieGG callback analyses every trainer.validate(): one analysis of the final model
        self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)


def main(args: Optional[List[str]] = None) -> Dict[str, Any]:
    quiet_lightning()
    # one intra-op thread, as the other examples: on a small shared machine more threads only contend
    set_threads(int(os.environ.get("LIEGG_THREADS", "1")))
    cli = LieGGCLI(O5Regressor, O5DataModule, args=args, save_config_kwargs={"overwrite": True})
    liegg = [cb for cb in cli.trainer.callbacks if isinstance(cb, LieGGCallback)]
    report = liegg[0].last_report if liegg else None
    result: Dict[str, Any] = {}
    if report is not None:
        print("LieGG analyses (last 5):")
        print("\n".join(liegg[0].describe().splitlines()[-5:]))
        result = {**report.summary(), "nullity": report.nullity, "epoch": liegg[0].history[-1]["epoch"],
                  "num_samples": report.num_samples}
        for name in ("val_mse", "train_mse"):
            if name in cli.trainer.callback_metrics:
                result[name] = float(cli.trainer.callback_metrics[name])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
