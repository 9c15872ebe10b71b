"""CPU device count: one per core, dividing the batch sizes, never overriding XLA_FLAGS."""

from jtl.runtime import cpu


def test_devices_for_divides_batches():
    assert cpu.devices_for([128, 500], cores=2) == 2
    assert cpu.devices_for([128, 500], cores=8) == 4
    assert cpu.devices_for([33], cores=2) == 1


def test_explicit_xla_flags_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert cpu.configure_cpu_devices([128]) is None


def test_sets_flag_when_free(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(cpu, "_jax_backend_initialized", lambda: False)
    assert cpu.configure_cpu_devices([128], setting=2) == 2
    import os

    assert "--xla_force_host_platform_device_count=2" in os.environ["XLA_FLAGS"]
    monkeypatch.delenv("XLA_FLAGS")
    assert cpu.configure_cpu_devices([128], setting=-1) is None
