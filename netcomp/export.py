"""A kept student in formats that load without netcomp: ONNX (checked with onnxruntime) and a torch.export program.

``export_student`` writes, beside a ``best_student.pt``:

- ``<stem>.onnx``: the student traced by torch's ONNX exporter (the torch.export-based one, so
  ``onnxscript`` is needed), with a dynamic batch dimension; input ``images`` (N, C, H, W) float32 normalised
  as in training (``(x / 255 - mean) / std``), output ``logits`` (N, classes). It is loaded back with
  onnxruntime and its logits on a batch of real images must equal the torch student's within ``atol``
  (1e-4), else :class:`ExportMismatch`;
- ``<stem>.pt2``: ``torch.export.save`` of the same program, loadable with ``torch.export.load`` alone.

Both files are written to a temporary name and renamed, so a kill leaves no half-written file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: The largest |onnxruntime - torch| logit difference an export may have on the check batch.
ONNX_ATOL = 1e-4


class ExportMismatch(RuntimeError):
    """The exported ONNX model's outputs differ from the torch student's beyond the tolerance."""


def export_student(model: nn.Module, images: torch.Tensor, folder: str | Path, stem: str = "best_student",
                   atol: float = ONNX_ATOL) -> dict[str, Any]:
    """Write ``<stem>.onnx`` and ``<stem>.pt2`` of ``model`` (eval mode, CPU) into ``folder``.

    ``images``: a batch of real, normalised input images, used to trace the program and to check the ONNX
    file's logits against the torch model's. Returns the two paths, the check's largest difference, the batch
    size checked and the opset.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    images = images.detach().to("cpu", torch.float32).contiguous()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (images,), dynamic_shapes=({0: batch},))
    pt2, onnx_path = folder / f"{stem}.pt2", folder / f"{stem}.onnx"
    tmp = folder / f".{stem}.pt2.tmp"
    torch.export.save(program, tmp)
    os.replace(tmp, pt2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(model, (images,), dynamo=True, input_names=["images"],
                                         output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
    tmp = folder / f".{stem}.onnx.tmp"
    onnx_program.save(str(tmp))
    diff = onnx_difference(tmp, model, images)
    if not diff <= atol:
        tmp.unlink(missing_ok=True)
        raise ExportMismatch(f"the ONNX export of {stem} differs from the torch student by {diff:.3g} "
                             f"(> {atol:g}) on {len(images)} real images; nothing was written")
    os.replace(tmp, onnx_path)
    return {"onnx": str(onnx_path), "torch_export": str(pt2), "onnx_max_abs_diff": float(diff),
            "checked_images": int(len(images))}


def onnx_difference(path: str | Path, model: nn.Module, images: torch.Tensor) -> float:
    """The largest |logit| difference between onnxruntime running ``path`` and ``model`` on ``images``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": images.numpy()})[0]
    with torch.no_grad():
        want = model(images).float().numpy()
    return float(np.abs(got - want).max())


def real_images(dataset: Any, n: int = 32) -> torch.Tensor:
    """The first ``n`` validation images of a :class:`netcomp.data.Dataset`, normalised as in training, on
    the CPU: the batch an export is traced and checked with."""
    from netcomp.data import DeviceLoader

    split = dataset.val.take(min(n, len(dataset.val.y)))
    images, _ = next(iter(DeviceLoader(split, len(split.y), dataset.mean, dataset.std)))
    return images.to("cpu")
