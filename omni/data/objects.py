"""Objects with boxes in a sample's KEY.json: the grounding data format, read and checked.

    {"objects": [{"name": "red circle", "box": [x0, y0, x1, y1]}, ...], "image_size": [w, h]}

Boxes are in pixels of the sample's image (x right, y down); `image_size` is that image's
(width, height), which `omni tokenizer encode` adds where it is missing (a code shard's images
are resized and cropped to the VQ's resolution, so boxes must be moved with them:
`omni.grounding.resized_box`). The shapes world writes both; its older shards, which have only
"scene", give their objects from it.
"""

from __future__ import annotations

from omni.grounding import check_box


def read_objects(meta) -> tuple[list[tuple[str, tuple[float, ...]]], tuple[int, int] | None]:
    """(name, box) pairs and the image size of a sample's KEY.json (empty and None without
    objects); ValueError naming the entry that is not a name with a box."""
    if not isinstance(meta, dict):
        return [], None
    size = meta.get("image_size")
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_positive_int(v) for v in size)):
            raise ValueError(f'"image_size" must be [width, height] in pixels, got {size!r}')
        size = (int(size[0]), int(size[1]))
    if "objects" in meta:
        entries = meta["objects"]
        if not isinstance(entries, list):
            raise ValueError(f'"objects" must be a list of {{"name", "box"}}, got {type(entries).__name__}')
        objects = []
        for n, entry in enumerate(entries):
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name.strip() or "box" not in entry:
                raise ValueError(
                    f'objects[{n}] must be {{"name": text, "box": [x0, y0, x1, y1]}}, got {entry!r}'[:200]
                )
            objects.append((name.strip(), check_box(entry["box"])))
        return objects, size
    scene = meta.get("scene")
    if isinstance(scene, dict) and isinstance(scene.get("objects"), list):
        return scene_objects(scene), (1, 1)  # boxes in fractions: an image of side 1
    return [], size


def scene_objects(scene: dict, side: float = 1.0) -> list[tuple[str, tuple[float, ...]]]:
    """A shapes scene's objects (`Scene.to_dict()`) as (name, box) on an image of `side` pixels."""
    out = []
    for o in scene["objects"]:
        h = o["size"] / 2
        out.append(
            (
                f"{o['color']} {o['shape']}",
                ((o["x"] - h) * side, (o["y"] - h) * side, (o["x"] + h) * side, (o["y"] + h) * side),
            )
        )
    return out


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
