"""What a job hands back: each image with its metadata, the preview sheets and the archive.

- `generated.py`  `GeneratedImage`, `image_id`
- `preview.py`    a class's preview sheet; `preview.html`
- `archive.py`    `ArchiveWriter` (a zip streamed with fixed timestamps), `job_document`
"""
