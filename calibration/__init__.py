"""Temperature scaling, threshold / guardrail sweeps and risk control (issue 3)."""
