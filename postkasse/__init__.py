"""postkasse: the central digital mailbox for children and young people in mental distress."""

__version__ = "0.1.0"
