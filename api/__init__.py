"""Veilbill api package."""
