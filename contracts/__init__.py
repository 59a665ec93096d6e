"""Vocabulary shared by every layer: events, data models, tensor codec, compression, proto, ports."""
