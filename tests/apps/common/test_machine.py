import pytest

from apps.common import machine


@pytest.mark.parametrize(
    "env, avx512, expected",
    [(None, True, True), (None, False, False), ("0", True, False), ("1", False, True)],
)
def test_onednn_follows_the_environment_else_avx512(monkeypatch, env, avx512, expected):
    flags = "flags\t\t: fpu sse2 avx2" + (" avx512f avx512dq" if avx512 else "")
    monkeypatch.setattr(machine, "_cpuinfo", lambda: f"model name\t: Some CPU 9000\n{flags}\n")
    if env is None:
        monkeypatch.delenv(machine.ONEDNN_ENV, raising=False)
    else:
        monkeypatch.setenv(machine.ONEDNN_ENV, env)
    info = machine.machine_info()
    assert info["cpu_model"] == "Some CPU 9000"
    assert info["avx512"] is avx512 and info["onednn"] is expected
    assert machine.describe_machine(info).endswith(f"oneDNN {'on' if expected else 'off'}")
