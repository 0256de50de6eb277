"""Encoder registry and model construction."""

from histofuse.encoders.registry import EncoderSpec, get_spec, list_encoders, register_encoder

__all__ = ["EncoderSpec", "get_spec", "list_encoders", "register_encoder"]
