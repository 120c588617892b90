"""hwcompress: compress CNNs for a specific device, measuring on that device.

Importing this package is cheap: torch, onnxruntime, paramiko and the device runtimes
are imported only inside the modules that use them.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
