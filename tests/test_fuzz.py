"""Property-based fuzzing of the config and sample-sheet loaders: a clear error or a valid result.

Never a traceback: whatever a user writes, the loaders either accept it or raise
HistofuseError with a message.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from histofuse.config import load_schema, validate_config
from histofuse.errors import HistofuseError
from histofuse.plan import Plan
from histofuse.samples import load_samples

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema()
BASE = yaml.safe_load((REPO / "config/config.yaml").read_text())

pytestmark = pytest.mark.fault

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(cfg):
    for key, value in cfg.items():
        yield (key,)
        if isinstance(value, dict):
            for sub in _paths(value):
                yield (key, *sub)


PATHS = sorted(set(_paths(BASE)) | {("embed", "batch_size"), ("weights",), ("samples",)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=values, extra=st.booleans())
def test_config_loader_never_tracebacks(path, value, extra):
    import copy

    cfg = copy.deepcopy(BASE)
    node = cfg
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node
    if isinstance(node, dict):
        node[path[-1]] = value
    if extra:
        cfg["unexpected_key"] = value
    try:
        valid = validate_config(cfg, SCHEMA)
    except HistofuseError as exc:
        assert str(exc)
        return
    try:
        Plan.from_config(valid)
    except HistofuseError as exc:
        assert str(exc)


cells = st.text(alphabet=string.ascii_letters + string.digits + ' ./_-\t"#é', max_size=10)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.lists(
        st.sampled_from(["sample_id", "patient_id", "slide", "expression", "mpp", "x"]),
        min_size=0,
        max_size=6,
    ),
    rows=st.lists(st.lists(cells, min_size=0, max_size=6), max_size=4),
)
def test_sample_sheet_loader_never_tracebacks(tmp_path, header, rows):
    (tmp_path / "a.tiff").write_bytes(b"x")
    text = "\t".join(header) + "\n" + "\n".join("\t".join(r) for r in rows)
    sheet = tmp_path / "s.tsv"
    sheet.write_text(text)
    try:
        df = load_samples(sheet)
    except HistofuseError as exc:
        assert str(exc)
        return
    assert df.index.is_unique
    assert {"sample_id", "patient_id", "slide"} <= set(df.columns)
