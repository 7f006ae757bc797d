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
