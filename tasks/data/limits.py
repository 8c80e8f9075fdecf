"""What the data layer accepts from untrusted input (archives, image files, file lists).

One place for every limit, so the README's safety section and the code cannot drift
apart. Input beyond a limit is refused *before* it costs memory or runs anything:
extract records the refused member in ``rejected.jsonl`` with its reason; a dataset or
an annotation stage raises an error naming the file and the reason.
"""
from __future__ import annotations

# Image formats the product decodes (PIL format names). Nothing else ever reaches a
# decoder: EPS (Ghostscript), TIFF (libtiff and its many codecs) and PIL's other ~40
# readers are refused by name. (A camera's multi-picture JPEG opens through the JPEG
# decoder as PIL format MPO.)
ACCEPTED_IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")

# Pixels (width x height) an image may declare in its header: 8192 x 8192, about 200 MB as
# RGB. Checked from the header, before any pixel is decoded (a 140 KB PNG can declare 1.5 GB).
MAX_IMAGE_PIXELS = 8192 * 8192

# Bytes of one image file or archive member, as declared in the tar header (for a GNU
# sparse member that is its expanded size). An ImageNet JPEG is about 110 KB on average.
MAX_IMAGE_BYTES = 128 * 2**20

# Bytes of a file name (NAME_MAX on Linux and macOS filesystems).
MAX_NAME_BYTES = 255

# Bytes of a tar member's extended header (pax records, GNU long name): tarfile reads
# one whole into memory, so its declared size is checked first.
MAX_TAR_HEADER_BYTES = 2**20
