"""A checkpoint the train stage wrote, back to its network; and where the stages embed with it."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import torch

from facesim.core.model_files import ModelError
from facesim.core.models import EmbeddingNet, ModelConfig, build_embedding_net


def inference_device(checkpoint: dict[str, Any]) -> torch.device:
    """Where a pipeline stage embeds with a trained model: CUDA when there is one and the model was trained
    with `train.device` auto or cuda, else the CPU (embeddings always come back on the CPU)."""
    wanted = checkpoint.get("params", {}).get("device", "auto")
    return torch.device("cuda" if wanted in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[EmbeddingNet, dict[str, Any]]:
    """The embedding network of a checkpoint written by `facesim.pipeline.train.train_and_save`, in eval mode.
    Anything else is a ModelError that says, in words, what the file is not."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found; run the train stage (`dvc repro`) first") from None
    except Exception as exc:
        # torch's own message for a file of another kind is its unpickler's (`KeyError: 101`, `pop from empty
        # list`), which says nothing to a user: say what the file is not
        what = (f"a zip archive torch cannot read as a checkpoint ({type(exc).__name__})" if zipfile.is_zipfile(path)
                else "not a PyTorch checkpoint: torch.save writes a zip archive, and this file is none")
        raise ModelError(f"{path}: not a facesim model ({what}); {_GIVE_A_MODEL}") from None
    missing = sorted({"model_state", "model_config", "preprocess", "epoch"} - set(checkpoint)) \
        if isinstance(checkpoint, dict) else ["model_state", "model_config", "preprocess", "epoch"]
    if missing:
        raise ModelError(f"{path}: not a facesim model (a PyTorch file missing {', '.join(missing)}); {_GIVE_A_MODEL}")
    model = build_embedding_net(ModelConfig.from_dict(checkpoint["model_config"]), load_pretrained=False)
    model.load_state_dict(checkpoint["model_state"])
    model.to(device).eval()
    return model, checkpoint


_GIVE_A_MODEL = "give a .pt checkpoint the train stage wrote, or a .onnx model the evaluate stage wrote"
