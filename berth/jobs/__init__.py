"""Scheduled background jobs, run by one node at a time (see `scheduler.py`)."""

from berth.jobs.scheduler import Job, Scheduler

__all__ = ["Job", "Scheduler"]
