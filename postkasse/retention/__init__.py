"""Keeping personal data only while its purpose lasts: the purge of content after the retention periods,
and a person's data found, exported and erased on request. What statistics and the audit need stays."""
