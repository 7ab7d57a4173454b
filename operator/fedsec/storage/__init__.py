"""Durable local storage, the bottom layer: it imports nothing else of fedsec, so every other layer
(privacy, runtime, crypto, telemetry) may use it without pointing the layers the wrong way."""
