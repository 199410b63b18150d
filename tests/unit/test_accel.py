import pytest

from labctl.accel import choose, kvm_usable
from labctl.errors import InvalidInput
from labctl.lab import Accel


def fake_root(tmp_path, *, kvm=True, flags="fpu vmx sse", pvm=False):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(f"processor : 0\nflags\t\t: {flags}\n")
    (tmp_path / "dev").mkdir()
    if kvm:
        (tmp_path / "dev/kvm").write_text("")
    if pvm:
        (tmp_path / "sys/module/kvm_pvm").mkdir(parents=True)
    return tmp_path


def test_kvm_with_vmx_is_used(tmp_path):
    root = fake_root(tmp_path)
    assert kvm_usable(root)[0]
    assert choose(Accel.auto, root=root).domain_type == "kvm"


@pytest.mark.parametrize("kwargs, reason", [
    ({"kvm": False}, "does not exist"),
    ({"flags": "fpu sse"}, "no vmx or svm"),
    ({"pvm": True}, "kvm-pvm"),
])
def test_unusable_kvm_falls_back_to_tcg_with_a_warning(tmp_path, kwargs, reason):
    root = fake_root(tmp_path, **kwargs)
    choice = choose(Accel.auto, root=root)
    assert choice.domain_type == "qemu"
    assert reason in choice.warning and "TCG" in choice.warning
    with pytest.raises(InvalidInput, match=reason):
        choose(Accel.kvm, root=root)


def test_tcg_can_be_forced_and_remote_assumes_kvm(tmp_path):
    root = fake_root(tmp_path)
    assert choose(Accel.tcg, root=root).domain_type == "qemu"
    assert choose(Accel.auto, local=False).domain_type == "kvm"
