"""Config validation against the workflow's JSON schema, with one clear message per problem.

Snakemake's own ``validate`` prints jsonschema's full report; this module turns the first error
into one sentence that names the key (``tiling.patch_um``) and says what is allowed, and fills
the schema's defaults into the config.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from histofuse.errors import HistofuseError

#: The config schema: every setting, its type and its one default.
SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"


def _key(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(top level)"


def _fill_defaults(instance: Any, schema: Mapping[str, Any]) -> None:
    if not isinstance(instance, dict):
        return
    props = schema.get("properties", {})
    for name, sub in props.items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if name in instance:
            _fill_defaults(instance[name], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        for name, value in instance.items():
            if name not in props:
                _fill_defaults(value, extra)


def _message(err: Any) -> str:
    key = _key(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extras = sorted(set(err.instance) - set(allowed))
        where = f" under `{key}`" if err.absolute_path else ""
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"unknown config key(s) {', '.join(map(repr, extras))}{where}{hint}"
    if err.validator == "required":
        return f"config `{key}` misses a required key: {err.message}"
    if err.validator == "enum":
        allowed = ", ".join(map(repr, err.validator_value))
        return f"config `{key}` is {err.instance!r}; allowed: {allowed}"
    desc = err.schema.get("description")
    hint = f" ({desc})" if desc else ""
    return f"config `{key}` = {err.instance!r} is invalid: {err.message}{hint}"


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """Reads a YAML JSON-schema file; by default the config schema shipped with the package."""
    import yaml

    # libyaml's loader when PyYAML has it: every job start reads the schema.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(path or SCHEMA_PATH).read_text(), Loader=loader)


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Validates a config and returns a copy with the schema's defaults filled in.

    Args:
        config: The config as loaded from YAML.
        schema: The JSON schema (draft 2020-12).

    Raises:
        HistofuseError: Naming the first offending key (sorted by path for stable messages).
    """
    import jsonschema

    if not isinstance(config, Mapping):
        raise HistofuseError(f"the config must be a mapping of keys, not {type(config).__name__}")
    filled = copy.deepcopy(dict(config))
    _fill_defaults(filled, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise HistofuseError(_message(errors[0]))
    return filled
