"""Class names for reports: label index -> name (index 0 = background)."""
from __future__ import annotations


def class_names(num_classes: int) -> list[str]:
    """``background`` + the names of the registered dataset with fixed names and ``num_classes - 1``
    foreground classes (VOC for 21, COCO for 81; :func:`doei.data.build.fixed_class_names`), else the
    label numbers as strings."""
    from doei.data.build import fixed_class_names

    for _, names in fixed_class_names():
        if len(names) + 1 == num_classes:
            return ["background", *names]
    return [str(i) for i in range(num_classes)]
