"""Scene synthesis from bounding boxes ("High-Resolution Complex Scene Synthesis with
Transformers"): the annotated-objects datasets and the conditional builders.

    annotations.py  Annotation, ImageInfo, the crop box type (the original's helper_types)
    json_stream.py  the items of a big JSON file's top-level arrays, one at a time
    tables.py       category data the published models need without their dataset
    categories.py   CategoryTable: category id <-> class index, as the original numbers them
    loaded.py       AnnotatedObjects: a loaded split, compact, in the original's image order
    coco.py         COCO 2017 (instances + stuff JSON)
    open_images.py  Open Images v6 (box CSVs, class descriptions)
    crops.py        the original's crops (centre, random-1d, random-2d) and their boxes
    builders.py     objects with bounding boxes / as centre points <-> token sequences; plots
    source.py       acquire for data.source coco / open_images: the selected images as archives
                    plus one annotation record per image (data/raw/objects)
    records.py      per-image records, the category file, layouts read from user files
    dataset.py      the pipeline's dataset: extracted images + records, cropped like the original

Not the demo scene renderer (tasks/data/scenes.py), which draws procedural images.
"""
