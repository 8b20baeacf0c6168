"""MkDocs hook: serve the examples' committed figures beside the page that includes examples/RESULTS.md.

``docs/examples/results.md`` includes ``examples/RESULTS.md``, whose images are relative links
(``layerwise.png``); this adds ``examples/*.png`` to the site at ``examples/<name>.png`` so those
links resolve without a second copy of the figures under ``docs/``.
"""

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("examples/layerwise.png", "examples/depth_vs_width.png")


def on_files(files: Files, config: Any) -> Files:
    for rel in FIGURES:
        if (ROOT / rel).is_file():
            files.append(
                File(
                    rel, src_dir=str(ROOT), dest_dir=config["site_dir"], use_directory_urls=config["use_directory_urls"]
                )
            )
    return files
