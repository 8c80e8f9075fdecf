"""Category id <-> class index, numbered as the original numbers them.

A dataset's categories (COCO: the instances' and the stuff file's lists minus "other";
Open Images: class-descriptions-boxable.csv) are optionally narrowed by an allow list of
names and by a mapping that merges some ids into others (the merged-away ids are
dropped); the class index of a category is then the position of its id **as a string**
in sorted order ('1', '10', '100', '101', ..., '2', ...: the original sorts the string
ids), except that Open Images' '/m/01s55n' (Suitcase) is moved to the end, as the original
does. Tables travel as JSON (``to_json``) with the data and with trained models.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

from tasks.data.objects import tables

MOVED_LAST = "/m/01s55n"   # the original appends this Open Images id after the sorted others
ALLOW_LISTS = {"top_300_classes_plus_coco_compatibility": tables.OPEN_IMAGES_TOP_300_PLUS_COCO}
MAPPINGS = {"open_images_unify_categories_for_coco": tables.OPEN_IMAGES_UNIFY_FOR_COCO}


class Category(NamedTuple):
    id: str
    super_category: Optional[str]
    name: str


def named(table: dict, name: str | None, what: str) -> object:
    """An allow list or mapping by its name (or the original's dotted target); None for none."""
    if not name:
        return None
    key = str(name).rsplit(".", 1)[-1]
    if key not in table:
        raise ValueError(f"unknown {what} {name!r} (known: {', '.join(table)})")
    return table[key]


class CategoryTable:
    """The categories of a dataset in class-index order."""

    def __init__(self, categories: Iterable[Category]):
        self.categories = tuple(categories)
        self._number = {c.id: i for i, c in enumerate(self.categories)}
        if len(self._number) != len(self.categories):
            raise ValueError("category ids must be distinct")

    @classmethod
    def build(cls, categories: dict[str, Category], allow_list: str | None = None,
              mapping: str | None = None) -> "CategoryTable":
        """The original's filter_categories + setup_category_id_and_number."""
        allowed = named(ALLOW_LISTS, allow_list, "category allow list")
        merged = named(MAPPINGS, mapping, "category mapping")
        if allowed is not None:
            categories = {i: c for i, c in categories.items() if c.name in set(allowed)}
        if merged:
            categories = {i: c for i, c in categories.items() if c.id not in merged}
        ids = sorted(categories)
        if MOVED_LAST in ids:
            ids.remove(MOVED_LAST)
            ids.append(MOVED_LAST)
        return cls(categories[i] for i in ids)

    @classmethod
    def coco(cls, use_things: bool = True, use_stuff: bool = True) -> "CategoryTable":
        """COCO 2017's table (tables.py), as AnnotatedObjectsCoco builds it from the annotation files."""
        listed = (tables.COCO_THINGS if use_things else ()) + (tables.COCO_STUFF if use_stuff else ())
        return cls.build({str(i): Category(str(i), sup, name) for i, name, sup in listed if name != "other"})

    @classmethod
    def open_images(cls, allow_list: str | None = "top_300_classes_plus_coco_compatibility",
                    mapping: str | None = "open_images_unify_categories_for_coco") -> "CategoryTable":
        """Open Images' table for the published models' settings (only allow-listed names are stored)."""
        if not allow_list:
            raise ValueError("only the allow-listed Open Images classes are known without the dataset's "
                             "class-descriptions-boxable.csv")
        return cls.build({i: Category(i, None, name) for i, name in tables.OPEN_IMAGES_DESCRIPTIONS},
                         allow_list, mapping)

    def __len__(self) -> int:
        return len(self.categories)

    def __eq__(self, other) -> bool:
        return isinstance(other, CategoryTable) and self.categories == other.categories

    def number(self, category_id: str) -> int:
        """The class index of a category id; KeyError for ids the table does not have."""
        return self._number[category_id]

    def name(self, category_no: int) -> str:
        return self.categories[category_no].name

    def lookup(self, label: str | int) -> int:
        """The class index of a category given by its id ('18', 18, '/m/0bt9lr') or its name ('dog')."""
        if str(label) in self._number:
            return self._number[str(label)]
        matches = [i for i, c in enumerate(self.categories) if c.name == label]
        if len(matches) != 1:
            raise KeyError(f"{label!r} is {'not a' if not matches else 'an ambiguous'} category id or name")
        return matches[0]

    def to_json(self) -> list[dict]:
        return [{"no": i, "id": c.id, "name": c.name, "supercategory": c.super_category}
                for i, c in enumerate(self.categories)]

    @classmethod
    def from_json(cls, rows: list[dict]) -> "CategoryTable":
        try:
            table = cls(Category(str(r["id"]), r.get("supercategory"), str(r["name"])) for r in rows)
            if any(r["no"] != i for i, r in enumerate(rows)):
                raise ValueError("'no' must count 0, 1, 2, ...")
        except (KeyError, TypeError) as e:
            raise ValueError(f"expected a list of {{no, id, name, supercategory}}: {e!r}") from None
        return table
