"""Weight conversion to and from other frameworks. Each module imports its framework lazily,
inside its functions: grufast itself depends on numpy and scipy only.

Gate order: grufast and PyTorch stack r, z, n; ONNX and Keras stack z, r, n.
"""

import numpy as np


def rzn_to_zrn(w: np.ndarray) -> np.ndarray:
    """Reorder gate blocks along axis 0 from r, z, n to z, r, n."""
    r, z, n = np.split(np.asarray(w), 3)
    return np.concatenate([z, r, n])


def zrn_to_rzn(w: np.ndarray) -> np.ndarray:
    """Reorder gate blocks along axis 0 from z, r, n to r, z, n."""
    z, r, n = np.split(np.asarray(w), 3)
    return np.concatenate([r, z, n])
