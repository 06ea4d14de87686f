"""Bundles (export, verify, load) and the Ray Serve application that answers with
calibrated confidences and decisions. Never imports ray_app."""
