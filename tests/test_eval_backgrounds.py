"""alphavae.eval.backgrounds: limits of the reference protocol's JPEG round trip (composites and values are
tested with the metrics, tests/test_eval_metrics.py)."""

from __future__ import annotations

import pytest
import torch

from alphavae.eval.backgrounds import jpeg_roundtrip

JPEG_MAX_SIDE = 65500  # libjpeg's JPEG_MAX_DIMENSION


def test_jpeg_roundtrip_refuses_a_side_over_jpegs_limit_before_encoding(capfd):
    """Defect 6: a side over 65,500 px reached libjpeg, which printed a stray line on stderr, and failed as
    "broken data stream when writing image file" (OSError), naming no limit."""
    assert jpeg_roundtrip(torch.zeros(1, 3, 1, JPEG_MAX_SIDE, dtype=torch.uint8)).shape == (1, 3, 1, JPEG_MAX_SIDE)
    for height, width in ((2, JPEG_MAX_SIDE + 1), (JPEG_MAX_SIDE + 500, 1)):
        with pytest.raises(ValueError) as caught:
            jpeg_roundtrip(torch.zeros(1, 3, height, width, dtype=torch.uint8))
        assert str(caught.value) == (f"the reference protocol's JPEG step holds at most 65,500 px a side (got {width} x "
                                     f"{height}, width x height); --protocol clean scores it")
    assert capfd.readouterr().err == ""
