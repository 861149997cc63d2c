"""facesim.core.checkpoint: a checkpoint file back to its network, and where the stages embed with it."""

import zipfile
from pathlib import Path

import pytest
import torch

from facesim.core.checkpoint import inference_device, load_checkpoint
from facesim.core.model_files import ModelError


def test_load_checkpoint_names_a_missing_or_foreign_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    # a text file named .pt: said in words, not in the unpickler's (`KeyError: 101`, `pop from empty list`)
    for text in (b"not a checkpoint", b"hello world\n", b""):
        junk = tmp_path / "junk.pt"
        junk.write_bytes(text)
        with pytest.raises(ModelError, match=r"^\S*junk\.pt: not a facesim model \(not a PyTorch checkpoint: "
                                             r"torch\.save writes a zip archive, and this file is none\); give a "
                                             r"\.pt checkpoint the train stage wrote, or a \.onnx") as caught:
            load_checkpoint(junk)
        assert "pop from empty list" not in str(caught.value) and "KeyError" not in str(caught.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model_state": {}}, foreign)
    with pytest.raises(ModelError, match=r"foreign\.pt: not a facesim model \(a PyTorch file missing epoch, "
                                         r"model_config, preprocess\)"):
        load_checkpoint(foreign)
    torch.save([1, 2], foreign)
    with pytest.raises(ModelError, match="not a facesim model"):
        load_checkpoint(foreign)
    archive = tmp_path / "archive.pt"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("notes.txt", "a zip, but no checkpoint")
    with pytest.raises(ModelError, match=r"archive\.pt: not a facesim model \(a zip archive torch cannot read"):
        load_checkpoint(archive)


@pytest.mark.parametrize("trained_on, cuda, expected", [
    ("auto", False, "cpu"), ("auto", True, "cuda"), ("cuda", True, "cuda"), ("cpu", True, "cpu"), (None, True, "cuda"),
])
def test_stages_embed_on_cuda_when_present_and_training_allowed_it(monkeypatch, trained_on, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    checkpoint = {} if trained_on is None else {"params": {"device": trained_on}}
    assert inference_device(checkpoint) == torch.device(expected)
