"""Berth: a multi-tenant OCI container registry service."""

__version__ = "0.1.0"
