"""Model building (backbone + head) and Ray Train loops. Never imports ray_app."""
