"""Op converters, one small function per ONNX op type, grouped by kind.

Importing this package registers every converter in :data:`..registry.CONVERTERS`.
"""

from . import elementwise, layers, pooling, shapes  # noqa: F401  (registration side effect)
