"""Alerts: what NØMADE raises about nodes, jobs and the cluster, and how they reach people
(dispatch.py: email, Slack, a JSON webhook, the job's own user)."""
