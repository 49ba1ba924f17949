import pytest

from krefinery import device
from krefinery.config import Config
from krefinery.errors import UserError


@pytest.mark.parametrize("native", [True, False])
def test_auto_settings_follow_native_bfloat16(monkeypatch, native):
    monkeypatch.setattr(device, "_fast_bfloat16", lambda: native)
    assert device.resolve_precision("auto") == ("mixed_bfloat16" if native else "float32")
    assert device.resolve_jit_compile(None) is native


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_explicit_settings_are_kept(monkeypatch, precision):
    monkeypatch.setattr(device, "_fast_bfloat16", lambda: precision != "float32")
    assert device.resolve_precision(precision) == precision
    assert device.resolve_jit_compile(True) is True
    assert device.resolve_jit_compile(False) is False


def test_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="--precision=half must be one of auto, float32"):
        Config(precision="half")
