"""RGBA I/O: files <-> straight-alpha tensors, compositing, premultiplication, resampling, padding.

Every tensor here follows docs/architecture.md: straight (non-premultiplied) alpha, float
``(B, 4, H, W)`` or ``(4, H, W)``, channels R, G, B, A, all in [-1, 1]. Submodules: ``files``
(load/save, file walking, atomic writes), ``alpha`` (ranges, compositing, premultiplication, masks),
``resample`` (alpha-correct resize, pad to a multiple, crop back), ``sheets`` (labelled preview
sheets). No model code lives here.
"""

from alphavae.io.alpha import (
    BACKGROUNDS,
    CHECKER_DARK,
    CHECKER_LIGHT,
    PREVIEW_BACKGROUNDS,
    alpha_to_mask,
    alpha_unit,
    check_float_tensor,
    check_pixels,
    checkerboard,
    clear_hidden_colour,
    composite,
    from_unit,
    mask_to_alpha,
    premultiply,
    to_unit,
    unpremultiply,
)
from alphavae.io.files import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    atomic_write,
    atomic_write_text,
    check_output_folder,
    check_inputs_outside_output,
    check_output_outside_inputs,
    check_text,
    check_writable_folder,
    folder_relation,
    from_pil,
    image_extensions,
    list_images,
    list_images_reporting,
    load_rgba,
    read_jsonl,
    read_text_file,
    save_rgba,
    set_default_permissions,
    sha256_file,
    single_line,
    special_file_kind,
    stage_file,
    to_pil,
)
from alphavae.io.resample import (
    PAD_MODES,
    RESIZE_MODES,
    ROUND_OFF_ALPHA,
    crop_to,
    pad_to_canvas,
    pad_to_multiple,
    resize_rgba,
    resize_short_side,
)
from alphavae.io.sheets import labelled_sheet

__all__ = [
    "BACKGROUNDS", "CHECKER_DARK", "CHECKER_LIGHT", "DEFAULT_MAX_PIXELS", "PAD_MODES", "PREVIEW_BACKGROUNDS",
    "RESIZE_MODES", "ROUND_OFF_ALPHA", "ImageLoadError", "alpha_to_mask", "alpha_unit", "atomic_write",
    "atomic_write_text", "check_float_tensor", "check_inputs_outside_output", "check_output_folder",
    "check_output_outside_inputs", "check_pixels", "check_text",
    "check_writable_folder", "checkerboard", "clear_hidden_colour", "composite", "crop_to", "folder_relation",
    "from_pil", "from_unit", "image_extensions", "labelled_sheet", "list_images", "list_images_reporting", "load_rgba",
    "mask_to_alpha", "pad_to_canvas", "pad_to_multiple", "premultiply", "read_jsonl", "read_text_file", "resize_rgba",
    "resize_short_side", "save_rgba", "set_default_permissions", "sha256_file", "single_line", "special_file_kind",
    "stage_file", "to_pil", "to_unit", "unpremultiply",
]
