"""ipl.safe_load: torch checkpoints with foreign globals are read as data, and nothing in them runs."""

import collections
import contextlib
import io
import os
import pickle
import sys
import types
import zipfile

import pytest
import torch

from ipl import safe_load
from ipl.safe_load import Placeholder, SafeLoadError, load_untrusted, placeholder_names, read_restricted

LIGHTNING = "pytorch_lightning"
CALLBACK_MODULE = "pytorch_lightning.callbacks.model_checkpoint"


@contextlib.contextmanager
def fake_modules(**classes):
    """Importable stand-ins for modules that are not installed, so ``torch.save`` can name their classes.

    ``classes`` maps a dotted module name to ``{class name: base}``; parents are created too.
    Everything is removed again on exit, so loading must not need them.
    """
    created = []
    try:
        for module_name, members in classes.items():
            parts = module_name.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    sys.modules[name] = types.ModuleType(name)
                    created.append(name)
            for class_name, base in members.items():
                cls = type(class_name, (base,), {"__module__": module_name})
                setattr(sys.modules[module_name], class_name, cls)
        yield {m: {c: getattr(sys.modules[m], c) for c in members} for m, members in classes.items()}
    finally:
        for name in created:
            sys.modules.pop(name, None)


class RunsCommand:
    """Pickles as a call of ``os.system(command)``: what a malicious checkpoint would contain."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def assert_clear(error, *phrases):
    message = str(error.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in: {message}"
    assert "weights_only=False" not in message


def lightning_like_file(path, marker, tensors):
    """A Lightning-style checkpoint: class-keyed callbacks, an AttributeDict, and a command that must never run."""
    with fake_modules(**{CALLBACK_MODULE: {"ModelCheckpoint": object}, LIGHTNING: {"AttributeDict": dict}}) as mods:
        callback = mods[CALLBACK_MODULE]["ModelCheckpoint"]
        attribute_dict = mods[LIGHTNING]["AttributeDict"]
        checkpoint = {
            "epoch": 3,
            "state_dict": collections.OrderedDict(tensors),
            "callbacks": {callback: {"best_model_score": torch.tensor(0.5), "hook": RunsCommand(f"touch {marker}")}},
            "hyper_parameters": attribute_dict(img_size=32, net_ch_mult=(1, 2)),
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}],
            "blob": b"\x00\xffraw",
        }
        torch.save(checkpoint, path)


def sample_tensors():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "w": base,
        "view": base[1:, 2:5],  # shares the storage of "w", with an offset and strides
        "t": base.t(),
        "half": torch.linspace(-1, 1, 5, dtype=torch.float16),
        "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "long": torch.tensor([7, -3], dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
    }


def assert_same_tensors(loaded, expected):
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert type(loaded[key]) is type(value), key
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value.detach()), key


# ----------------------------------------------------------------------------
# What loads, and how


def test_plain_checkpoint_loads_through_torchs_weights_only_loader(tmp_path, monkeypatch):
    def must_not_be_called(*args, **kwargs):
        raise AssertionError("the restricted reader ran for a file torch's weights-only loader accepts")

    monkeypatch.setattr(safe_load, "read_restricted", must_not_be_called)
    tensors = sample_tensors()
    torch.save({"state_dict": tensors, "opts": {"n_iters": 5, "size": (1, 2)}}, tmp_path / "plain.pt")
    loaded = load_untrusted(tmp_path / "plain.pt")
    assert_same_tensors(loaded["state_dict"], tensors)
    assert loaded["opts"] == {"n_iters": 5, "size": (1, 2)}
    assert placeholder_names(loaded) == []


@pytest.mark.parametrize("mmap", [True, False])
def test_refused_globals_become_inert_placeholders_and_nothing_runs(tmp_path, mmap):
    marker = tmp_path / "was_run"
    tensors = sample_tensors()
    lightning_like_file(tmp_path / "last.ckpt", marker, tensors)
    with pytest.raises(pickle.UnpicklingError):  # the premise: torch refuses this file
        torch.load(tmp_path / "last.ckpt", weights_only=True)

    loaded = load_untrusted(tmp_path / "last.ckpt", mmap=mmap)

    assert not marker.exists()
    assert LIGHTNING not in sys.modules and CALLBACK_MODULE not in sys.modules
    assert_same_tensors(loaded["state_dict"], tensors)
    assert loaded["state_dict"]["view"].untyped_storage().data_ptr() == loaded["state_dict"]["w"].untyped_storage().data_ptr()
    assert placeholder_names(loaded) == sorted(
        [f"{CALLBACK_MODULE}.ModelCheckpoint", f"{LIGHTNING}.AttributeDict", f"{os.system.__module__}.system"]
    )
    (key, state), = loaded["callbacks"].items()
    assert issubclass(key, Placeholder) and key.global_name == f"{CALLBACK_MODULE}.ModelCheckpoint"
    assert torch.equal(state["best_model_score"], torch.tensor(0.5))
    hook = state["hook"]
    assert isinstance(hook, Placeholder) and hook.args == (f"touch {marker}",)
    hp = loaded["hyper_parameters"]
    assert isinstance(hp, Placeholder) and hp.items == {"img_size": 32, "net_ch_mult": (1, 2)}
    assert loaded["epoch"] == 3 and loaded["blob"] == b"\x00\xffraw"
    assert torch.equal(loaded["optimizer_states"][0]["state"][0]["exp_avg"], torch.zeros(3))


def test_a_module_named_in_the_pickle_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "sideeffect_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\nclass Payload:\n    def __init__(self, *args):\n        raise RuntimeError('ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import sideeffect_module

    torch.save({"x": torch.ones(2), "payload": sideeffect_module.Payload.__new__(sideeffect_module.Payload)}, tmp_path / "f.pt")
    sys.modules.pop("sideeffect_module")
    marker.unlink()

    loaded = load_untrusted(tmp_path / "f.pt")

    assert not marker.exists() and "sideeffect_module" not in sys.modules
    assert placeholder_names(loaded) == ["sideeffect_module.Payload"]
    assert torch.equal(loaded["x"], torch.ones(2))


def test_mapped_and_read_storages_agree_and_mapped_views_own_only_their_bytes(tmp_path):
    big, small = torch.randn(1000), torch.randn(7)
    with fake_modules(**{LIGHTNING: {"AttributeDict": dict}}) as mods:
        torch.save({"big": big, "small": small, "hp": mods[LIGHTNING]["AttributeDict"](a=1)}, tmp_path / "f.ckpt")
    mapped, read = read_restricted(tmp_path / "f.ckpt", mmap=True), read_restricted(tmp_path / "f.ckpt", mmap=False)
    for key in ("big", "small"):
        assert torch.equal(mapped[key], read[key])
    assert mapped["small"].untyped_storage().nbytes() == 7 * 4  # saving it again would not write the whole file
    mapped["small"].add_(1)  # copy-on-write: the file is unchanged
    assert torch.equal(read_restricted(tmp_path / "f.ckpt")["small"], small)


def test_legacy_format_loads_only_when_it_holds_plain_data(tmp_path):
    torch.save({"w": torch.arange(3.0)}, tmp_path / "plain.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(load_untrusted(tmp_path / "plain.pt")["w"], torch.arange(3.0))

    with fake_modules(**{LIGHTNING: {"AttributeDict": dict}}) as mods:
        torch.save({"hp": mods[LIGHTNING]["AttributeDict"](a=1)}, tmp_path / "old.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(SafeLoadError) as error:
        load_untrusted(tmp_path / "old.ckpt")
    assert_clear(error, str(tmp_path / "old.ckpt"), "legacy", f"{LIGHTNING}.AttributeDict", "zip-format")


# ----------------------------------------------------------------------------
# Damaged and hostile files


class _StorageRef:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _TensorRecord:
    """Pickles as torch's tensor rebuild call with chosen offset, size and stride."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def handmade_checkpoint(path, obj, storages):
    """A torch zip checkpoint written by hand: ``data.pkl`` from ``obj`` and raw float32 storages."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buffer.getvalue())
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        for key, tensor in storages.items():
            zf.writestr(f"archive/data/{key}", tensor.numpy().tobytes())


@pytest.mark.parametrize(
    "offset, size, stride, numel, phrase",
    [
        (0, (10,), (1,), 4, "reads past its storage"),
        (3, (2,), (1,), 4, "reads past its storage"),
        (0, (2, 2), (3, 1), 4, "reads past its storage"),
        (0, (2,), (-1,), 4, "invalid tensor record"),
        (0, (4,), (1,), 8, "should hold 8"),
    ],
)
def test_tensor_records_are_bounds_checked(tmp_path, offset, size, stride, numel, phrase):
    storage = _StorageRef("0", numel)
    marker = tmp_path / "was_run"
    # The command comes first: torch's loader refuses the file there, and load_untrusted reaches the restricted reader.
    obj = {"hook": RunsCommand(f"touch {marker}"), "t": _TensorRecord(storage, offset, size, stride)}
    handmade_checkpoint(tmp_path / "bad.pt", obj, {"0": torch.arange(4.0)})
    for mmap in (True, False):
        with pytest.raises(SafeLoadError) as error:
            read_restricted(tmp_path / "bad.pt", mmap=mmap)
        assert_clear(error, phrase)
    with pytest.raises(SafeLoadError) as error:
        load_untrusted(tmp_path / "bad.pt")
    assert_clear(error, str(tmp_path / "bad.pt"), phrase)
    assert not marker.exists()


def test_a_handmade_record_within_bounds_reads_the_right_elements(tmp_path):
    storage = _StorageRef("0", 6)
    record = _TensorRecord(storage, 1, (2, 2), (3, 1))
    handmade_checkpoint(tmp_path / "ok.pt", {"t": record}, {"0": torch.arange(6.0)})
    assert torch.equal(read_restricted(tmp_path / "ok.pt")["t"], torch.tensor([[1.0, 2.0], [4.0, 5.0]]))


def test_a_storage_missing_from_the_archive_is_reported(tmp_path):
    handmade_checkpoint(tmp_path / "bad.pt", {"t": _TensorRecord(_StorageRef("9", 4), 0, (4,), (1,))}, {"0": torch.arange(4.0)})
    with pytest.raises(SafeLoadError) as error:
        read_restricted(tmp_path / "bad.pt")
    assert_clear(error, "storage '9'")


def test_damaged_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(SafeLoadError) as error:
        load_untrusted(tmp_path / "missing.ckpt")
    assert_clear(error, "not found", "missing.ckpt")

    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(SafeLoadError) as error:
        load_untrusted(tmp_path / "empty.ckpt")
    assert_clear(error, "empty")

    lightning_like_file(tmp_path / "full.ckpt", tmp_path / "marker", sample_tensors())
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SafeLoadError) as error:
        load_untrusted(tmp_path / "cut.ckpt")
    assert_clear(error, "cut.ckpt", "truncated")

    (tmp_path / "text.ckpt").write_text("hello, this is not a checkpoint")
    with pytest.raises(SafeLoadError) as error:
        load_untrusted(tmp_path / "text.ckpt")
    assert_clear(error, "not a PyTorch checkpoint")

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "a zip, but not torch's")
    with pytest.raises(SafeLoadError) as error:
        load_untrusted(tmp_path / "other.zip")
    assert_clear(error, "zip archive but not a PyTorch checkpoint")

    corrupted = bytearray(data)
    pkl_at = corrupted.find(b"\x80\x02")  # the start of data.pkl, stored uncompressed
    corrupted[pkl_at + 2 : pkl_at + 40] = b"\xff" * 38
    (tmp_path / "corrupt.ckpt").write_bytes(bytes(corrupted))
    with pytest.raises(SafeLoadError) as error:
        load_untrusted(tmp_path / "corrupt.ckpt")
    assert_clear(error, "corrupt.ckpt")
    assert not (tmp_path / "marker").exists()
