"""What a scene model's condition tokens mean: the builder, its parameters, the categories.

The pipeline records it (tokenize in the token files' metadata, train-transformer as the
``objects:`` section of the model's project YAML); a published scene model folder has it
only implicitly, in the ``data:`` section of its project YAML (the dataset the original
built the builder from: AnnotatedObjectsCoco / AnnotatedObjectsOpenImages and their params),
so ``SceneConditioning.of_project`` reads either, and the categories of a published model
come from tables.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tasks.data.objects.builders import BUILDERS, ObjectsCenterPointsBuilder
from tasks.data.objects.categories import CategoryTable

DATASET_TARGETS = {"taming.data.annotated_objects_coco.AnnotatedObjectsCoco": "coco",
                   "taming.data.annotated_objects_open_images.AnnotatedObjectsOpenImages": "open_images"}


@dataclass(frozen=True)
class SceneConditioning:
    builder: str                      # objects_bbox | objects_center_points
    no_max_objects: int
    no_tokens: int
    encode_crop: bool
    use_group_parameter: bool
    use_additional_parameters: bool
    categories: CategoryTable
    no_object_classes: int | None = None   # the original's override of len(categories)

    def __post_init__(self):
        if self.builder not in BUILDERS:
            raise ValueError(f"builder {self.builder!r}: expected one of {', '.join(BUILDERS)}")
        self.make()   # checks the parameters

    @property
    def n_classes(self) -> int:
        return self.no_object_classes or len(self.categories)

    def make(self) -> ObjectsCenterPointsBuilder:
        return BUILDERS[self.builder](self.n_classes, self.no_max_objects, self.no_tokens, self.encode_crop,
                                      self.use_group_parameter, self.use_additional_parameters)

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "categories"}
        return {**d, "categories": self.categories.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "SceneConditioning":
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or not {"builder", "categories"} <= set(d) or set(d) - fields:
            raise ValueError(f"expected a mapping of {', '.join(sorted(fields))}")
        return cls(**{**d, "categories": CategoryTable.from_json(d["categories"])})

    @classmethod
    def from_original(cls, builder: str, data: dict) -> "SceneConditioning":
        """A published model's: ``builder`` is its cond_stage_key, ``data`` its project YAML's
        ``data:`` section (the validation dataset's params, else the train one's)."""
        params = (data or {}).get("params") or {}
        dataset = params.get("validation") or params.get("train") or {}
        kind = DATASET_TARGETS.get(dataset.get("target"))
        if kind is None:
            raise ValueError(f"its data section names no annotated-objects dataset ({', '.join(DATASET_TARGETS)}); "
                             f"found {dataset.get('target')!r}")
        p = dataset.get("params") or {}
        if kind == "coco":
            categories = CategoryTable.coco(p.get("use_things", True), p.get("use_stuff", True))
            if p.get("category_allow_list_target") or p.get("category_mapping_target"):
                categories = CategoryTable.build({c.id: c for c in categories.categories},
                                                 p.get("category_allow_list_target"), p.get("category_mapping_target"))
        else:
            categories = CategoryTable.open_images(p.get("category_allow_list_target"), p.get("category_mapping_target"))
        return cls(builder=builder, no_max_objects=int(p["max_objects_per_image"]), no_tokens=int(p["no_tokens"]),
                   encode_crop=bool(p["encode_crop"]), use_group_parameter=bool(p["use_group_parameter"]),
                   use_additional_parameters=bool(p.get("use_additional_parameters", False)),
                   categories=categories, no_object_classes=p.get("no_object_classes"))

    @classmethod
    def of_project(cls, doc: dict) -> "SceneConditioning":
        """From a whole project YAML: our ``objects:`` section, else the original's ``data:``."""
        if "objects" in doc:
            return cls.from_json(doc["objects"])
        builder = ((doc.get("model") or {}).get("params") or {}).get("cond_stage_key")
        return cls.from_original(builder, doc.get("data"))
