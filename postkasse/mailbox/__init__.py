"""Ingest: receive bytes on a channel, store them durably, and only then acknowledge."""
