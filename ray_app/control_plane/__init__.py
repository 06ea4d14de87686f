"""The control plane: one FastAPI service that launches runs as Ray jobs, lists and
compares runs, streams their metrics and logs, and keeps templates and model families.

The runs root stays the source of truth — run directories are written by whichever node
trains — and a sqlite index (`index.py`) keeps listing cheap; it can be rebuilt from the
runs root at any time. `create_app` (app.py) is importable, so the same service runs
under `ray-app server`, on a cluster's head node, or behind another ASGI server.
"""
