"""Slurm jobs as NØMADE records them: the request and final fields from scontrol and sacct,
outcome classes, sacct import and reconciliation."""
