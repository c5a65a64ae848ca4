"""mmclinic: multimodal (CT + notes + records) tumor detection and malignancy-risk service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mmclinic")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
