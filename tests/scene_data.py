"""A tiny real dataset in the extracted layout, for the training-stage tests: procedural
scenes rendered straight into what `extract`, `depth` and `segment` produce
(tasks.data.scenes.write_extracted_dataset)."""
from tasks.data.scenes import write_extracted_dataset as make_scene_data  # noqa: F401
