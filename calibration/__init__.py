"""Post-hoc calibration on val_calib — temperature scaling, threshold and guardrail
sweeps (Ray Tune), Learn-then-Test risk control — the policy a bundle carries, and the
metrics and plots that judge it. Never imports ray_app."""
