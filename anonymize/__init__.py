"""Veilbill anonymize package."""
