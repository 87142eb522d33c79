"""Applying adaptors on distributed engines (optional extras: ``ray``)."""
