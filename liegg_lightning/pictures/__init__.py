"""The pictures: drawn from reports, never needed to compute one.

- ``canvas.py``: the card canvas (a small raster drawing surface) and its colours and type.
- ``rendering.py``: every picture the callback logs, laid out once on the canvas, and the
  matplotlib figures drawn from the same layouts.
- ``layers.py``: the per-layer picture; ``fields.py``: the pictures of vector-field actions.

The maths import this folder only inside functions (``LieGGMetric.plot``, an action's pictures);
matplotlib is imported only when a figure is asked for.
"""
