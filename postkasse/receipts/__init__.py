"""Receipts and outbound mail: a receipt for every accepted message, and the committees' mail to senders."""
