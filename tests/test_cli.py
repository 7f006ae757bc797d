"""The kaldn command: upscale files, skip bad ones with a message; the sub-commands."""

import numpy as np
import pytest
import torch
from PIL import Image

from kaldn.cli import main
from kaldn.checkpoint import save_checkpoint
from kaldn.models import create_model


def test_upscale_cli(tmp_path, capsys):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model", create_model("tiny-ldsconv-x3"))
    Image.fromarray(np.full((10, 12, 4), 200, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("not an image")
    code = main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", str(tmp_path / "model"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 1
    out = Image.open(tmp_path / "out" / "a_x3.png")
    assert out.size == (36, 30) and out.mode == "RGBA"
    assert "skipping" in capsys.readouterr().err
    assert main(["x.png", "--model", "tiny-nothing-x9"]) == 2


def test_upscale_cli_refuses_before_writing(tmp_path, capsys):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model", create_model("tiny-ldsconv-x2"))
    for name in ("p.png", "p.jpg"):
        Image.fromarray(np.full((10, 12, 3), 100, np.uint8)).save(tmp_path / name)
    (tmp_path / "a-file").write_text("")
    common = ["--model", str(tmp_path / "model"), "--device", "cpu"]
    # Two inputs with one stem used to write one result over the other, exit 0.
    assert main([str(tmp_path / "p.png"), str(tmp_path / "p.jpg"), *common, "--out", str(tmp_path / "o")]) == 2
    assert "several inputs would be written to" in capsys.readouterr().err and not (tmp_path / "o").exists()
    # Names differing only in case are one file on macOS and Windows: refused everywhere.
    Image.fromarray(np.full((10, 12, 3), 50, np.uint8)).save(tmp_path / "P.bmp")
    assert main([str(tmp_path / "p.png"), str(tmp_path / "P.bmp"), *common, "--out", str(tmp_path / "o")]) == 2
    assert "several inputs would be written to" in capsys.readouterr().err
    # p.png's result is p_x2.png: when that is also an input it would be overwritten before it is read.
    Image.fromarray(np.full((10, 12, 3), 60, np.uint8)).save(tmp_path / "p_x2.png")
    before = (tmp_path / "p_x2.png").read_bytes()
    assert main([str(tmp_path / "p_x2.png"), str(tmp_path / "p.png"), *common, "--out", str(tmp_path)]) == 2
    assert "is both an input and an output" in capsys.readouterr().err
    assert (tmp_path / "p_x2.png").read_bytes() == before
    assert main([str(tmp_path / "p.png"), *common, "--out", str(tmp_path / "a-file" / "sub")]) == 2
    assert "cannot make the output folder" in capsys.readouterr().err
    assert main([str(tmp_path / "p.png"), "--model", str(tmp_path / "model"), "--device", "gpu"]) == 2
    assert "device must be auto, cpu or cuda" in capsys.readouterr().err
    # A negative tile used to skip the model and write uninitialised memory.
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "p.png"), *common, "--tile", "-1"])
    assert info.value.code == 2 and "must be 0 (whole image) or a positive" in capsys.readouterr().err


def test_the_same_input_twice_is_upscaled_once(tmp_path, capsys):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model", create_model("tiny-ldsconv-x2"))
    Image.fromarray(np.full((10, 12, 3), 100, np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "sub").mkdir()
    same = [str(tmp_path / "p.png"), str(tmp_path / "sub" / ".." / "p.png"), str(tmp_path / "p.png")]
    assert main([*same, "--model", str(tmp_path / "model"), "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.count(" -> ") == 1 and (tmp_path / "o" / "p_x2.png").is_file()


def test_sub_commands_dispatch(capsys, monkeypatch):
    from kaldn import cli
    for sub in ("train", "evaluate", "hub", "cards", "upscale"):
        with pytest.raises(SystemExit) as info:
            cli.main([sub, "--help"])
        assert info.value.code == 0
        assert "usage:" in capsys.readouterr().out
    assert {"train", "evaluate", "hub", "cards"} <= set(cli.available_subcommands())
    monkeypatch.setitem(cli.SUBCOMMANDS, "nothing", "kaldn.no_such_module")
    assert cli.main(["nothing", "x"]) == 2
    assert "not part of this installation" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["upscale", "evaluate", "train"])
@pytest.mark.parametrize("source, asks_hub", [(None, False), ("auto", True)])
def test_commands_load_the_bundled_weights_unless_told_otherwise(tmp_path, monkeypatch, command, source, asks_hub):
    """README's numbers describe the bundled files: a model name given to a command reads no Hub repository
    unless --source (--init-source for train) asks; auto then falls back to the bundled copy."""
    import kaldn.hub as hub
    asked = []

    def no_hub(name, *args):
        asked.append(name)
        raise hub._HubUnavailable("offline", "no Hub in this test")
    monkeypatch.setattr(hub, "_load_from_hub", no_hub)
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), np.uint8)).save(tmp_path / f"{i}.png")
    name, out = "tiny-ldsconv-x2", str(tmp_path / "out")
    argv = {"upscale": [str(tmp_path / "0.png"), "--model", name, "--out", out, "--device", "cpu"],
            "evaluate": ["evaluate", "--models", name, "--datasets", str(tmp_path), "--scale", "2", "--no-timing",
                         "--threads", "1"],
            "train": ["train", "--init", name, "--data", str(tmp_path), "--val", str(tmp_path), "--iters", "1",
                      "--batch", "1", "--patch", "8", "--device", "cpu", "--out", out]}[command]
    flag = "--init-source" if command == "train" else "--source"
    assert main(argv + ([flag, source] if source else [])) == 0
    assert asked == ([name] if asks_hub else [])
