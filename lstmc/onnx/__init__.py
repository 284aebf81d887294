"""ONNX interchange (the `lstmc[onnx]` extra): `export` writes lstmc models as ONNX files.
The onnx package is imported only when a function here runs, so `import lstmc.onnx` needs
only lstmc's own dependencies."""
from lstmc.onnx.export import export

__all__ = ["export"]
