"""Measuring and improving an edit: optical flow, warp error, CLIP scores, ``vedit eval``'s report, and the
post-processors applied to decoded frames."""
