"""Test support: tools tests share (a TCP proxy that cuts connections)."""
