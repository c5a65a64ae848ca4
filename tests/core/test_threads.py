"""Overlapping torch_threads blocks: the fewest requested threads win, and the original count comes back."""

from __future__ import annotations

import torch

from mmclinic.threads import torch_threads


def test_overlapping_blocks_compose_and_restore_in_any_order() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        outer = torch_threads(2)
        inner = torch_threads(1)
        outer.__enter__()
        assert torch.get_num_threads() == 2
        inner.__enter__()
        assert torch.get_num_threads() == 1  # the one-thread block is not overridden
        outer.__exit__(None, None, None)  # ends first, as two threads ending out of order would
        assert torch.get_num_threads() == 1
        inner.__exit__(None, None, None)
        assert torch.get_num_threads() == 3  # the count from before the first block
        with torch_threads(0):
            assert torch.get_num_threads() == 3  # 0: unchanged
    finally:
        torch.set_num_threads(before)
