"""Make ``docs/liegg_tensorboard.png``: TensorBoard showing the pictures the LieGG callback logs.

A small MLP learns the O(5)-invariant regression of the LieGG paper,
``f(x1, x2) = sin|x1| - |x2|^3 / 2 + x1.x2 / (|x1| |x2|)`` on two vectors of R^5, in a plain
PyTorch loop. After epochs 1, 2, 4, 8, ... the network is analysed and its pictures are sent to a
TensorBoard run exactly as the callback sends them (``log_pictures``, with the model's outputs along
the orbit from ``orbit_outputs``, each picture captioned ``fit · epoch N``; with ``--layers``, the
hidden layers too). Then TensorBoard is started on that run and headless Chromium photographs the
tab it opens on, Time Series (or ``--tab images``), at the window size a user has (this needs the
``tensorboard`` and ``chromium`` commands; ``--no-screenshot`` only writes the run).

The picture goes to ``--out``, by default ``<logdir>/liegg_tensorboard.png``; the README's figure is
rewritten only when asked for by name::

    python docs/make_figure.py --out docs/liegg_tensorboard.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from liegg_lightning import VectorAction, analyze
from liegg_lightning.callback._loggers import log_pictures
from liegg_lightning.pictures.rendering import PictureOptions, orbit_outputs


def o5_target(x: Tensor) -> Tensor:
    """The paper's so(5)-invariant target; input ``(B, 10)``, output ``(B, 1)``."""
    x1, x2 = x[:, :5], x[:, 5:]
    n1, n2 = x1.norm(dim=1), x2.norm(dim=1)
    return (torch.sin(n1) - n2**3 / 2 + (x1 * x2).sum(1) / (n1 * n2))[:, None]


def train_and_log(logdir: Path, epochs: int, layers: bool = False) -> Path:
    """Train the MLP, analysing it at epochs 1, 2, 4, ...; return the TensorBoard run's directory."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_train, x_val = torch.randn(4000, 10), torch.randn(500, 10)
    y_train = o5_target(x_train)
    model = nn.Sequential(nn.Linear(10, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * 40)
    action = VectorAction(dim=5, components=2)
    logger = TensorBoardLogger(str(logdir), name="o5", version=0)
    spectra: List[Tensor] = []
    labels: List[str] = []
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(x_train)).split(100):  # 40 steps an epoch
            loss = nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
        if epoch & (epoch - 1) and epoch != epochs:  # analyse at powers of two and at the end
            continue
        model.eval()
        by_layer = analyze(model, x_val, action, reference_algebra="so", layers=["1", "3", ""] if layers else None)
        report = by_layer[""] if isinstance(by_layer, dict) else by_layer
        spectra.append(report.variances)
        labels.append(f"epoch {epoch}")
        orbit = orbit_outputs(model, action, x_val[0], report.generators[0], report.generators[-1])
        log_pictures([logger], step, report, action, PictureOptions(
            spectra=list(spectra), labels=list(labels), example_input=x_val[0], orbit=orbit,
            layers=by_layer if isinstance(by_layer, dict) else None, caption=f"fit · epoch {epoch}"))
        print(f"epoch {epoch}: loss {loss.item():.4f}, {report}")
    logger.experiment.flush()
    return Path(logger.log_dir)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def screenshot(logdir: Path, out: Path, tab: str = "timeseries", window: Tuple[int, int] = (1400, 1000)) -> None:
    """Photograph TensorBoard on ``logdir`` with headless Chromium at ``window`` pixels; write a small PNG.

    Nothing is rescaled: the picture is what a browser window of that size shows.
    """
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or shutil.which("tensorboard") is None:
        raise SystemExit("the screenshot needs the `tensorboard` and `chromium` commands (or --no-screenshot)")
    port = _free_port()
    board = subprocess.Popen(
        ["tensorboard", "--logdir", str(logdir), "--port", str(port), "--samples_per_plugin", "images=100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(8)  # TensorBoard loads the run
        with tempfile.TemporaryDirectory() as profile:
            raw = Path(profile) / "raw.png"
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
                 "--virtual-time-budget=15000", f"--screenshot={raw}", f"http://localhost:{port}/?#{tab}"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
            )
            from PIL import Image

            # a palette of 256 colours keeps the file small (fewer turn the colour maps' yellow orange)
            Image.open(raw).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)
    finally:
        board.terminate()
        board.wait(timeout=30)
    print(f"wrote {out} ({os.path.getsize(out) // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", type=Path, default=Path(tempfile.gettempdir()) / "liegg_figure",
                        help="the TensorBoard run is written here (emptied first)")
    parser.add_argument("--epochs", type=int, default=64)
    parser.add_argument("--layers", action="store_true", help="analyse the hidden layers too (the layers picture)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the screenshot goes (default: <logdir>/liegg_tensorboard.png)")
    parser.add_argument("--tab", choices=["timeseries", "images"], default="timeseries",
                        help="TensorBoard's tab to photograph (it opens on Time Series)")
    parser.add_argument("--window", default="1400,1000", help="browser window WIDTH,HEIGHT in pixels")
    parser.add_argument("--no-screenshot", action="store_true", help="only train and write the run")
    args = parser.parse_args()
    shutil.rmtree(args.logdir, ignore_errors=True)
    train_and_log(args.logdir, args.epochs, layers=args.layers)
    if not args.no_screenshot:
        width, height = (int(v) for v in args.window.split(","))
        screenshot(args.logdir, args.out or args.logdir / "liegg_tensorboard.png", args.tab, (width, height))


if __name__ == "__main__":
    main()
