"""Grain's wire protocol: frames, typed messages, payloads and the handshake."""
