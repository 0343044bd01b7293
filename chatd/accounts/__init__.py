"""Accounts (PROTOCOL.md section 6.4): passwords, the login throttle, twisted.cred."""
