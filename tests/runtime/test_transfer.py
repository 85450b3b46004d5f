"""Host and device copies (vedit.runtime.transfer), and picking frames without sending an index to the device."""

from __future__ import annotations

import torch

from vedit.method.denoise import pick_frames
from vedit.runtime.transfer import to_device, to_host


def test_pick_frames_slices_a_run_of_host_indices_and_sends_others():
    latents = torch.empty(10, 4, 2, 2, device="meta")  # stands in for a device the host must not wait on
    run = pick_frames(latents, torch.arange(3, 7))
    assert run.shape[0] == 4 and run._base is latents  # a view: no index tensor was sent
    picked = pick_frames(latents, torch.tensor([1, 5, 9]))
    assert picked.shape[0] == 3 and picked._base is None
    host = torch.arange(40.0).reshape(10, 4, 1, 1)
    assert torch.equal(pick_frames(host, torch.tensor([2, 7])), host[[2, 7]])


def test_host_copies_are_private_and_device_copies_are_no_ops_on_the_same_device():
    x = torch.arange(6.0)
    kept = to_host(x)
    x += 1
    assert torch.equal(kept, torch.arange(6.0))  # later work on the original does not change the copy
    assert to_device(x, torch.device("cpu")) is x
    assert to_device(x, torch.device("cpu"), torch.float64).dtype == torch.float64
