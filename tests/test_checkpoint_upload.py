"""Issue 13: a user uploads a checkpoint (a peer's published .pt / .pth, or a kaldn .safetensors) and compares with it.

The file is converted in a child process with capped memory and time, the model is its session's alone, and
every refusal names the file, never the server's paths.
"""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

from kaldn.comparison import run_comparison
from kaldn.convert import ConversionError, convert_isolated
from kaldn.errors import BusyError, UserError
from kaldn.inputs import prepare_inputs
from kaldn.models import variant
from kaldn.session_models import SessionModels, import_checkpoint

from app_server import running_app
from test_hosting import EXAMPLE, call, compare_data, session, upload

PEERS = Path(__file__).resolve().parents[1] / ".." / "shared" / "peers"
LIMITS = {"max_bytes": 32 << 20, "memory_bytes": 1 << 30, "timeout_s": 120}


def legacy_file_declaring(path: Path, nbytes: int) -> Path:
    """A 400-byte legacy-format PyTorch file (the released peers' format) whose one storage declares ``nbytes``:
    torch.load(weights_only=True) allocates what it declares before it reads a byte of it."""
    storage, numel = object(), nbytes // 4

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, 0, (numel,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel, None) if obj is storage else None

    with open(path, "wb") as f:
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION,
                       {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump({"conv.weight": Tensor()})
        pickle.dump(["0"], f, protocol=2)
        f.write(numel.to_bytes(8, "little") + bytes(64))  # the size header counts elements
    return path


def kaldn_file(throwaway: Path) -> Path:
    """A bare kaldn .safetensors (its metadata names the model), as `kaldn train` or the Fine-tune tab write."""
    return throwaway / variant("ldsconv").model_name(4) / "model.safetensors"


def test_a_kaldn_file_becomes_a_model_only_its_session_sees_and_goes_with_it(throwaway, tmp_path):
    registry = SessionModels()
    entry = import_checkpoint(kaldn_file(throwaway), "mine.safetensors", "auto", 4, registry, "alice",
                              root=tmp_path, **LIMITS)
    assert entry.model == variant("ldsconv").model_name(4) and entry.key.startswith("up-")
    assert entry.label.startswith("Uploaded #") and not entry.third_party
    assert registry.for_owner("alice").get(entry.key) is entry and registry.for_owner("bob").get(entry.key) is None
    result = run_comparison(prepare_inputs(EXAMPLE, 4), ["bicubic", entry.key],
                            registry=registry.for_owner("alice")).result(entry.key)
    assert result.status == "ok", result.message
    assert registry.drop_owner("alice") == 1 and not entry.path.exists()


def test_refusals_name_the_file_and_never_the_server(throwaway, tmp_path):
    registry = SessionModels()
    source = kaldn_file(throwaway)
    evil = tmp_path / "server-side-name.pt"
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil.write_bytes(pickle.dumps({"conv.weight": Payload()}))
    cases = [
        (source, "notes.txt", "auto", 4, {}, "must be a .pt, .pth or .safetensors"),
        (source, "big.safetensors", "auto", 4, {"max_bytes": 1000}, "MiB are accepted"),
        (source, "state.pt", "auto", 4, {}, "choose its architecture"),
        (source, "state.pt", "resnet", 4, {}, "Unknown architecture"),
        (source, "x.safetensors", "lesrcnn", 5, {}, "scale must be one of 2, 3, 4"),
        (source, "x.safetensors", "lesrcnn", float("inf"), {}, "scale must be one of 2, 3, 4"),
        (evil, "evil.pt", "lesrcnn", 4, {}, "never runs code"),
        (source, "mine.safetensors", "lesrcnn", 4, {}, "metadata says tiny-ldsconv-x4, not lesrcnn-x4"),
        (legacy_file_declaring(tmp_path / "bomb.pt", 4 << 30), "bomb.pt", "lesrcnn", 4, {},
         r"asks for more memory than a conversion may use \(4,096 MiB at once\)"),
        (source, "mine.safetensors", "auto", 4, {"timeout_s": 0.01}, "could not be converted within"),
    ]
    for path, name, arch, scale, limits, expected in cases:
        with pytest.raises(UserError, match=expected) as err:
            import_checkpoint(path, name, arch, scale, registry, "alice", root=tmp_path / "uploads",
                              **{**LIMITS, **limits})
        message = str(err.value)
        assert str(tmp_path) not in message and str(throwaway) not in message, message
    assert not marker.exists()  # the pickle's payload never ran
    assert registry.items() == [] and not any((tmp_path / "uploads").iterdir())  # nothing left behind
    with pytest.raises(UserError, match="needs a session"):
        import_checkpoint(source, "mine.safetensors", "auto", 4, registry, None, root=tmp_path, **LIMITS)


def test_the_memory_cap_counts_from_after_the_imports(throwaway, tmp_path):
    # torch's import alone maps far more than 64 MiB (several GiB with a CUDA build): the cap must leave it out,
    # and still stop a file that asks for more than the cap.
    assert convert_isolated(kaldn_file(throwaway), tmp_path / "ok", memory_bytes=64 << 20).is_dir()
    bomb = legacy_file_declaring(tmp_path / "bomb.pt", 1 << 30)
    with pytest.raises(ConversionError, match="more memory than a conversion may use"):
        convert_isolated(bomb, tmp_path / "capped", "lesrcnn", 4, memory_bytes=512 << 20)
    with pytest.raises(ConversionError, match="unexpected EOF"):  # uncapped, the same file gets past allocation
        convert_isolated(bomb, tmp_path / "uncapped", "lesrcnn", 4, memory_bytes=8 << 30)


def test_a_published_lesrcnn_file_compares_and_beats_bicubic(tmp_path):
    release = PEERS / "lesrcnn" / "lesrcnn_x4.pth"
    if not release.is_file():
        pytest.skip(f"{release} not present")
    registry = SessionModels()
    entry = import_checkpoint(release, "lesrcnn_x4.pth", "lesrcnn", 4, registry, "alice", root=tmp_path, **LIMITS)
    assert entry.third_party and entry.label == "Uploaded #1 (LESRCNN x4)"
    comparison = run_comparison(prepare_inputs(EXAMPLE, 4), ["bicubic", entry.key], registry=registry.for_owner("alice"))
    peer, bicubic = comparison.result(entry.key), comparison.result("bicubic")
    assert peer.status == "ok" and peer.psnr > bicubic.psnr + 0.5, (peer.psnr, bicubic.psnr)


def test_an_upload_built_otherwise_than_the_default_says_so_in_its_label(tmp_path):
    from kaldn.checkpoint import save_checkpoint
    from kaldn.models import create_model
    from test_peers import _scnet_published_layout
    registry = SessionModels()
    model = create_model("scnet-t-x4", upsampler="pixelshuffle")
    torch.save({"params": _scnet_published_layout(model, pixelshuffle=True)}, tmp_path / "SCNet-T_x4_D64B16_PS.pth")
    entry = import_checkpoint(tmp_path / "SCNet-T_x4_D64B16_PS.pth", "SCNet-T_x4_D64B16_PS.pth", "scnet-t", 4,
                              registry, "alice", root=tmp_path / "runs", **LIMITS)
    assert entry.third_party and entry.label == "Uploaded #1 (SCNet-T x4, upsampler pixelshuffle)"
    folder = save_checkpoint(tmp_path / "mine", create_model("tiny-kdsconv-det-x2", descriptor_norm="none"))
    entry = import_checkpoint(folder / "model.safetensors", "mine.safetensors", None, None, registry, "alice",
                              root=tmp_path / "runs", **LIMITS)
    assert entry.label == "Uploaded #2 (KDSConv (det) x2, descriptor_norm none)"
    default = save_checkpoint(tmp_path / "plain", create_model("tiny-kdsconv-det-x2"))
    entry = import_checkpoint(default / "model.safetensors", "plain.safetensors", None, None, registry, "alice",
                              root=tmp_path / "runs", **LIMITS)
    assert entry.label == "Uploaded #3 (KDSConv (det) x2)"


@pytest.fixture(scope="module")
def served(throwaway):
    pytest.importorskip("gradio_client")
    with running_app(throwaway) as server:
        yield server


def test_the_app_adds_a_checkpoint_for_its_session_only(served, throwaway, tmp_path):
    app, url = served["app"], served["url"]
    mine = session()
    file = upload(url, kaldn_file(throwaway))
    result = call(url, "add_checkpoint", [file, "auto", 4, ["bicubic"]], mine)
    status, scale, variants = result["data"]
    key = next(k for k in variants["value"] if k.startswith("up-"))
    assert "Added **Uploaded #" in status and scale["value"] == 4 and "bicubic" in variants["value"]
    assert str(app.OUT_ROOT) not in status
    image = upload(url, EXAMPLE)
    assert "data" in call(url, "compare", compare_data(image, variants=["bicubic", key]), mine)
    other = call(url, "compare", compare_data(image, variants=["bicubic", key]), session())
    assert "not one of this session's models" in other["error"] and "Fine-tune or upload it again" in other["error"]
    # A payload naming a server file is refused like any other client-chosen path.
    forged = {"path": str(kaldn_file(throwaway)), "meta": {"_type": "gradio.FileData"}}
    refused = call(url, "add_checkpoint", [forged, "auto", 4, ["bicubic"]], session())
    assert "data" not in refused and app.SESSION_MODELS.items()[-1].key == key, refused  # Gradio refuses it
    folder = app.SESSION_MODELS.get(key).path
    app.end_session(type("Request", (), {"session_hash": mine})())  # the page closed
    assert app.SESSION_MODELS.get(key) is None and not folder.exists()


def test_models_nobody_uses_expire_and_a_full_server_refuses_before_converting(throwaway, tmp_path, monkeypatch):
    import kaldn.session_models as sm
    registry = SessionModels(cap=8, total_cap=1, max_idle_s=60)
    entry = import_checkpoint(kaldn_file(throwaway), "a.safetensors", "auto", 4, registry, "alice", root=tmp_path,
                              **LIMITS)
    converted = []
    monkeypatch.setattr(sm, "convert_isolated", lambda *a, **k: converted.append(a))
    with pytest.raises(BusyError):  # full: refused before any conversion runs
        import_checkpoint(kaldn_file(throwaway), "b.safetensors", "auto", 4, registry, "bob", root=tmp_path, **LIMITS)
    assert converted == []
    registry.for_owner("alice").get(entry.key)  # its owner used it: not idle
    assert registry.expire() == 0
    entry.last_used -= 61  # a client that never closes its session and never comes back
    assert registry.has_room("bob") and registry.get(entry.key) is None and not entry.path.exists()
    from kaldn.choices import resolve_variant
    with pytest.raises(UserError, match="not one of this session's models.*upload it again"):
        resolve_variant(entry.key, 4, registry.for_owner("alice"))  # a page still listing it is told why


def test_an_uploaded_peer_is_third_party_whatever_its_file_says(tmp_path):
    from kaldn.checkpoint import save_checkpoint
    from kaldn.convert import convert
    from kaldn.models import create_model
    from safetensors import safe_open
    save_checkpoint(tmp_path / "peer", create_model("scnet-t-x4"), {"weights": {"origin": "kaldn", "x": "y" * 10**5}})
    out = convert(tmp_path / "peer" / "model.safetensors", tmp_path / "out")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        recorded = f.metadata()["weights"]
    assert "yyyy" not in recorded and len(recorded) < 2000  # only the record's known short fields go on
    registry = SessionModels()
    entry = registry.add(out, "scnet-t-x4", {"origin": "kaldn"}, owner="alice", kind="Uploaded")
    assert entry.third_party  # so it is compared, never fine-tuned from here
    from kaldn.finetune import base_choices
    assert entry.key not in [value for _, value in base_choices([], registry.for_owner("alice"))]
